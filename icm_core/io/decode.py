"""Image files -> ``H x W x C`` float32 arrays in [0, 1] at their true scale (PIL, or OpenCV where PIL would
truncate or cannot open the file), with the decompression-bomb guard. :mod:`.images` builds the core's tensors
on top of :func:`decode_file`.

What is read, and how (PIL mode -> values in [0, 1]):

* ``1``, ``L``, ``LA``, ``RGB``, ``RGBA`` (8 bit): divided by 255.
* ``I;16`` / ``I;16L`` / ``I;16B`` (16-bit grey PNG/TIFF): divided by 65535.
* 16-bit RGB / RGBA / grey+alpha files: PIL would keep only the high byte of each sample, so these are decoded by
  OpenCV (``cv2.imdecode(..., IMREAD_UNCHANGED)``, uint16) and divided by 65535.
* ``F`` (32-bit float grey TIFF), and float RGB TIFFs (which PIL cannot open; OpenCV decodes them): taken as they
  are. Values must be finite and within [0, 1] (a tolerance of 1e-3 is clipped); anything else (NaN, Inf, HDR or
  0..255 floats) is refused with the range found, because clipping would silently flatten it.
* ``P`` / ``PA`` (palette, with a tRNS index or per-entry transparency): expanded to RGB, or RGBA when the file
  has transparency; as a mask the transparency *is* the mask.
* ``La``, ``RGBa`` (premultiplied) are un-premultiplied; ``RGBX``, ``CMYK``, ``YCbCr``, ``HSV`` converted to RGB
  by PIL (CMYK without colour management: embedded ICC profiles are not applied).
* Refused by name: ``I`` (32-bit integer: no defined white level), ``LAB`` and any other mode.
* Every EXIF orientation (1..8) is applied. Animated GIF / WebP / APNG: the first frame is read (logged).

Size limit: an image with more than :func:`max_image_pixels` pixels (default 89,478,485 = PIL's own limit, e.g.
9459 x 9459) is refused before it is decoded, with :class:`ImageReadError`, like any broken file. Raise it with
:func:`set_max_image_pixels`, the ``ICM_MAX_IMAGE_PIXELS`` environment variable, or ``--max-image-pixels``.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, TiffImagePlugin, UnidentifiedImageError

logger = logging.getLogger(__name__)

#: Default largest accepted image, in pixels (PIL's default ``Image.MAX_IMAGE_PIXELS``).
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
#: Environment variable that overrides the default limit (an integer number of pixels).
MAX_PIXELS_ENV = "ICM_MAX_IMAGE_PIXELS"
#: Float images may overshoot [0, 1] by this much (rounding in the tool that wrote them); it is clipped.
FLOAT_TOLERANCE = 1e-3

_EIGHT_BIT = {"1": "L", "L": "L", "LA": "LA", "RGB": "RGB", "RGBA": "RGBA"}
_CONVERTED = {"La": "LA", "PA": "RGBA", "RGBa": "RGBA", "RGBX": "RGB", "CMYK": "RGB", "YCbCr": "RGB", "HSV": "RGB"}
_SIXTEEN_BIT_GREY = ("I;16", "I;16L", "I;16B", "I;16N")
_REFUSED = {
    "I": "32-bit integer samples have no defined white level; save it as 8/16-bit or 32-bit float",
    "LAB": "CIELAB colour needs colour management; convert it to RGB first",
}

_limit_override: int | None = None


class ImageReadError(ValueError):
    """An image file could not be read at its true scale: unsupported mode, too large, non-finite or out of range."""


def max_image_pixels() -> int:
    """The largest accepted image in pixels: :func:`set_max_image_pixels`, else ``$ICM_MAX_IMAGE_PIXELS``, else
    :data:`DEFAULT_MAX_IMAGE_PIXELS`."""
    if _limit_override is not None:
        return _limit_override
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise ImageReadError(f"{MAX_PIXELS_ENV}={text!r}: expected a positive integer number of pixels")
    return value


def set_max_image_pixels(pixels: int | None) -> None:
    """Set the largest accepted image (pixels, process-wide); ``None`` returns to the environment/default.

    PIL refuses images over twice its own ``Image.MAX_IMAGE_PIXELS`` while opening them, so a larger limit here
    raises PIL's to the same value (it is a process-wide PIL setting).
    """
    global _limit_override
    if pixels is not None and (not isinstance(pixels, int) or pixels < 1):
        raise ValueError(f"max image pixels: expected a positive integer, got {pixels!r}")
    _limit_override = pixels


def _allow_in_pil(limit: int) -> None:
    current = Image.MAX_IMAGE_PIXELS
    if current is not None and limit > current:
        logger.info("raising PIL's MAX_IMAGE_PIXELS from %d to %d", current, limit)
        Image.MAX_IMAGE_PIXELS = limit


def _too_large(path: Path, pixels: int | None, limit: int) -> ImageReadError:
    size = f"{pixels:,} pixels is" if pixels is not None else "its size is far"
    return ImageReadError(
        f"{path}: {size} more than the {limit:,} accepted (decompression-bomb guard); if the file is genuine, "
        f"raise the limit with --max-image-pixels, {MAX_PIXELS_ENV} or set_max_image_pixels()."
    )


@contextmanager
def _opened(path: Path) -> Iterator[Image.Image | None]:
    """PIL's lazy open (header only) with the size checked; yields None for a TIFF that PIL cannot identify.

    The body runs with PIL's DecompressionBombWarning silenced: the size check here replaces it.
    """
    limit = max_image_pixels()
    _allow_in_pil(limit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(path)
        except Image.DecompressionBombError as error:
            raise _too_large(path, None, limit) from error
        except UnidentifiedImageError:
            if path.suffix.lower() not in (".tif", ".tiff"):
                raise
            image = None
        if image is None:
            yield None
            return
        with image:
            if image.width * image.height > limit:
                raise _too_large(path, image.width * image.height, limit)
            yield image


# ------------------------------------------------------------------------------------------------ decoding


def _rawmodes(image: Image.Image) -> list[str]:
    modes = []
    for tile in getattr(image, "tile", None) or []:
        args = tile[3] if len(tile) > 3 else None
        raw = args if isinstance(args, str) else args[0] if isinstance(args, tuple) and args else None
        if isinstance(raw, str):
            modes.append(raw)
    return modes


def _is_16bit_colour(rawmode: str) -> bool:
    """True for PIL raw modes of 16-bit colour samples (``RGB;16B``, ``RGBA;16N``, ``LA;16B``, ...)."""
    head, _, tail = rawmode.partition(";")
    return head in ("RGB", "RGBA", "RGBX", "LA") and tail in ("16", "16B", "16L", "16N")


def _check_float(array: np.ndarray, what: str) -> np.ndarray:
    bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise ImageReadError(f"{what}: {bad} NaN/Inf value(s) in a float image; expected finite values in [0, 1].")
    low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    if low < -FLOAT_TOLERANCE or high > 1 + FLOAT_TOLERANCE:
        raise ImageReadError(
            f"{what}: float image with values in [{low:.4g}, {high:.4g}]; expected [0, 1] (HDR or 0..255 float data "
            "is not clipped silently: tone-map or divide it to [0, 1] first)."
        )
    return np.clip(array, 0.0, 1.0, out=array)


def pil_to_array(image: Image.Image, what: str = "image") -> tuple[np.ndarray, str]:
    """A loaded PIL image -> ``(H x W x C float32 in [0, 1], bands)`` with bands one of L, LA, RGB, RGBA.

    No EXIF orientation here (see :func:`read_image`). Raises :class:`ImageReadError` for refused modes.
    """
    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA" if image.has_transparency_data else "RGB")
    elif mode in _CONVERTED:
        image = image.convert(_CONVERTED[mode])
    if image.mode in _EIGHT_BIT:
        array = np.asarray(image)
        scale = 1.0 if array.dtype == np.bool_ else 255.0
        array = array.astype(np.float32) / np.float32(scale)
        bands = _EIGHT_BIT[image.mode]
    elif mode in _SIXTEEN_BIT_GREY:
        array, bands = np.asarray(image).astype(np.float32) / np.float32(65535.0), "L"
    elif mode == "F":
        array, bands = _check_float(np.array(image, dtype=np.float32), what), "L"
    else:
        reason = _REFUSED.get(mode, "this mode is not supported; save it as 8/16-bit grey, RGB or RGBA")
        raise ImageReadError(f"{what}: PIL image mode {mode!r} is refused: {reason}.")
    return (array[..., None] if array.ndim == 2 else array), bands


def _cv2_decode(path: Path, what: str) -> tuple[np.ndarray, str]:
    """16-bit colour and float colour files via OpenCV (PIL would truncate or cannot open them)."""
    import cv2

    try:
        array = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as error:
        raise ImageReadError(f"{what}: OpenCV could not decode it ({error})") from error
    if array is None:
        raise ImageReadError(f"{what}: neither PIL nor OpenCV can decode this file")
    if array.dtype == np.uint16:
        array = array.astype(np.float32) / np.float32(65535.0)
    elif array.dtype == np.uint8:
        array = array.astype(np.float32) / np.float32(255.0)
    elif array.dtype in (np.float32, np.float64):
        array = _check_float(array.astype(np.float32), what)
    else:
        raise ImageReadError(f"{what}: {array.dtype} samples are not supported; save it as 8/16-bit or float32")
    if array.ndim == 2:
        return array[..., None], "L"
    channels = array.shape[2]
    if channels == 3:
        return np.ascontiguousarray(array[..., ::-1]), "RGB"
    if channels == 4:
        return np.ascontiguousarray(array[..., [2, 1, 0, 3]]), "RGBA"
    raise ImageReadError(f"{what}: {channels} channels; expected grey, RGB or RGBA")


def _tiff_size(path: Path) -> int:
    """Pixel count from a TIFF's first directory (header only), for files that PIL cannot identify."""
    with open(path, "rb") as handle:
        header = handle.read(8)
        try:
            directory = TiffImagePlugin.ImageFileDirectory_v2(header)
            handle.seek(directory.next)
            directory.load(handle)
            return int(directory[256]) * int(directory[257])
        except (SyntaxError, KeyError, ValueError, OSError) as error:  # PIL signals a bad header with SyntaxError
            raise ImageReadError(f"{path}: not a readable TIFF file ({error})") from error


