"""``python -m icm_core demo`` and ``matte`` end to end on tiny weights written to disk (no network)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from icm_core.commands import cli
from icm_core.config import ExtractionConfig
from icm_core.commands.demo import DEMO_SIZE, TARGET_NAMES, demo_scenes_job, output_names
from icm_core.metrics import compute_all
from icm_core.synthetic import demo_model
from icm_core.image_io import read_image, read_mask, to_uint8
from icm_core.loader import MODELS_DIR_VARIABLE, load_engine
from icm_core.weights.decoder import OFFICIAL_DECODER_FILE

from tests.tiny_files import write_tiny_weights
from tests.cli_helpers import cli_error_line

DEMO_SAD_LIMIT = 1.5  # SAD / 1000 of one 256 x 256 demo target (measured 0.52, 0.30, 0.36; flat 0.5: ~33)
TARGET_SIZES = {"t_wide.png": (100, 70), "t_tall.png": (64, 130)}  # PIL (width, height), non-square


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy machine they spin (10x slower)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def _listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- demo


def test_demo_without_weights_runs_the_demo_model_and_says_so(tmp_path, monkeypatch, capsys):
    models = tmp_path / "empty_models"
    models.mkdir()
    monkeypatch.setenv(MODELS_DIR_VARIABLE, str(models))
    out = tmp_path / "demo_out"
    assert cli.main(["demo", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "SMALL DEMO MODEL trained on synthetic scenes" in captured.err
    assert "install the real weights for photos" in captured.err and str(models) in captured.err
    assert sorted(p.name for p in out.iterdir()) == sorted(output_names(demo_model=True))
    job = demo_scenes_job()
    errors = []
    for name, truth in zip(TARGET_NAMES, job.truths):
        assert torch.equal(read_image(out / f"{name}_alpha_true.png")[0], torch.from_numpy(to_uint8(truth)).float() / 255)
        alpha = read_mask(out / f"{name}_alpha.png")
        assert alpha.shape == truth.shape == (DEMO_SIZE, DEMO_SIZE)
        errors.append(compute_all(alpha, truth).sad)
    # the demo model mattes its scenes (docs/quality.md); a flat or inverted alpha is far worse
    flat = [compute_all(torch.full_like(truth, 0.5), truth).sad for truth in job.truths]
    assert max(errors) < DEMO_SAD_LIMIT and sum(errors) < 0.3 * sum(flat), (errors, flat)
    with Image.open(out / "overview.png") as overview:
        assert overview.width > overview.height > 0
    assert not any(models.iterdir())


def test_demo_never_replaces_earlier_files_without_overwrite(tmp_path, monkeypatch, capsys):
    models = tmp_path / "empty_models"
    models.mkdir()
    monkeypatch.setenv(MODELS_DIR_VARIABLE, str(models))
    out = tmp_path / "demo_out"
    out.mkdir()
    (out / "overview.png").write_bytes(b"the user's own picture")
    line = cli_error_line(capsys, ["demo", "--out", str(out)])
    assert "already holds overview.png; pass --overwrite" in line
    assert [p.name for p in out.iterdir()] == ["overview.png"]
    assert (out / "overview.png").read_bytes() == b"the user's own picture"
    assert cli.main(["demo", "--out", str(out), "--overwrite"]) == 0
    assert (out / "overview.png").read_bytes() != b"the user's own picture"


def test_demo_model_refuses_a_feature_extractor_it_was_not_trained_on(monkeypatch, tmp_path):
    monkeypatch.setattr(demo_model, "BACKEND_FINGERPRINT", "0123456789abcdef")
    with pytest.raises(demo_model.DemoModelError, match="builds the tiny demo feature extractor differently"):
        demo_model.load_demo_engine()
    with pytest.raises(demo_model.DemoModelError, match="demo decoder .*missing"):
        demo_model.load_demo_engine(decoder_path=tmp_path / "nothing.safetensors")


# --------------------------------------------------------------------------- matte on tiny weights on disk


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny diffusers SD folder (as ``save_pretrained`` writes it) and a tiny 128-px decoder file."""
    return write_tiny_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture()
def inputs(tmp_path) -> Path:
    folder = tmp_path / "inputs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(folder / "ref.png")
    mask = np.zeros((90, 120), np.uint8)
    mask[15:75, 25:95] = 255
    Image.fromarray(mask).save(folder / "ref_mask.png")
    for name, (width, height) in TARGET_SIZES.items():
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / name)
    return folder


def _matte_args(sd: Path, decoder: Path, inputs: Path, out: Path, targets: list[Path]) -> list[str]:
    return [
        "matte", "--sd", str(sd), "--decoder", str(decoder),
        "--reference", str(inputs / "ref.png"), "--reference-mask", str(inputs / "ref_mask.png"),
        "--out", str(out), *map(str, targets), "--ensemble", "2",
    ]


def test_matte_writes_one_alpha_per_target_at_its_size(tiny_weights, inputs, tmp_path, capsys):
    sd, decoder = tiny_weights
    before = _listing(inputs)
    out = tmp_path / "alphas"
    targets = [inputs / name for name in TARGET_SIZES]
    assert cli.main(_matte_args(sd, decoder, inputs, out, targets)) == 0
    assert "wrote 2, skipped 0 (already done), failed 0" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "alpha").iterdir()) == sorted(TARGET_SIZES)
    written = {}
    for name, size in TARGET_SIZES.items():
        with Image.open(out / "alpha" / name) as alpha:
            assert alpha.size == size and alpha.mode == "L"
            written[name] = np.asarray(alpha)
    assert _listing(inputs) == before  # nothing written next to the inputs

    # The files are exactly what the library API gives for the same weights, seed and settings.
    engine = load_engine(sd, decoder, extraction=ExtractionConfig(timestep=200, ensemble_size=2, image_size=128))
    context = engine.encode_reference(read_image(inputs / "ref.png"), read_mask(inputs / "ref_mask.png"), seed=0)
    alphas = engine.matte(context, [read_image(path) for path in targets], seed=0, batch_size=4)
    for name, alpha in zip(TARGET_SIZES, alphas):
        np.testing.assert_array_equal(written[name], to_uint8(alpha))


