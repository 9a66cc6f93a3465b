"""icm_core: In-Context Matting (IconMatting, CVPR 2024) in plain PyTorch.

Standalone core of the ComfyUI pack: it never imports ComfyUI and can be used from Python or the CLI
(``python -m icm_core``).
"""
