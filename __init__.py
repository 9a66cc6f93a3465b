"""ComfyUI entry point of the In-Context Matting node pack (nodes live in ``nodes/``, the engine in ``icm_core/``)."""
