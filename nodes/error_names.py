"""Readable exception types in ComfyUI's error reports (plain Python, no ComfyUI import).

ComfyUI imports a custom-node folder under a module name made from the folder's full path and reports an
exception's type as ``module.qualname``, so our errors would read
``/home/me/ComfyUI/custom_nodes/comfyui-in-context-matting.icm_core.errors.WeightsNotFoundError``. After the pack is
imported, :func:`tidy_exception_names` gives the exception classes defined in the pack their module path inside the
pack (``icm_core.errors.WeightsNotFoundError``): the report names the problem, not the user's file system.
"""

from __future__ import annotations

import sys


def tidy_exception_names(package: str) -> list[str]:
    """Rename ``__module__`` of every exception class defined in ``package``'s loaded modules; returns new names."""
    prefix = package + "."
    renamed = []
    for module_name, module in list(sys.modules.items()):
        if not module_name.startswith(prefix) or module is None:
            continue
        for value in list(vars(module).values()):
            if isinstance(value, type) and issubclass(value, BaseException) and value.__module__ == module_name:
                value.__module__ = module_name[len(prefix):]
                renamed.append(f"{value.__module__}.{value.__qualname__}")
    return renamed
