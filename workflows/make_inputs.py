"""Write the media the example workflows load into ``workflows/inputs/`` (small files, shipped with the pack).

Run with a Python that has numpy, Pillow and PyAV (ComfyUI's own environment has all three):

    python workflows/make_inputs.py

The images come from the synthetic samples in ``icm_core/assets/samples``. A reference carries its mask the way
ComfyUI's mask editor stores it (Load Image's MASK = 1 - alpha), so the workflows need no painting to run.
The video is six 192x160 crops of a sample target, sliding right (12 fps).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "icm_core" / "assets" / "samples"
OUT = ROOT / "workflows" / "inputs"
VIDEO_FRAMES, VIDEO_WIDTH, VIDEO_HEIGHT, VIDEO_FPS = 6, 192, 160, 12


def _sample(name: str) -> np.ndarray:
    return np.asarray(Image.open(SAMPLES / f"{name}.png"))


def _with_painted_mask(image: np.ndarray, mask: np.ndarray) -> Image.Image:
    """RGB + mask (255 = the thing) -> RGBA whose alpha is 255 - mask, as the mask editor saves a painting."""
    return Image.fromarray(np.dstack([image, 255 - mask]).astype(np.uint8), "RGBA")


def _save_png(image: Image.Image, name: str) -> None:
    handle, temporary = tempfile.mkstemp(dir=OUT, prefix=f".{name}.", suffix=".tmp")
    os.close(handle)
    image.save(temporary, format="PNG", optimize=True)
    os.chmod(temporary, 0o644)
    os.replace(temporary, OUT / name)


def _write_video(path: Path) -> None:
    import av

    source = _sample("target_1")
    handle, temporary = tempfile.mkstemp(dir=OUT, prefix=f".{path.name}.", suffix=".mp4")
    os.close(handle)
    with av.open(temporary, mode="w") as container:
        stream = container.add_stream("mpeg4", rate=VIDEO_FPS)
        stream.width, stream.height, stream.pix_fmt = VIDEO_WIDTH, VIDEO_HEIGHT, "yuv420p"
        stream.bit_rate = 400_000
        for index in range(VIDEO_FRAMES):
            left, top = 130 + 6 * index, 40
            frame = np.ascontiguousarray(source[top:top + VIDEO_HEIGHT, left:left + VIDEO_WIDTH])
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    _save_png(_with_painted_mask(_sample("reference"), _sample("reference_mask")), "icm_reference.png")
    _save_png(_with_painted_mask(_sample("target_2"), _sample("target_2_alpha_true")), "icm_reference_2.png")
    for index in (1, 2, 3):
        _save_png(Image.fromarray(_sample(f"target_{index}")), f"icm_target_{index}.png")
    _write_video(OUT / "icm_video.mp4")


if __name__ == "__main__":
    main()
