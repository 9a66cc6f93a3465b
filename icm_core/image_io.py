"""Reading images and masks from disk, and writing outputs atomically (temp file + rename)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps


def read_image(path: str | Path) -> torch.Tensor:
    """An image file -> ``[C, H, W]`` float32 in [0, 1] (RGB, or RGBA when it has alpha), EXIF orientation applied."""
    with Image.open(path) as opened:
        image = ImageOps.exif_transpose(opened)
        mode = "RGBA" if "A" in image.getbands() else "RGB"
        array = np.asarray(image.convert(mode), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def read_mask(path: str | Path) -> torch.Tensor:
    """A mask file -> ``[H, W]`` float32 in [0, 1]: the alpha channel if the file has one, else its grey level."""
    with Image.open(path) as opened:
        image = ImageOps.exif_transpose(opened)
        if "A" in image.getbands():
            band = image.getchannel("A")
        else:
            band = image.convert("L")
        return torch.from_numpy(np.asarray(band, dtype=np.float32) / 255.0)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """``[H, W]`` or ``[C, H, W]`` float in [0, 1] -> ``H x W (x C)`` uint8."""
    array = image.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()
    return array if array.ndim == 2 else np.transpose(array, (1, 2, 0))


def save_image_atomic(image: torch.Tensor | np.ndarray | Image.Image, path: str | Path) -> Path:
    """Write a PNG/JPEG next to its final name, then rename: readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(image, torch.Tensor):
        image = to_uint8(image)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    handle, temp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(handle)
    try:
        image.save(temp)
        os.chmod(temp, 0o644)  # mkstemp creates 0600; outputs are ordinary files
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path
