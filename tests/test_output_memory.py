"""Outputs at full resolution in bounded memory, with the same numbers as whole-image passes.

The reference below is the whole-image blur fusion (two passes of a float64 box filter over the full image):
simple, and the banded implementation must agree with it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from icm_core.outputs import make_outputs
from icm_core.postprocess import box_filter, composite, estimate_foreground
from icm_core.postprocess import foreground as foreground_module

REPO = Path(__file__).resolve().parents[1]
WORKING_BYTES_PER_PIXEL = 48


def _reference_pass(image, fg, bg, alpha, radius):
    inv = 1.0 - alpha
    blurred = box_filter(torch.cat([alpha, fg * alpha, bg * inv], dim=1), radius)
    blur_a = blurred[:, 0:1]
    f_blur = blurred[:, 1:4] / (blur_a + 1e-5)
    b_blur = blurred[:, 4:7] / ((1.0 - blur_a) + 1e-5)
    residual = image - alpha * f_blur - inv * b_blur
    return (f_blur + alpha * residual).clamp(0, 1), (b_blur + inv * residual).clamp(0, 1), b_blur


def reference_foreground(image, alpha, radii=(45, 3)):
    img, a = image.float().clamp(0, 1), alpha.float().clamp(0, 1)
    fg, _, b_blur = _reference_pass(img, img, img, a, radii[0])
    fg, bg, _ = _reference_pass(img, fg, b_blur, a, radii[1])
    return fg, bg


def _scene(batch, height, width, seed):
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, height, width, generator=generator)
    alpha = torch.rand(batch, 1, height, width, generator=generator)
    alpha[..., : height // 3, :] = alpha[..., : height // 3, :].round()  # hard regions next to soft ones
    return image, alpha


@pytest.mark.parametrize(
    ("height", "width", "radii", "band"),
    [(1, 5, (45, 3), None), (50, 61, (45, 3), None), (301, 97, (45, 3), 7), (140, 33, (4, 9), 5), (64, 64, (100, 1), 3)],
)
def test_banded_blur_fusion_matches_whole_image_passes(monkeypatch, height, width, radii, band):
    if band is not None:  # force many bands, each smaller than the halo
        monkeypatch.setattr(foreground_module, "_band_rows", lambda h, w, halo: band)
    image, alpha = _scene(2, height, width, seed=height)
    fg, bg = estimate_foreground(image, alpha, radii)
    ref_fg, ref_bg = reference_foreground(image, alpha, radii)
    torch.testing.assert_close(fg, ref_fg, atol=1e-5, rtol=0)
    torch.testing.assert_close(bg, ref_bg, atol=1e-5, rtol=0)


def test_outputs_match_the_whole_image_reference():
    image, alpha = _scene(1, 210, 150, seed=3)
    outputs = make_outputs(image[0], alpha[0, 0], ("alpha", "rgba", "foreground", "composite"), (0.2, 0.5, 1.0))
    ref_fg, _ = reference_foreground(image, alpha)
    background = torch.tensor([0.2, 0.5, 1.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(outputs.foreground, ref_fg[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(outputs.rgba, torch.cat([ref_fg[0], alpha[0]]), atol=1e-5, rtol=0)
    expected = alpha * ref_fg + (1 - alpha) * background
    torch.testing.assert_close(outputs.composite, expected[0], atol=1e-5, rtol=0)
    tensor_background = torch.rand(1, 3, 210, 150)
    torch.testing.assert_close(
        composite(ref_fg, alpha, tensor_background), alpha * ref_fg + (1 - alpha) * tensor_background
    )


_PROBE = textwrap.dedent(
    """
    import json, sys
    import torch
    sys.path.insert(0, sys.argv[1])
    from icm_core.outputs import make_outputs

    def rss_kb(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1])

    torch.set_num_threads(1)
    height, width, kinds = int(sys.argv[2]), int(sys.argv[3]), tuple(sys.argv[4].split(","))
    make_outputs(torch.rand(3, 96, 128), torch.rand(96, 128), kinds)  # warm-up: libraries, thread pools
    image, alpha = torch.rand(3, height, width), torch.rand(height, width)
    before = rss_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as handle:  # reset the high-water mark to the current RSS
        handle.write("5")
    outputs = make_outputs(image, alpha, kinds)
    peak = rss_kb("VmHWM")
    inputs = {image.untyped_storage().data_ptr(), alpha.untyped_storage().data_ptr()}
    storages = {}
    for tensor in (outputs.alpha, outputs.foreground, outputs.rgba, outputs.composite):
        if tensor is not None and tensor.untyped_storage().data_ptr() not in inputs:
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
    print(json.dumps({"delta": (peak - before) * 1024, "outputs": sum(storages.values())}))
    """
)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to measure peak RSS")
@pytest.mark.parametrize("kinds", ["alpha,rgba,foreground,composite", "composite", "foreground"])
def test_output_working_memory_is_bounded(tmp_path, kinds):
    probe = tmp_path / "probe.py"
    probe.write_text(_PROBE)
    height, width = 1500, 2000  # 3 MP
    output = subprocess.run(
        [sys.executable, str(probe), str(REPO), str(height), str(width), kinds], check=True, capture_output=True,
        text=True,
    ).stdout
    measured = json.loads(output.strip().splitlines()[-1])
    working = (measured["delta"] - measured["outputs"]) / (height * width)
    assert working <= WORKING_BYTES_PER_PIXEL, f"{kinds}: {working:.1f} B/px working memory, {measured}"
