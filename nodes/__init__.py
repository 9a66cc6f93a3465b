"""ComfyUI adapters over ``icm_core``.

Modules that import ComfyUI (``comfy_backend``, ``comfy_nodes``, ``model_folder``) are only imported by the pack's
entry point inside ComfyUI; ``spec``, ``convert`` and ``model_check`` are plain Python and tested without ComfyUI.
"""
