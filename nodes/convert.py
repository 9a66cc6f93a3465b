"""ComfyUI tensors <-> icm_core tensors (plain torch, no ComfyUI import).

ComfyUI: IMAGE ``[B, H, W, C]`` float 0..1 (C = 3, sometimes 4); MASK ``[B, H, W]`` (sometimes ``[H, W]``) 0..1.
icm_core: images ``[B, C, H, W]`` 0..1, masks ``[H, W]``.
"""

from __future__ import annotations

import torch


def image_batch_to_core(images: torch.Tensor, what: str = "IMAGE") -> torch.Tensor:
    """``[B, H, W, C]`` -> ``[B, C, H, W]`` float32 (C in 1, 3, 4)."""
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"{what}: expected a ComfyUI IMAGE [B, H, W, C] with C in (1, 3, 4), got shape {tuple(images.shape)}."
        )
    return images.permute(0, 3, 1, 2).float()


def mask_list_for_images(
    masks: torch.Tensor, count: int, size: tuple[int, int], invert: bool = False
) -> list[torch.Tensor]:
    """A MASK for ``count`` images of size ``(H, W)`` -> ``count`` masks ``[H, W]``.

    One mask is used for every image; otherwise there must be one per image. ``invert`` turns Load Image's
    ``1 - alpha`` convention into "alpha marks the thing".
    """
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3:
        raise ValueError(f"MASK: expected [B, H, W] or [H, W], got shape {tuple(masks.shape)}.")
    if tuple(masks.shape[1:]) != tuple(size):
        hint = ""
        if tuple(masks.shape[1:]) == (64, 64):
            hint = " Load Image gives a 64x64 empty mask when the file has no alpha: paint the mask in the mask editor."
        raise ValueError(
            f"MASK is {masks.shape[2]}x{masks.shape[1]} px but the reference image is {size[1]}x{size[0]} px; "
            f"they must match.{hint}"
        )
    if masks.shape[0] not in (1, count):
        raise ValueError(f"got {masks.shape[0]} masks for {count} reference images; give one, or one per image.")
    masks = masks.float()
    if invert:
        masks = 1.0 - masks
    return [masks[min(index, masks.shape[0] - 1)] for index in range(count)]


def check_backgrounds(backgrounds: torch.Tensor | None, count: int) -> None:
    """Raise before any model work unless ``backgrounds`` is None, one IMAGE, or one IMAGE per target."""
    if backgrounds is None:
        return
    if backgrounds.ndim != 4 or backgrounds.shape[-1] not in (1, 3, 4):
        raise ValueError(f"background: expected an IMAGE [B, H, W, C], got shape {tuple(backgrounds.shape)}.")
    if backgrounds.shape[0] not in (1, count):
        raise ValueError(
            f"background has {backgrounds.shape[0]} images for {count} targets; give one background or one per target."
        )


def background_for(backgrounds: torch.Tensor, index: int, size: tuple[int, int]) -> torch.Tensor:
    """Background IMAGE ``[B or 1, H', W', C]`` -> the ``[3, H, W]`` background of target ``index`` (resized)."""
    if backgrounds.ndim != 4:
        raise ValueError(f"background: expected an IMAGE [B, H, W, C], got shape {tuple(backgrounds.shape)}.")
    if backgrounds.shape[0] != 1 and index >= backgrounds.shape[0]:
        raise ValueError(
            f"background has {backgrounds.shape[0]} images but target {index} needs one; give one background or "
            "one per target."
        )
    image = backgrounds[min(index, backgrounds.shape[0] - 1)].permute(2, 0, 1)[:3].float()
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    if tuple(image.shape[1:]) != tuple(size):
        image = torch.nn.functional.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
    return image


def core_image_to_comfy(image: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, H, W, C]``."""
    return image.permute(0, 2, 3, 1).contiguous()