def test_matte_refuses_output_into_an_input_folder(tiny_weights, inputs, capsys):
    sd, decoder = tiny_weights
    before = _listing(inputs)
    message = cli_error_line(capsys, _matte_args(sd, decoder, inputs, inputs, [inputs / name for name in TARGET_SIZES]))
    assert "input folder" in message
    assert _listing(inputs) == before


def test_matte_missing_target_is_a_clear_error(tiny_weights, inputs, tmp_path, capsys):
    sd, decoder = tiny_weights
    missing = inputs / "no_such_target.png"
    out = tmp_path / "alphas"
    message = cli_error_line(capsys, _matte_args(sd, decoder, inputs, out, [inputs / "t_wide.png", missing]))
    assert message.startswith("error:") and "does not exist" in message and str(missing) in message
    assert not out.exists()


@pytest.mark.parametrize("what", ["decoder", "sd"])
def test_matte_missing_weights_is_a_clear_error(what, tiny_weights, inputs, tmp_path, capsys):
    sd, decoder = tiny_weights
    if what == "decoder":
        decoder = tmp_path / OFFICIAL_DECODER_FILE
    else:
        sd = tmp_path / "stable-diffusion-2-1"
    out = tmp_path / "alphas"
    message = cli_error_line(capsys, _matte_args(sd, decoder, inputs, out, [inputs / "t_wide.png"]))
    assert (OFFICIAL_DECODER_FILE if what == "decoder" else "stable-diffusion-2-1") in message
    assert not out.exists()


# --------------------------------------------------------------------------- folders, resume, broken inputs


def _tree(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_matte_folders_resume_and_broken_inputs(tiny_weights, inputs, tmp_path, capsys):
    sd, decoder = tiny_weights
    frames = tmp_path / "frames"
    (frames / "shot_a").mkdir(parents=True)
    (frames / "shot_b" / "deep").mkdir(parents=True)
    rng = np.random.default_rng(3)
    for relative in ("shot_a/0001.png", "shot_a/0002.jpg", "shot_b/deep/0001.png"):
        Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(frames / relative)
    (frames / "shot_b" / "broken.png").write_bytes(b"not an image")
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(frames / "shot_b" / "tiny.png")
    (frames / "notes.txt").write_text("ignored: not an image")
    before = _tree(frames)
    out = tmp_path / "out"
    args = _matte_args(sd, decoder, inputs, out, [frames])
    args += ["--save", "alpha,rgba,fg,composite", "--background-color", "0,255,0", "--fit", "pad", "--refine"]
    assert cli.main(args) == 1  # two broken inputs: reported, the rest written
    captured = capsys.readouterr()
    assert "wrote 3, skipped 0 (already done), failed 2" in captured.out
    assert "broken.png" in captured.err and "tiny.png" in captured.err and "expected both sides >= 64" in captured.err
    for kind in ("alpha", "rgba", "foreground", "composite"):
        names = sorted(str(p.relative_to(out / kind)) for p in (out / kind).rglob("*.png"))
        assert names == ["shot_a/0001.png", "shot_a/0002.jpg.png", "shot_b/deep/0001.png"], kind
    with Image.open(out / "rgba" / "shot_a" / "0001.png") as rgba:
        assert rgba.mode == "RGBA" and rgba.size == (96, 80)
    assert _tree(frames) == before  # the input tree is untouched
    assert not list(out.rglob(".*"))  # no temp files left behind

    written = _tree(out)
    assert cli.main(args + ["--resume"]) == 1
    assert "wrote 0, skipped 3 (already done), failed 2" in capsys.readouterr().out
    assert _tree(out) == written  # finished outputs were not rewritten

    (out / "composite" / "shot_a" / "0002.jpg.png").unlink()
    assert cli.main(args + ["--resume"]) == 1
    assert "wrote 1, skipped 2" in capsys.readouterr().out

    assert "inside the input folder" in cli_error_line(
        capsys, _matte_args(sd, decoder, inputs, frames / "shot_a" / "out", [frames])
    )


def test_matte_from_points_and_a_saved_context(tiny_weights, inputs, tmp_path, capsys):
    sd, decoder = tiny_weights
    target = inputs / "t_wide.png"
    saved = tmp_path / "ref_context.safetensors"
    points = '[{"x": 60, "y": 45}]'
    base = ["matte", "--sd", str(sd), "--decoder", str(decoder), "--ensemble", "2", str(target)]
    assert cli.main(base + ["--out", str(tmp_path / "a"), "--reference", str(inputs / "ref.png"),
                            "--reference-points", points, "--save-context", str(saved)]) == 0
    assert saved.exists()
    assert cli.main(base + ["--out", str(tmp_path / "b"), "--context", str(saved)]) == 0
    first = np.asarray(Image.open(tmp_path / "a" / "alpha" / "t_wide.png"))
    second = np.asarray(Image.open(tmp_path / "b" / "alpha" / "t_wide.png"))
    np.testing.assert_array_equal(first, second)
    message = cli_error_line(capsys, base + ["--out", str(tmp_path / "c"), "--reference", str(inputs / "ref.png")])
    assert "exactly one of --reference-mask / --reference-points" in message
