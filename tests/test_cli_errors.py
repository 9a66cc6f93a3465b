"""User mistakes end the CLI with one ``error:`` line on stderr, exit code 2, no traceback, and no model loaded."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from icm_core.commands import checks, cli
from icm_core.commands.checks import SEED_MAX
from icm_core.context_io import save_context
from icm_core.pipeline import ReferenceContext
from icm_core.weights.decoder import OFFICIAL_DECODER_FILE
from tests.cli_helpers import cli_error_line

REPO = Path(__file__).resolve().parents[1]


class ModelLoaded(Exception):
    """Raised by the patched loaders: reaching one means the options passed every check."""


@pytest.fixture(autouse=True)
def no_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading any model is a test failure unless the test expects ModelLoaded."""

    def explode(*args, **kwargs):
        raise ModelLoaded("a model was loaded")

    from icm_core.commands import evaluate as evaluation_commands
    from icm_core.commands import options  # the engine of matte (and of every command) is built there
    from icm_core.commands import train as training_commands

    monkeypatch.setattr(options, "load_decoder", explode)
    monkeypatch.setattr(options, "load_engine", explode)
    monkeypatch.setattr(evaluation_commands, "build_engine", explode)
    monkeypatch.setattr(training_commands, "build_engine", explode)


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    """A reference (90x120), its mask, a target, and weight paths that would fail loudly if ever loaded."""
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(folder / "ref.png")
    mask = np.zeros((90, 120), np.uint8)
    mask[20:70, 30:90] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    Image.fromarray(rng.integers(0, 256, (70, 100, 3), dtype=np.uint8)).save(folder / "t.png")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 64)
    return {
        "dir": folder, "ref": folder / "ref.png", "mask": folder / "mask.png", "target": folder / "t.png",
        "sd": tmp_path / "no-sd-here", "decoder": tmp_path / "garbage.safetensors", "out": tmp_path / "out",
    }  # fmt: skip


def matte(files: dict[str, Path], *extra: str, prompt: tuple[str, ...] | None = None) -> list[str]:
    prompt = prompt if prompt is not None else ("--reference", str(files["ref"]), "--reference-mask", str(files["mask"]))
    return ["matte", str(files["target"]), "--sd", str(files["sd"]), "--decoder", str(files["decoder"]),
            "--out", str(files["out"]), *prompt, *extra]  # fmt: skip


def points(files: dict[str, Path], text: str) -> tuple[str, ...]:
    return ("--reference", str(files["ref"]), "--reference-points", text)


OPTION_MISTAKES = [
    (("--seed", str(2**70)), f"0..{SEED_MAX}"),
    (("--seed", "-1"), "seed must be in"),
    (("--seed", "1.5"), "expected an integer seed"),
    (("--seed", str(SEED_MAX + 1)), "seed must be in"),
    (("--batch-size", "0"), "--batch-size"),
    (("--batch-size", "many"), "--batch-size"),
    (("--ensemble", "0"), "--ensemble"),
    (("--timestep", "1000"), "in 0..999"),
    (("--min-coverage", "0"), "(0, 1]"),
    (("--min-coverage", "nan"), "(0, 1]"),
    (("--background-color", "#12345"), "--background-color"),
    (("--background-color", "300,0,0"), "0..255"),
    (("--background-color", "nan,0,0"), "0..255"),
    (("--save", "alpha,bogus"), "--save"),
    (("--device", "nope"), "unknown device 'nope'"),
    (("--device", "cuda:99"), "cuda"),
    (("--fit", "squash"), "--fit"),
    (("--save-context", "ctx.pth"), ".safetensors"),
    (("--no-such-option",), "unrecognized arguments"),
]


@pytest.mark.parametrize(("extra", "expected"), OPTION_MISTAKES, ids=[" ".join(o) for o, _ in OPTION_MISTAKES])
def test_bad_option_values_are_one_line_before_any_model(files, capsys, extra, expected):
    message = cli_error_line(capsys, matte(files, *extra))
    assert expected in message
    assert not files["out"].exists()


