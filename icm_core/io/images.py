"""Images as the core sees them: read from disk at their true scale, brought to the core layout, written atomically.

Core layout: images are ``[C, H, W]`` float tensors in [0, 1] (or ``[B, C, H, W]`` batches); masks ``[H, W]``
float in [0, 1]. :func:`to_rgb` / :func:`to_mask` / :func:`image_list` also accept PIL images (any mode the file
decoder reads, at the same scale) and ``H x W (x C)`` uint8 / uint16 / float numpy arrays.

One reader serves every command (``matte``, ``evaluate``, ``train``, the demo) and the Python API, so an image,
a reference mask and a ground-truth alpha are always decoded the same way.

Files are decoded by :mod:`.decode` (every PIL mode, 16-bit and float files, palettes, EXIF orientation, the size
limit); its public names are importable from here too.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .decode import (  # noqa: F401 - the file decoder's public names, importable from here as before
    DEFAULT_MAX_IMAGE_PIXELS,
    FLOAT_TOLERANCE,
    MAX_PIXELS_ENV,
    ImageReadError,
    decode_file,
    image_size,
    max_image_pixels,
    pil_to_array,
    set_max_image_pixels,
)

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, as PIL's convert("L")


# ------------------------------------------------------------------------------------------------ reading


def _luma(array: np.ndarray) -> np.ndarray:
    """``H x W x 3`` -> ``H x W`` grey level (ITU-R 601 weights, as PIL's ``convert("L")``)."""
    return array @ _LUMA


def read_image(path: str | Path) -> torch.Tensor:
    """An image file -> ``[C, H, W]`` float32 in [0, 1]: RGB, or RGBA when it has alpha (grey is expanded)."""
    array, bands = decode_file(path)
    if bands == "L":
        array = np.repeat(array, 3, axis=2)
    elif bands == "LA":
        array = array[..., [0, 0, 0, 1]]
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).contiguous()


def read_mask(path: str | Path) -> torch.Tensor:
    """A mask (or ground-truth alpha) file -> ``[H, W]`` float32 in [0, 1]: its alpha/transparency if it has one,
    else its grey level. 16-bit files keep their 16-bit precision."""
    array, bands = decode_file(path)
    if bands in ("LA", "RGBA"):
        return torch.from_numpy(np.ascontiguousarray(array[..., -1]))
    return torch.from_numpy(np.ascontiguousarray(array[..., 0] if bands == "L" else _luma(array)))


def read_grey(path: str | Path) -> torch.Tensor:
    """An image file -> ``[H, W]`` float32 grey level in [0, 1], ignoring any alpha (e.g. trimaps)."""
    array, bands = decode_file(path)
    grey = array[..., 0] if bands in ("L", "LA") else _luma(array[..., :3])
    return torch.from_numpy(np.ascontiguousarray(grey))


# ------------------------------------------------------------------------------------------------ writing


def _finite_or_raise(array: np.ndarray | torch.Tensor, what: str) -> None:
    finite = torch.isfinite(array) if isinstance(array, torch.Tensor) else np.isfinite(array)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ValueError(
            f"{what}: {bad} NaN/Inf value(s); refusing to write it (it would come out black). The model or an input "
            "produced non-finite numbers: check the inputs, or run in fp32 (--dtype fp32)."
        )


def to_uint8(image: torch.Tensor, what: str = "image") -> np.ndarray:
    """``[H, W]`` or ``[C, H, W]`` finite float in [0, 1] -> ``H x W (x C)`` uint8; NaN/Inf raise ValueError."""
    _finite_or_raise(image, what)
    array = image.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()
    return array if array.ndim == 2 else np.transpose(array, (1, 2, 0))


def save_image_atomic(image: torch.Tensor | np.ndarray | Image.Image, path: str | Path) -> Path:
    """Write a PNG/JPEG next to its final name, then rename: readers never see a half-written file.

    Float tensors/arrays must be finite (ValueError otherwise; nothing is written).
    """
    path = Path(path)
    if isinstance(image, torch.Tensor):
        image = to_uint8(image, f"refusing to write {path}")
    if isinstance(image, np.ndarray):
        if image.dtype.kind == "f":
            _finite_or_raise(image, f"refusing to write {path}")
        image = Image.fromarray(image)
    path.parent.mkdir(parents=True, exist_ok=True)
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


# --------------------------------------------------------------------------- images in memory

MIN_IMAGE_SIDE = 64

ImageLike = Union[torch.Tensor, np.ndarray, Image.Image]


