"""The image reader: every common mode at its true scale (or refused by name), EXIF orientations, animations,
the size guard. Every file is written here, most of them byte by byte."""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from icm_core import image_io
from icm_core.image_io import (
    ImageReadError,
    image_size,
    read_grey,
    read_image,
    read_mask,
    set_max_image_pixels,
)
from icm_core.io.images import to_rgb


@pytest.fixture(autouse=True)
def _default_limit(monkeypatch):
    monkeypatch.delenv(image_io.MAX_PIXELS_ENV, raising=False)
    set_max_image_pixels(None)
    yield
    set_max_image_pixels(None)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png(path: Path, array: np.ndarray, color_type: int, bit_depth: int, extra=(), size=None) -> Path:
    """A PNG written from the spec (any depth / colour type, extra chunks before IDAT, optionally a lying IHDR)."""
    height, width = size or array.shape[:2]
    rows = array.astype(">u2" if bit_depth == 16 else "u1").reshape(array.shape[0], -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    chunks = [_chunk(b"IHDR", header), *(_chunk(k, v) for k, v in extra), _chunk(b"IDAT", zlib.compress(raw))]
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"".join(chunks) + _chunk(b"IEND", b""))
    return path


def _ramp(height: int = 16, width: int = 64, step: int = 997, offset: int = 0) -> np.ndarray:
    return ((np.arange(height * width).reshape(height, width) * step + offset) % 65536).astype(np.uint16)


# ------------------------------------------------------------------------------------------------ 16 bit