NUMBER_MISTAKES = [
    ("unit_fraction", "x", "expected a number in (0, 1], got 'x'"),
    ("unit_fraction", "0", "expected a number in (0, 1], got 0"),
    ("unit_fraction", "nan", "expected a number in (0, 1], got nan"),
    ("positive_float", "-1", "expected a finite number > 0, got -1"),
    ("positive_float", "inf", "expected a finite number > 0, got inf"),
    ("positive_float", "lots", "expected a number > 0, got 'lots'"),
    ("non_negative_float", "-0.5", "expected a finite number >= 0, got -0.5"),
    ("non_negative_float", "nan", "expected a finite number >= 0, got nan"),
    ("non_negative_float", "none", "expected a number >= 0, got 'none'"),
]


@pytest.mark.parametrize(("kind", "text", "expected"), NUMBER_MISTAKES)
def test_number_options_say_what_they_expected(kind, text, expected):
    parse = getattr(checks, kind)
    with pytest.raises(argparse.ArgumentTypeError) as refused:
        parse(text)
    assert str(refused.value) == expected
    assert parse.__name__ == kind


def test_number_options_accept_their_range():
    assert checks.unit_fraction("1") == 1.0 and checks.unit_fraction("0.25") == 0.25
    assert checks.positive_float("4e-4") == 4e-4
    assert checks.non_negative_float("0") == 0.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_cpu_only_machine(files, capsys):
    message = cli_error_line(capsys, matte(files, "--device", "cuda"))
    assert "no CUDA GPU" in message and "--device cpu" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[{"x": 10', "not valid JSON"),
        ('[{"x": 10}]', 'expected an object with "x" and "y"'),
        ('[{"x": "a", "y": 3}]', "must be numbers"),
        ("[]", "holds no point"),
        ('[{"x": 500, "y": 10}]', "outside the 120x90 px reference"),
        ('{"x": NaN, "y": 1}', "finite"),
    ],
)
def test_bad_points_are_one_line_before_any_model(files, capsys, text, expected):
    assert expected in cli_error_line(capsys, matte(files, prompt=points(files, text)))


