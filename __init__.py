"""ComfyUI entry point of the In-Context Matting node pack (nodes in ``nodes/``, the engine in ``icm_core/``).

ComfyUI imports this folder as a package and calls :func:`comfy_entrypoint`. ComfyUI modules are imported only
there, so the package (and ``icm_core``) stays importable without ComfyUI.
"""

# Frontend extension of the pack (plain ES modules, served by ComfyUI as /extensions/<pack>/).
WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    """Register the model folder and return the pack's V3 extension."""
    from .nodes.comfy_nodes import InContextMattingExtension
    from .nodes.error_names import tidy_exception_names
    from .nodes.model_folder import register_model_folders

    register_model_folders()
    tidy_exception_names(__name__)
    return InContextMattingExtension()