def test_sixteen_bit_grey_png_and_tiff_read_at_full_precision(tmp_path):
    ramp = _ramp()
    expected = torch.from_numpy(ramp.astype(np.float64) / 65535)
    png = write_png(tmp_path / "grey16.png", ramp, color_type=0, bit_depth=16)
    tiff = tmp_path / "grey16.tif"
    Image.fromarray(ramp).save(tiff)  # mode I;16
    big_endian = tmp_path / "grey16b.tif"
    Image.frombytes("I;16B", (64, 16), ramp.astype(">u2").tobytes()).save(big_endian)
    for path in (png, tiff, big_endian):
        torch.testing.assert_close(read_mask(path).double(), expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(read_image(path)[1].double(), expected, atol=1e-6, rtol=0)
    assert float(read_mask(png).max()) < 1.0  # no longer "almost white": a mid value stays mid
    assert read_mask(png)[0, 1] == pytest.approx(997 / 65535, abs=1e-7)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_sixteen_bit_colour_with_alpha_is_not_truncated(tmp_path, suffix):
    rgba = np.stack([_ramp(offset=o) for o in (0, 11, 23, 5)], axis=-1)  # R, G, B, A
    path = tmp_path / f"rgba16{suffix}"
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgba[..., [2, 1, 0, 3]]))
    expected = torch.from_numpy(rgba.astype(np.float64) / 65535).permute(2, 0, 1)
    torch.testing.assert_close(read_image(path).double(), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(read_mask(path).double(), expected[3], atol=1e-6, rtol=0)
    rgb = tmp_path / f"rgb16{suffix}"
    assert cv2.imwrite(str(rgb), np.ascontiguousarray(rgba[..., [2, 1, 0]]))
    torch.testing.assert_close(read_image(rgb).double(), expected[:3], atol=1e-6, rtol=0)


def test_sixteen_bit_grey_alpha_png_mask_is_its_alpha(tmp_path):
    grey, alpha = _ramp(offset=3), _ramp(step=331, offset=7)
    path = write_png(tmp_path / "la16.png", np.stack([grey, alpha], -1), color_type=4, bit_depth=16)
    torch.testing.assert_close(read_mask(path).double(), torch.from_numpy(alpha / 65535.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(read_grey(path).double(), torch.from_numpy(grey / 65535.0), atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------------ float


def test_float_tiff_grey_and_rgb_read_as_stored(tmp_path):
    values = np.random.default_rng(0).random((20, 30), dtype=np.float32)
    grey = tmp_path / "grey.tif"
    Image.fromarray(values, mode="F").save(grey)
    torch.testing.assert_close(read_mask(grey), torch.from_numpy(values))
    rgb_values = np.random.default_rng(1).random((20, 30, 3), dtype=np.float32)
    rgb = tmp_path / "rgb.tif"  # PIL cannot open float RGB TIFFs; the reader falls back to OpenCV
    assert cv2.imwrite(str(rgb), np.ascontiguousarray(rgb_values[..., ::-1]))
    torch.testing.assert_close(read_image(rgb), torch.from_numpy(rgb_values).permute(2, 0, 1))


def test_float_tiff_outside_unit_range_is_refused_with_the_range(tmp_path):
    values = np.full((8, 8), 0.5, np.float32)
    values[0, 0] = 3.5
    path = tmp_path / "hdr.tif"
    Image.fromarray(values, mode="F").save(path)
    with pytest.raises(ImageReadError, match=r"values in \[0\.5, 3\.5\]; expected \[0, 1\]"):
        read_image(path)
    values[0, 0] = 1.0005  # rounding noise within the tolerance is clipped
    Image.fromarray(values, mode="F").save(path)
    assert float(read_mask(path).max()) == 1.0


# ------------------------------------------------------------------------------------------------ palette and 8 bit


def _palette() -> Image.Image:
    image = Image.new("P", (6, 4))
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])
    image.putdata([0, 1, 2, 3, 1, 1] * 4)
    return image


def test_palette_transparency_is_the_mask(tmp_path):
    index_path = tmp_path / "index.png"
    _palette().save(index_path, transparency=0)  # tRNS: index 0 is transparent
    expected = torch.tensor([0, 1, 1, 1, 1, 1], dtype=torch.float32).repeat(4, 1)
    assert torch.equal(read_mask(index_path), expected)
    image = read_image(index_path)
    assert image.shape == (4, 4, 6) and torch.equal(image[3], expected)
    assert torch.equal(image[:3, 0, 1], torch.tensor([1.0, 0.0, 0.0]))
    bytes_path = tmp_path / "bytes.png"
    _palette().save(bytes_path, transparency=bytes([0, 51, 102, 255]))  # per-entry alpha
    per_entry = torch.tensor([0, 51, 102, 255, 51, 51], dtype=torch.float32) / 255
    torch.testing.assert_close(read_mask(bytes_path), per_entry.repeat(4, 1))
    opaque = tmp_path / "opaque.png"
    _palette().save(opaque)
    assert read_image(opaque).shape[0] == 3


@pytest.mark.parametrize("mode", ["1", "L", "LA", "RGB", "RGBA", "CMYK"])
def test_eight_bit_modes_match_pil(tmp_path, mode):
    rgba = np.random.default_rng(2).integers(0, 256, (12, 10, 4), dtype=np.uint8)
    source = Image.fromarray(rgba, "RGBA").convert(mode)
    path = tmp_path / f"image_{mode}.tif"
    source.save(path)
    expected_mode = {"1": "RGB", "L": "RGB", "CMYK": "RGB", "LA": "RGBA"}.get(mode, mode)
    expected = np.asarray(source.convert(expected_mode), dtype=np.float32) / 255
    torch.testing.assert_close(read_image(path), torch.from_numpy(expected).permute(2, 0, 1))


@pytest.mark.parametrize("mode", ["La", "RGBa", "PA", "YCbCr", "HSV", "RGBX"])
def test_in_memory_pil_modes_are_converted(mode):
    source = Image.fromarray(np.random.default_rng(3).integers(0, 256, (72, 66, 4), dtype=np.uint8), "RGBA")
    image = source.convert("RGB").convert(mode) if mode in ("YCbCr", "HSV", "RGBX") else source.convert(mode)
    if mode == "PA":
        image = Image.new("PA", (66, 72), (5, 200))
        image.putpalette([v % 256 for v in range(768)])
    tensor = to_rgb(image, "in-memory image")
    straight = image.convert({"La": "LA", "RGBa": "RGBA", "PA": "RGBA"}.get(mode, "RGB"))
    reference = np.asarray(straight.convert("RGB"), dtype=np.float32) / 255
    torch.testing.assert_close(tensor, torch.from_numpy(reference).permute(2, 0, 1))


def test_premultiplied_colour_is_unpremultiplied():
    image = Image.new("RGBa", (64, 64), (100, 50, 0, 128))
    assert to_rgb(image)[:, 0, 0].mul(255).round().tolist() == [199.0, 99.0, 0.0]


@pytest.mark.parametrize(
    ("mode", "fill", "message"),
    [("I", 70000, r"mode 'I' is refused: 32-bit integer"), ("LAB", (50, 0, 0), r"mode 'LAB' is refused: CIELAB")],
)
def test_unsupported_modes_are_refused_by_name(tmp_path, mode, fill, message):
    path = tmp_path / f"{mode}.tif"
    Image.new(mode, (8, 8), fill).save(path)
    with pytest.raises(ImageReadError, match=message):
        read_image(path)


# ------------------------------------------------------------------------------------------------ orientation, frames


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pil(tmp_path, orientation):
    pixels = np.random.default_rng(orientation).integers(0, 256, (7, 11, 3), dtype=np.uint8)
    path = tmp_path / f"o{orientation}.png"
    Image.fromarray(pixels).save(path, exif=_exif(orientation))
    with Image.open(path) as opened:
        upright = np.asarray(ImageOps.exif_transpose(opened).convert("RGB"), dtype=np.float32) / 255
    torch.testing.assert_close(read_image(path), torch.from_numpy(upright).permute(2, 0, 1))
    assert image_size(path) == upright.shape[:2]


@pytest.mark.parametrize("orientation", [6, 7])
def test_exif_orientation_applies_to_sixteen_bit_colour(tmp_path, orientation):
    rgb = np.stack([_ramp(8, 12, offset=o) for o in (0, 100, 200)], axis=-1)
    path = write_png(tmp_path / "o.png", rgb, color_type=2, bit_depth=16, extra=[(b"eXIf", _exif(orientation)[6:])])
    high_bytes = tmp_path / "o8.png"
    Image.fromarray((rgb >> 8).astype(np.uint8)).save(high_bytes, exif=_exif(orientation))
    read = read_image(path)
    assert read.shape == (3, 12, 8)
    torch.testing.assert_close(torch.floor(read * 65535 / 256), read_image(high_bytes) * 255)


def _frames(colours, mode="RGB"):
    return [Image.new(mode, (16, 12), colour) for colour in colours]


@pytest.mark.parametrize("suffix", [".gif", ".webp", ".png"])
def test_animations_read_their_first_frame(tmp_path, suffix, caplog):
    frames = _frames([(255, 0, 0), (0, 255, 0), (0, 0, 255)])
    path = tmp_path / f"anim{suffix}"
    options = {"lossless": True} if suffix == ".webp" else {}
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0, **options)
    with Image.open(path) as opened:
        assert opened.n_frames == 3
    with caplog.at_level("INFO", logger="icm_core.io.decode"):
        image = read_image(path)
    torch.testing.assert_close(image[:3, 5, 5], torch.tensor([1.0, 0.0, 0.0]), atol=1 / 255, rtol=0)
    assert "3 frames (animated); reading the first" in caplog.text


# ------------------------------------------------------------------------------------------------ size guard


def test_decompression_bomb_is_a_clear_read_error_and_no_warning(tmp_path):
    bomb = write_png(tmp_path / "bomb.png", np.zeros((1, 1), np.uint8), 0, 8, size=(40_000, 40_000))
    above_limit = write_png(tmp_path / "big.png", np.zeros((1, 1), np.uint8), 0, 8, size=(10_000, 10_000))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageReadError, match=r"bomb\.png: its size is far more than the 89,478,485 accepted"):
            read_image(bomb)
        with pytest.raises(ImageReadError, match=r"100,000,000 pixels is more than the 89,478,485 accepted"):
            read_mask(above_limit)
        with pytest.raises(ImageReadError, match="--max-image-pixels"):
            image_size(above_limit)


