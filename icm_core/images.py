"""Input normalisation and the resize to / from the model's square working size.

Core layout: images are ``[C, H, W]`` float tensors in [0, 1] (or ``[B, C, H, W]`` batches); masks ``[H, W]``
float in [0, 1]. PIL images (any mode :mod:`icm_core.image_io` reads, at the same scale) and ``H x W (x C)`` uint8 /
uint16 / float numpy arrays are accepted too. Files are read by :mod:`icm_core.image_io`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .image_io import pil_to_array

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


def restore_size(alpha: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[B, 1, S, S]`` alpha -> ``[B, 1, H, W]`` at the input's exact size (bilinear), clamped to [0, 1]."""
    if tuple(alpha.shape[-2:]) != tuple(size):
        alpha = F.interpolate(alpha, size=size, mode="bilinear", align_corners=False)
    return alpha.clamp(0.0, 1.0)


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1], the range the VAE and the decoder's detail stream expect (official ``x/127.5 - 1``)."""
    return images * 2.0 - 1.0