def _to_tensor(image: ImageLike, what: str) -> torch.Tensor:
    if isinstance(image, Image.Image):
        array, _ = pil_to_array(image, what)  # palette, 16-bit, float... as the file reader decodes them
        return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
    if isinstance(image, np.ndarray):
        array = image
        if array.dtype == np.uint8:
            tensor = torch.from_numpy(array.astype(np.float32) / 255.0)
        elif array.dtype == np.uint16:
            tensor = torch.from_numpy(array.astype(np.float32) / 65535.0)
        else:
            tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        if tensor.ndim == 3:  # numpy / PIL images are H x W x C
            tensor = tensor.permute(2, 0, 1)
        return tensor
    if isinstance(image, torch.Tensor):
        return image.detach()
    raise TypeError(f"{what}: expected a torch.Tensor, numpy array or PIL image, got {type(image).__name__}")


def _check_finite_range(tensor: torch.Tensor, what: str) -> None:
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{what} contains NaN or infinite values; expected finite values in [0, 1].")
    low, high = float(tensor.min()), float(tensor.max())
    if low < -1e-3 or high > 1 + 1e-3:
        raise ValueError(
            f"{what} has values in [{low:.3g}, {high:.3g}]; expected floats in [0, 1] (divide 8-bit images by 255)."
        )


def to_rgb(image: ImageLike, what: str = "image") -> torch.Tensor:
    """One image -> ``[3, H, W]`` float32 in [0, 1]. Grey is expanded, an alpha channel dropped.

    Tensors must be ``[C, H, W]`` (C in 1, 3, 4) or ``[H, W]``.
    """
    tensor = _to_tensor(image, what).to(torch.float32)
    if tensor.ndim == 2:
        tensor = tensor[None]
    if tensor.ndim != 3 or tensor.shape[0] not in (1, 2, 3, 4):
        raise ValueError(
            f"{what}: expected [C, H, W] with C in (1, 3, 4) (grey, RGB, RGBA), got shape {tuple(tensor.shape)}. "
            "ComfyUI IMAGE tensors are [B, H, W, C]: permute them to [B, C, H, W]."
        )
    channels = tensor.shape[0]
    if channels in (1, 2):  # grey, grey + alpha
        tensor = tensor[:1].expand(3, -1, -1)
    elif channels == 4:
        tensor = tensor[:3]
    _check_finite_range(tensor, what)
    height, width = tensor.shape[1:]
    if min(height, width) < MIN_IMAGE_SIDE:
        raise ValueError(
            f"{what} is {width}x{height} px; expected both sides >= {MIN_IMAGE_SIDE} px. Upscale it first."
        )
    return tensor.clamp(0.0, 1.0).contiguous()


def image_list(images: ImageLike | Sequence[ImageLike], what: str = "image") -> list[torch.Tensor]:
    """A batch ``[B, C, H, W]`` tensor, a single image, or a sequence of images -> list of ``[3, H, W]``."""
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        return [to_rgb(image, f"{what} {i}") for i, image in enumerate(images)]
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError(f"expected at least one {what}, got an empty sequence")
        return [to_rgb(image, f"{what} {i}") for i, image in enumerate(images)]
    return [to_rgb(images, f"{what} 0")]


def to_mask(mask: ImageLike, size: tuple[int, int], what: str = "mask") -> torch.Tensor:
    """A mask -> ``[H, W]`` float32 in [0, 1], checked against the image size ``(H, W)``.

    Accepts ``[H, W]``, ``[1, H, W]``, bool and uint8 (0..255) masks.
    """
    tensor = _to_tensor(mask, what)
    if tensor.dtype == torch.bool:
        tensor = tensor.float()
    tensor = tensor.to(torch.float32)
    if tensor.ndim == 3 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.ndim != 2:
        raise ValueError(f"{what}: expected [H, W] (or [1, H, W]), got shape {tuple(tensor.shape)}.")
    if tuple(tensor.shape) != tuple(size):
        raise ValueError(
            f"{what} is {tensor.shape[1]}x{tensor.shape[0]} px but its image is {size[1]}x{size[0]} px; "
            "the mask must have the image's exact size (resize it with nearest-neighbour first)."
        )
    _check_finite_range(tensor, what)
    return tensor.clamp(0.0, 1.0)


def stretch_to_square(image: torch.Tensor, side: int) -> torch.Tensor:
    """``[C, H, W]`` -> ``[C, side, side]`` (bilinear, antialiased when shrinking)."""
    if tuple(image.shape[-2:]) == (side, side):
        return image
    return F.interpolate(image[None], size=(side, side), mode="bilinear", align_corners=False, antialias=True)[0]


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1], the range the VAE and the decoder's detail stream expect (official ``x/127.5 - 1``)."""
    return images * 2.0 - 1.0
