"""Dataset-scale matting on Ray Data (optional extra: ``pip install .[scale]``).

``python -m icm_core matte-dataset`` runs the local ``matte`` job as a streaming Ray Data pipeline:

    inputs -> micro-batches (driver) -> decode (CPU tasks) -> matte + write (actor pool, engine loaded once per
    actor, one GPU each where there are GPUs) -> manifest rows (driver, ``OUT/manifest.parquet``)

Output names, collision checks and atomic writes are those of :mod:`icm_core.matte_job`. Ray is imported lazily:
nothing in the core or the ComfyUI nodes needs it, and a missing install is a one-line error naming the fix.
"""

from __future__ import annotations

import importlib
from types import ModuleType

INSTALL_HINT = 'pip install "ray[data]>=2.60,<3"  (or: pip install -r requirements-scale.txt)'


class ScaleDependencyError(ImportError):
    """Ray Data (the ``scale`` extra) is not installed; the message gives the command that installs it."""


def require_ray() -> ModuleType:
    """Import and return :mod:`ray` with Ray Data, or raise :class:`ScaleDependencyError` saying how to install it."""
    try:
        ray = importlib.import_module("ray")
        importlib.import_module("ray.data")
    except ImportError as error:
        raise ScaleDependencyError(
            f"matte-dataset needs Ray Data, which is not installed ({error}); install it with: {INSTALL_HINT}"
        ) from None
    return ray
