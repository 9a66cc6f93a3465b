"""Shared test fixtures: the official golden vectors and tiny seeded models."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests" / "comfyui"))

from comfy_fixtures import comfy, comfy_models, core_engines, frontend  # noqa: E402,F401  (ComfyUI fixtures)

GOLDEN_DIR = Path(os.environ.get("ICM_GOLDEN_DIR", REPO_ROOT.parent / "shared" / "golden"))
GOLDEN_FILE = GOLDEN_DIR / "tiny_e2e.safetensors"


def running_in_ci(value: str | None) -> bool:
    """Whether a ``CI`` environment value marks a CI run: any non-empty value except ``0`` and ``false``.

    CI services spell it ``true``, ``1``, ``yes`` or a service name; only an explicit ``0``/``false`` opts out.
    """
    return (value or "").strip().lower() not in ("", "0", "false")


def _require(path: Path) -> Path:
    if path.exists():
        return path
    message = f"golden file {path} not found (set ICM_GOLDEN_DIR to the folder holding it)"
    if running_in_ci(os.environ.get("CI")):
        pytest.fail(message + "; parity tests must not be skipped in CI")
    pytest.skip(message)


@pytest.fixture(scope="session")
def golden() -> dict[str, torch.Tensor]:
    """All tensors of the tiny end-to-end golden (fp32, CPU)."""
    from safetensors.torch import load_file

    return load_file(str(_require(GOLDEN_FILE)))


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """The folder holding the tiny end-to-end golden (skipped, or failed in CI, when it is missing)."""
    return _require(GOLDEN_FILE).parent


@pytest.fixture(scope="session")
def golden_meta() -> dict:
    return json.loads((_require(GOLDEN_DIR / "tiny_e2e.json")).read_text())


@pytest.fixture(scope="session")
def official_layout() -> dict:
    return json.loads(_require(GOLDEN_DIR / "official_decoder_layout.json").read_text())


def import_pack(name: str = "icm_pack"):
    """Import the repository as a package, the way ComfyUI imports a custom-node folder (relative imports)."""
    import importlib.util
    import sys

    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, REPO_ROOT / "__init__.py", submodule_search_locations=[str(REPO_ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def pack():
    """The node pack imported as a package; ComfyUI itself is not needed."""
    return import_pack()


@pytest.fixture(scope="session")
def pack_module(pack):
    """``pack_module("nodes.spec")`` imports a submodule of the pack."""
    import importlib

    return lambda dotted: importlib.import_module(f"{pack.__name__}.{dotted}")
