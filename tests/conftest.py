"""Shared test fixtures: the official golden vectors and tiny seeded models."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
GOLDEN_DIR = Path(os.environ.get("ICM_GOLDEN_DIR", REPO_ROOT.parent / "shared" / "golden"))
GOLDEN_FILE = GOLDEN_DIR / "tiny_e2e.safetensors"


def _require(path: Path) -> Path:
    if path.exists():
        return path
    message = f"golden file {path} not found (set ICM_GOLDEN_DIR to the folder holding it)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + "; parity tests must not be skipped in CI")
    pytest.skip(message)


@pytest.fixture(scope="session")
def golden() -> dict[str, torch.Tensor]:
    """All tensors of the tiny end-to-end golden (fp32, CPU)."""
    from safetensors.torch import load_file

    return load_file(str(_require(GOLDEN_FILE)))


@pytest.fixture(scope="session")
def golden_meta() -> dict:
    return json.loads((_require(GOLDEN_DIR / "tiny_e2e.json")).read_text())


@pytest.fixture(scope="session")
def official_layout() -> dict:
    return json.loads(_require(GOLDEN_DIR / "official_decoder_layout.json").read_text())