def test_the_limit_can_be_lowered_and_raised(tmp_path, monkeypatch):
    path = tmp_path / "small.png"
    Image.new("L", (10, 10), 128).save(path)
    set_max_image_pixels(99)
    with pytest.raises(ImageReadError, match="100 pixels is more than the 99 accepted"):
        read_image(path)
    set_max_image_pixels(None)
    monkeypatch.setenv(image_io.MAX_PIXELS_ENV, "50")
    with pytest.raises(ImageReadError, match="more than the 50 accepted"):
        read_image(path)
    monkeypatch.setenv(image_io.MAX_PIXELS_ENV, "lots")
    with pytest.raises(ImageReadError, match="ICM_MAX_IMAGE_PIXELS='lots': expected a positive integer"):
        read_image(path)
    monkeypatch.delenv(image_io.MAX_PIXELS_ENV)
    assert read_image(path).shape == (3, 10, 10)
    huge = write_png(tmp_path / "huge.png", np.zeros((1, 1), np.uint8), 0, 8, size=(40_000, 40_000))
    set_max_image_pixels(2_000_000_000)  # accepted now: it fails later, at decoding, as a broken file
    with pytest.raises(OSError):
        read_image(huge)


def test_trimaps_and_sizes_use_the_same_reader(tmp_path):
    from icm_core.io.datasets import read_trimap

    trimap = np.full((8, 9), 128 * 257, np.uint16)
    trimap[0] = 65535
    trimap[-1] = 0
    path = write_png(tmp_path / "trimap16.png", trimap, 0, 16)
    read = read_trimap(path)
    assert read.dtype == np.uint8 and read[0, 0] == 255 and read[3, 3] == 128 and read[-1, 0] == 0
