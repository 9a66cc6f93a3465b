"""The suite's own CI rules: parity tests fail (never skip) without goldens in CI; CI's command runs slow tests."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
PARITY_TEST = "tests/test_feature_parity.py::test_schedule_matches"


def _conftest():
    spec = importlib.util.spec_from_file_location("_icm_tests_conftest", TESTS / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("value", "in_ci"),
    [
        (None, False), ("", False), ("  ", False), ("0", False), ("false", False), ("False", False),
        ("FALSE ", False), ("1", True), ("true", True), ("True", True), ("yes", True), ("github", True),
    ],
)
def test_ci_value_rule(value, in_ci):
    assert _conftest().running_in_ci(value) is in_ci


def _run_parity_test(ci: str, golden_dir: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS")}
    env.update(CI=ci, ICM_GOLDEN_DIR=str(golden_dir))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", PARITY_TEST],
        cwd=TESTS.parent, env=env, capture_output=True, text=True, timeout=120,
    )


def _summary(result: subprocess.CompletedProcess) -> str:
    """pytest's last line without its timing, e.g. ``1 error`` from ``1 error in 0.76s``."""
    return result.stdout.strip().splitlines()[-1].rsplit(" in ", 1)[0]


def test_missing_golden_fails_in_ci(tmp_path):
    result = _run_parity_test("1", tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert _summary(result) == "1 error", output
    assert f"golden file {tmp_path / 'tiny_e2e.safetensors'} not found" in output, output
    assert "parity tests must not be skipped in CI" in output, output


def test_missing_golden_skips_outside_ci(tmp_path):
    result = _run_parity_test("0", tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert _summary(result) == "1 skipped", output
    assert f"golden file {tmp_path / 'tiny_e2e.safetensors'} not found" in output, output


def test_default_command_runs_the_slow_memory_test():
    """CI runs plain ``python -m pytest -q``: nothing in the configuration may deselect the slow tests."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "--collect-only", "tests/test_fits_and_outputs.py"],
        cwd=TESTS.parent, env=env, capture_output=True, text=True, timeout=120,
    )
    collected = result.stdout.splitlines()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tests/test_fits_and_outputs.py::test_a_thousand_targets_keep_memory_flat" in collected, result.stdout
    assert not any("deselected" in line for line in collected), result.stdout