def test_bad_negative_points(files, capsys):
    message = cli_error_line(capsys, matte(files, "--negative-points", "nonsense", prompt=points(files, '[{"x":5,"y":5}]')))
    assert "--negative-points" in message


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_unusable_reference_and_mask_files(files, tmp_path, capsys):
    good = files["ref"].read_bytes()
    cases = {
        "missing reference": (["--reference", str(tmp_path / "nope.png"), "--reference-mask", str(files["mask"])],
                              "does not exist"),
        "garbage reference": (["--reference", str(_write(tmp_path / "bad.png", b"not an image")),
                               "--reference-mask", str(files["mask"])], "cannot be used"),
        "truncated reference": (["--reference", str(_write(tmp_path / "cut.png", good[: len(good) // 2])),
                                 "--reference-mask", str(files["mask"])], "cannot be used"),
        "folder as reference": (["--reference", str(files["dir"]), "--reference-mask", str(files["mask"])],
                                "not a file"),
        "missing mask": (["--reference", str(files["ref"]), "--reference-mask", str(tmp_path / "nomask.png")],
                         "does not exist"),
        "mask of another size": (["--reference", str(files["ref"]), "--reference-mask", str(files["target"])],
                                 "must have the image's exact size"),
        "unreadable mask": (["--reference", str(files["ref"]),
                             "--reference-mask", str(_write(tmp_path / "m.png", b"\x89PNG\r\n\x1a\n"))],
                            "cannot be used"),
    }  # fmt: skip
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "small.png")
    cases["too small reference"] = (
        ["--reference", str(tmp_path / "small.png"), "--reference-mask", str(tmp_path / "small.png")], ">= 64"
    )
    for name, (prompt, expected) in cases.items():
        message = cli_error_line(capsys, matte(files, prompt=tuple(prompt)))
        assert expected in message, name


def _context_file(path: Path, metadata: dict[str, str]) -> Path:
    tensors = {"tokens": torch.zeros(3, 8), "token_masks": torch.zeros(1, 4, 4, dtype=torch.uint8),
               "reference_sizes": torch.tensor([[90, 120]])}  # fmt: skip
    save_file(tensors, str(path), metadata=metadata)
    return path


def test_unusable_contexts(files, tmp_path, capsys):
    good = {"format": "icm-context", "version": "1", "fingerprint": "0123456789abcdef", "prompt_kind": "mask"}
    no_fingerprint = {k: v for k, v in good.items() if k != "fingerprint"}
    valid = _context_file(tmp_path / "valid.safetensors", good)
    cases = {
        "missing file": (tmp_path / "nope.safetensors", "not found"),
        "a decoder, not a context": (_context_file(tmp_path / "dec.safetensors", {"format": "icm-decoder"}),
                                     "is not a saved IconMatting reference context"),
        "another version": (_context_file(tmp_path / "v9.safetensors", {**good, "version": "9"}), "version '9'"),
        "no fingerprint": (_context_file(tmp_path / "nofp.safetensors", no_fingerprint), "fingerprint"),
        "no metadata": (_context_file(tmp_path / "nometa.safetensors", {}), "not a saved IconMatting"),
        "truncated": (_write(tmp_path / "cut.safetensors", valid.read_bytes()[:100]), "truncated or corrupt"),
        "wrong extension": (_write(tmp_path / "ctx.txt", b"hello"), "Unsupported checkpoint extension"),
    }  # fmt: skip
    for name, (path, expected) in cases.items():
        message = cli_error_line(capsys, matte(files, prompt=("--context", str(path))))
        assert expected in message and str(path) in message, name
    message = cli_error_line(capsys, matte(files, prompt=("--context", str(valid), "--reference", str(files["ref"]))))
    assert "not both" in message


def test_context_of_another_model_is_one_line_after_loading(files, tmp_path, capsys, monkeypatch):
    """The fingerprint check needs the model; its failure is still one line."""
    from icm_core.commands import matte as matte_command
    from icm_core.tiny import build_tiny_engine

    monkeypatch.setattr(matte_command, "build_engine", lambda args: build_tiny_engine(image_size=128))
    context = ReferenceContext(torch.zeros(64, 48), torch.ones(1, 8, 8, dtype=torch.bool), ((90, 120),), "f" * 16)
    path = save_context(context, tmp_path / "other.safetensors")
    message = cli_error_line(capsys, matte(files, prompt=("--context", str(path))))
    assert "encoded with another model or configuration" in message
    assert not (files["out"] / "alpha").exists()


def test_a_valid_command_reaches_the_loader(files, capsys):
    """The largest seed and every other option accepted: the checks pass and loading starts."""
    with pytest.raises(ModelLoaded):
        cli.main(matte(files, "--seed", str(SEED_MAX), "--batch-size", "1", "--background-color", "0,255,0"))


def test_missing_weights_are_one_line(files, tmp_path, capsys, monkeypatch):
    from icm_core.commands import options
    from icm_core.loader import load_engine
    from icm_core.weights.decoder import load_decoder

    monkeypatch.setattr(options, "load_decoder", load_decoder)
    monkeypatch.setattr(options, "load_engine", load_engine)
    files["decoder"] = tmp_path / OFFICIAL_DECODER_FILE
    assert OFFICIAL_DECODER_FILE in cli_error_line(capsys, matte(files))
    files["decoder"] = _write(tmp_path / "zero.safetensors", b"\x00" * 64)
    assert "zero.safetensors" in cli_error_line(capsys, matte(files))


# --------------------------------------------------------------------------- evaluate, train, convert


def _dataset(root: Path) -> Path:
    for folder in ("image", "alpha"):
        (root / folder).mkdir(parents=True)
    for name in ("a", "b"):
        Image.fromarray(np.full((70, 70, 3), 99, np.uint8)).save(root / "image" / f"{name}.png")
        Image.fromarray(np.full((70, 70), 255, np.uint8)).save(root / "alpha" / f"{name}.png")
    (root / "groups.json").write_text(json.dumps({"g": ["a", "b"]}))
    return root


def test_evaluate_and_train_mistakes(tmp_path, capsys):
    data = _dataset(tmp_path / "data")
    out = tmp_path / "report"
    assert "seed must be in" in cli_error_line(capsys, ["evaluate", str(data), "--out", str(out), "--tiny", "--seed", str(2**70)])
    assert "--batch-size" in cli_error_line(capsys, ["evaluate", str(data), "--out", str(out), "--tiny", "--batch-size", "0"])
    assert "unknown device" in cli_error_line(capsys, ["evaluate", str(data), "--out", str(out), "--tiny", "--device", "nope"])
    assert "--sd is required" in cli_error_line(capsys, ["evaluate", str(data), "--out", str(out)])
    assert "has no 'image/' folder" in cli_error_line(capsys, ["evaluate", str(tmp_path), "--out", str(out), "--tiny"])
    assert "names unknown group" in cli_error_line(capsys, [
        "evaluate", str(data), "--out", str(out), "--tiny",
        "--references", str(_write(tmp_path / "refs.json", b'{"zz": "a"}')),
    ])  # fmt: skip
    assert "seed must be in" in cli_error_line(capsys, ["train", str(data), "--out", str(out), "--tiny", "--seed", "-3"])
    assert "--steps" in cli_error_line(capsys, ["train", str(data), "--out", str(out), "--tiny", "--steps", "0"])
    assert "--lr" in cli_error_line(capsys, ["train", str(data), "--out", str(out), "--tiny", "--lr", "inf"])
    assert not out.exists()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"{not json", "is damaged"),
        (b"\xff\xfe", "is damaged"),
        (b"[]", "expected a JSON object"),
        (b'{"format": "icm-training-state", "version": 1}', "'step' must be an integer"),
        (b'{"format": "icm-training-state", "version": 1, "step": "3", "tensors": "x", "optimizer": []}', "'step'"),
        (b'{"format": "other", "version": 1}', "expected format"),
    ],
)
def test_damaged_training_state_is_one_line_before_any_model(tmp_path, capsys, content, expected):
    data = _dataset(tmp_path / "data")
    run = tmp_path / "run"
    run.mkdir()
    (run / "training_state.json").write_bytes(content)
    message = cli_error_line(capsys, ["train", str(data), "--out", str(run), "--tiny", "--resume"])
    assert expected in message and "training_state.json" in message


def test_convert_mistakes(tmp_path, capsys):
    assert ".safetensors" in cli_error_line(capsys, ["convert", str(tmp_path / "a.pth"), str(tmp_path / "b.pth")])
    assert OFFICIAL_DECODER_FILE in cli_error_line(
        capsys, ["convert", str(tmp_path / OFFICIAL_DECODER_FILE), str(tmp_path / "b.safetensors")]
    )


# --------------------------------------------------------------------------- the real entry point


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "icm_core", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)  # fmt: skip


def test_entry_point_prints_one_line_and_debug_shows_the_traceback(files):
    args = matte(files, "--seed", str(2**70))[0:]
    result = _run_cli(*args)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [result.stderr.strip()] and result.stderr.startswith("error: ")
    assert f"0..{SEED_MAX}" in result.stderr
    bad_points = _run_cli(*matte(files, prompt=points(files, "[{")))
    assert bad_points.returncode == 2 and bad_points.stderr.count("\n") == 1
    assert bad_points.stderr.startswith("error: --reference-points: not valid JSON")
    debug = _run_cli("--debug", *matte(files, prompt=points(files, "[{")))
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "CommandError" in debug.stderr