def _orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1..8) to an ``H x W x C`` array, as ``ImageOps.exif_transpose`` does."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
        8: lambda a: np.rot90(a, 1),
    }
    return np.ascontiguousarray(ops[orientation](array)) if orientation in ops else array


def decode_file(path: str | Path) -> tuple[np.ndarray, str]:
    """An image file -> ``(H x W x C float32 in [0, 1], bands)``, EXIF orientation applied, first frame only.

    Raises :class:`ImageReadError` (a ValueError) for refused, oversized or non-finite files, OSError for
    unreadable ones. See the module docstring for the modes.
    """
    path = Path(path)
    what = str(path)
    with _opened(path) as image:
        if image is None:  # e.g. a float RGB TIFF
            pixels, limit = _tiff_size(path), max_image_pixels()
            if pixels > limit:
                raise _too_large(path, pixels, limit)
            return _cv2_decode(path, what)
        frames = getattr(image, "n_frames", 1)
        if frames > 1:
            logger.info("%s: %d frames (animated); reading the first", path, frames)
        # Before getexif(), which loads some formats (PNG) and so forgets the tile's raw mode.
        deep_colour = image.mode not in _SIXTEEN_BIT_GREY and any(_is_16bit_colour(raw) for raw in _rawmodes(image))
        orientation = int(image.getexif().get(ExifTags.Base.Orientation, 1) or 1)
        if deep_colour:
            array, bands = _cv2_decode(path, what)  # 16 bits per colour sample: PIL keeps the high byte only
        else:
            image.load()
            array, bands = pil_to_array(image, what)
    return _orient(array, orientation), bands


def image_size(path: str | Path) -> tuple[int, int]:
    """``(H, W)`` of an image file as :func:`read_image` returns it (EXIF rotation applied), from its header."""
    path = Path(path)
    with _opened(path) as image:
        if image is None:
            raise ImageReadError(f"{path}: PIL cannot read this TIFF's header; use read_image")
        orientation = int(image.getexif().get(ExifTags.Base.Orientation, 1) or 1)
        return (image.width, image.height) if orientation in (5, 6, 7, 8) else (image.height, image.width)
