"""Output safety of the CLI: collision-free names, no write into or over an input, staged writes, crash-safe resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from icm_core.commands import cli
from icm_core.config import ExtractionConfig
from icm_core.io.file_safety import folder_lock, is_partial_name, partial_path, png_is_complete
from icm_core.image_io import read_image, read_mask, to_uint8
from icm_core.loader import load_engine
from icm_core.commands.matte_job import OutputCollisionError, Target, check_collisions, collect_targets, output_name
from icm_core.weights.decoder import load_decoder

from tests.tiny_files import write_tiny_weights
from tests.cli_helpers import cli_error_line, only_error_line

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> tuple[Path, Path]:
    return write_tiny_weights(tmp_path_factory.mktemp("weights"))


def _image(path: Path, height: int, width: int, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture()
def reference(tmp_path) -> tuple[Path, Path]:
    image = _image(tmp_path / "ref" / "ref.png", 90, 120, 0)
    mask = np.zeros((90, 120), np.uint8)
    mask[15:75, 25:95] = 255
    Image.fromarray(mask).save(tmp_path / "ref" / "mask.png")
    return image, tmp_path / "ref" / "mask.png"


def _args(weights, reference, out: Path, *targets: Path, extra: tuple[str, ...] = ()) -> list[str]:
    sd, decoder = weights
    return ["matte", "--sd", str(sd), "--decoder", str(decoder), "--reference", str(reference[0]),
            "--reference-mask", str(reference[1]), "--out", str(out), "--ensemble", "2", "--batch-size", "1",
            *map(str, targets), *extra]  # fmt: skip


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _library_alphas(weights, reference, paths: list[Path]) -> list[np.ndarray]:
    sd, decoder = weights
    engine = load_engine(sd, decoder, extraction=ExtractionConfig(timestep=200, ensemble_size=2, image_size=128))
    context = engine.encode_reference(read_image(reference[0]), read_mask(reference[1]), seed=0)
    return [to_uint8(alpha) for alpha in engine.matte(context, [read_image(p) for p in paths], seed=0)]


# --------------------------------------------------------------------------- names


def test_output_names_keep_the_whole_file_name():
    assert output_name(Path("shot/0001.png")) == Path("shot/0001.png")
    assert output_name(Path("frame.001.png")) == Path("frame.001.png")
    assert output_name(Path("a.jpg")) == Path("a.jpg.png")
    assert output_name(Path("frame.001.tif")) == Path("frame.001.tif.png")
    assert output_name(Path("A.PNG")) == Path("A.PNG.png")


NAME = st.text(alphabet="abAB.01_", min_size=1, max_size=6).filter(lambda n: n not in (".", ".."))
SUFFIX = st.sampled_from([".png", ".PNG", ".jpg", ".jpeg", ".tif", ".png.png", ".jpg.png"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["", "x/", "x/y/", "X/"]), NAME, SUFFIX), min_size=1, max_size=8))
def test_collisions_are_always_found(entries):
    """Either every target has its own output (also ignoring letter case, and no output is another's folder),
    or check_collisions refuses the set."""
    targets = [Target(Path(f"/in/{d}{n}{s}"), output_name(Path(f"{d}{n}{s}"))) for d, n, s in entries]
    keys = [t.relative.as_posix().casefold() for t in targets]
    folders = {p.as_posix().casefold() for t in targets for p in t.relative.parents if p.parts}
    clean = len(set(keys)) == len(keys) and not folders & set(keys)
    if clean:
        check_collisions(targets)
    else:
        with pytest.raises(OutputCollisionError):
            check_collisions(targets)


def test_collisions_across_inputs_are_listed(tmp_path):
    for folder in ("shot_a", "shot_b"):
        _image(tmp_path / folder / "0001.png", 70, 70, 1)
    _image(tmp_path / "c" / "Img.png", 70, 70, 2)
    _image(tmp_path / "c" / "img.png", 70, 70, 3)
    with pytest.raises(OutputCollisionError) as error:
        collect_targets([tmp_path / "shot_a", tmp_path / "shot_b", tmp_path / "c"])
    message = str(error.value)
    assert "3 output name collision(s)" not in message  # two pairs, not three
    assert "2 output name collision(s)" in message
    assert "shot_a/0001.png" in message and "shot_b/0001.png" in message and "Img.png" in message
    with pytest.raises(OutputCollisionError, match="the same input given twice"):
        collect_targets([tmp_path / "shot_a", tmp_path / "shot_a" / "0001.png"])


def test_collision_is_an_error_before_any_model_loads(weights, reference, tmp_path, capsys):
    for folder in ("a", "b"):
        _image(tmp_path / folder / "f.png", 70, 70, 1)
    message = cli_error_line(capsys, _args((tmp_path / "no-sd", tmp_path / "no-decoder"), reference, tmp_path / "out",
                                   tmp_path / "a", tmp_path / "b"))  # fmt: skip
    assert "collision" in message and "f.png" in message
    assert not (tmp_path / "out").exists()


def test_numbered_frames_and_two_formats_give_one_output_each(weights, reference, tmp_path, capsys):
    frames = tmp_path / "frames"
    paths = [_image(frames / f"frame.00{i}.png", 70 + i, 80, i) for i in (1, 2, 3)]
    paths += [_image(frames / "a.png", 64, 90, 7)]
    Image.open(_image(tmp_path / "tmp_a.png", 66, 66, 8)).convert("RGB").save(frames / "a.jpg", quality=95)
    paths.append(frames / "a.jpg")
    out = tmp_path / "out"
    assert cli.main(_args(weights, reference, out, frames)) == 0
    assert "wrote 5, skipped 0" in capsys.readouterr().out
    names = ["a.jpg.png", "a.png", "frame.001.png", "frame.002.png", "frame.003.png"]
    assert sorted(p.name for p in (out / "alpha").iterdir()) == names
    expected = _library_alphas(weights, reference, paths)
    for path, alpha in zip(paths, expected):
        np.testing.assert_array_equal(np.asarray(Image.open(out / "alpha" / output_name(Path(path.name)))), alpha)
    assert cli.main(_args(weights, reference, out, frames, extra=("--resume",))) == 0
    assert "wrote 0, skipped 5" in capsys.readouterr().out


# --------------------------------------------------------------------------- inputs are never written


def test_input_inside_the_output_folder_is_refused(weights, reference, tmp_path, capsys):
    out = tmp_path / "out"
    _image(out / "alpha" / "x.png", 70, 70, 1)
    moved = (out / "refs" / "ref.png", reference[1])
    moved[0].parent.mkdir()
    moved[0].write_bytes(reference[0].read_bytes())
    before = _tree(out)
    assert "inside the output folder" in cli_error_line(capsys, _args(weights, reference, out, out / "alpha"))
    assert "inside the output folder" in cli_error_line(capsys, _args(weights, reference, out, out / "alpha" / "x.png"))
    assert "inside the output folder" in cli_error_line(capsys, _args(weights, moved, out, tmp_path / "ref" / "ref.png"))
    assert _tree(out) == before


def test_existing_outputs_need_resume_or_overwrite(weights, reference, tmp_path, capsys):
    target = _image(tmp_path / "in" / "t.png", 70, 70, 1)
    out = tmp_path / "out"
    (out / "alpha").mkdir(parents=True)
    (out / "alpha" / "t.png").write_bytes(b"a file of the user's")
    message = cli_error_line(capsys, _args((tmp_path / "no-sd", tmp_path / "no-dec"), reference, out, target))
    assert "already exist" in message and "--overwrite" in message and "--resume" in message
    assert (out / "alpha" / "t.png").read_bytes() == b"a file of the user's"
    assert cli.main(_args(weights, reference, out, target, extra=("--overwrite",))) == 0
    assert png_is_complete(out / "alpha" / "t.png", (70, 70), "L")


def test_save_context_never_replaces_an_input_or_an_existing_file(weights, reference, tmp_path, capsys):
    sd, decoder = weights
    target = _image(tmp_path / "in" / "t.png", 70, 70, 1)
    decoder_copy = tmp_path / "dec.safetensors"
    decoder_copy.write_bytes(decoder.read_bytes())
    link = tmp_path / "link.safetensors"
    link.symlink_to(decoder_copy)
    own = (sd, decoder_copy)
    for where in (decoder_copy, link):
        for extra in ((), ("--overwrite",)):
            message = cli_error_line(capsys, _args(own, reference, tmp_path / "o", target,
                                           extra=("--save-context", str(where), *extra)))  # fmt: skip
            assert "is an input of this run" in message
    assert decoder_copy.read_bytes() == decoder.read_bytes() and link.is_symlink()
    existing = tmp_path / "old.safetensors"
    existing.write_bytes(b"keep me")
    assert "already exists" in cli_error_line(capsys, _args(own, reference, tmp_path / "o", target,
                                                    extra=("--save-context", str(existing))))  # fmt: skip
    assert existing.read_bytes() == b"keep me" and not (tmp_path / "o").exists()
    assert cli.main(_args(own, reference, tmp_path / "o", target, extra=("--save-context", str(existing),
                                                                        "--overwrite"))) == 0  # fmt: skip
    assert existing.read_bytes()[:8] != b"keep me"[:8] and existing.stat().st_size > 100
    assert not [p for p in tmp_path.iterdir() if is_partial_name(p.name)]


def test_a_second_run_on_the_same_output_folder_is_refused(weights, reference, tmp_path, capsys):
    target = _image(tmp_path / "in" / "t.png", 70, 70, 1)
    out = tmp_path / "out"
    out.mkdir()
    with folder_lock(out):
        assert "another run is writing into" in cli_error_line(capsys, _args(weights, reference, out, target))
    assert not (out / "alpha" / "t.png").exists()


# --------------------------------------------------------------------------- convert


def _convert(capsys, *args: str) -> int | str:
    capsys.readouterr()
    try:
        return cli.main(["convert", *args])
    except SystemExit as stopped:
        assert stopped.code == 2
        return only_error_line(capsys.readouterr().err)


def test_convert_never_deletes_or_replaces_what_it_did_not_create(weights, tmp_path, capsys):
    _, decoder = weights
    source = tmp_path / "dec.safetensors"
    source.write_bytes(decoder.read_bytes())
    original = source.read_bytes()
    assert "is an input of this run" in _convert(capsys, str(source), str(source))
    assert "is an input of this run" in _convert(capsys, str(source), str(source), "--overwrite")
    assert source.read_bytes() == original
    existing = tmp_path / "existing.safetensors"
    existing.write_bytes(b"precious")
    assert "already exists" in _convert(capsys, str(source), str(existing))
    bad = tmp_path / "bad.pth"
    torch.save({"not": torch.zeros(2)}, bad)
    message = _convert(capsys, str(bad), str(existing), "--overwrite")
    assert "bad.pth" in message
    assert existing.read_bytes() == b"precious"
    first = load_decoder(source).state_dict()
    for target, extra in ((existing, ("--overwrite",)), (tmp_path / "new.safetensors", ())):
        assert _convert(capsys, str(source), str(target), *extra) == 0
        reloaded = load_decoder(target).state_dict()
        assert reloaded.keys() == first.keys() and all(torch.equal(reloaded[k], first[k]) for k in first)
    assert not [p for p in tmp_path.iterdir() if is_partial_name(p.name)]


def test_failed_conversion_check_removes_only_its_partial_file(weights, tmp_path, monkeypatch):
    from icm_core.weights import decoder as decoder_module

    _, decoder = weights
    existing = tmp_path / "existing.safetensors"
    existing.write_bytes(b"precious")
    monkeypatch.setattr(decoder_module, "_max_output_difference", lambda a, b: 0.5)
    with pytest.raises(RuntimeError, match="was not written"):
        decoder_module.convert_decoder(decoder, existing, overwrite=True)
    assert existing.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.safetensors"]


# --------------------------------------------------------------------------- crashes and resume


def test_png_completeness_check(tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    assert png_is_complete(path, (40, 50), "L")
    assert not png_is_complete(path, (50, 40), "L")
    assert not png_is_complete(path, (40, 50), "RGB")
    for cut in sorted({0, 1, 8, 33, len(data) // 2, len(data) - 13, len(data) - 1}):
        path.write_bytes(data[:cut])
        assert not png_is_complete(path, (40, 50), "L"), cut
    path.write_bytes(data[:-12] + b"garbage" + data[-12:])  # IEND present, damaged data before it
    assert not png_is_complete(path, (40, 50), "L")


def test_resume_redoes_empty_truncated_and_wrong_outputs_and_removes_partials(weights, reference, tmp_path, capsys):
    frames = tmp_path / "frames"
    paths = [_image(frames / f"{i}.png", 70, 64 + i, i) for i in range(4)]
    out = tmp_path / "out"
    args = _args(weights, reference, out, frames, extra=("--save", "alpha,rgba"))
    assert cli.main(args) == 0
    clean = _tree(out)
    (out / "alpha" / "0.png").write_bytes(b"")  # empty
    (out / "rgba" / "1.png").write_bytes(clean["rgba/1.png"][:-20])  # truncated
    Image.fromarray(np.zeros((70, 10), np.uint8)).save(out / "alpha" / "2.png")  # another size
    stale = [partial_path(out / "alpha" / "3.png"), partial_path(out / "rgba" / "0.png")]
    stale[0].write_bytes(b"half a png")
    (out / "alpha" / ".user-notes.txt").write_text("not ours: kept")
    capsys.readouterr()
    assert cli.main(args + ["--resume"]) == 0
    captured = capsys.readouterr()
    assert "wrote 3, skipped 1" in captured.out and "removed 2 partial file(s)" in captured.err
    assert not any(p.exists() for p in stale)
    assert (out / "alpha" / ".user-notes.txt").read_text() == "not ours: kept"
    (out / "alpha" / ".user-notes.txt").unlink()
    assert _tree(out) == clean
    del paths


def _spawn(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "icm_core", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def test_kill_9_then_resume_gives_the_same_files_as_an_uninterrupted_run(weights, reference, tmp_path):
    frames = tmp_path / "frames"
    for i in range(24):
        _image(frames / f"f{i:02d}.png", 64, 64 + i, i)
    clean_out, out = tmp_path / "clean", tmp_path / "out"
    assert cli.main(_args(weights, reference, clean_out, frames, extra=("--save", "alpha,composite"))) == 0
    args = _args(weights, reference, out, frames, extra=("--save", "alpha,composite"))
    process = _spawn(args)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list((out / "composite").glob("*.png"))) < 3:
        assert process.poll() is None, process.communicate()[1].decode()[-2000:]
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    done = len(list((out / "composite").glob("*.png")))
    assert 3 <= done < 24, "the run was not killed in the middle"
    partial_path(out / "alpha" / "f23.png").write_bytes(b"\x89PNG")  # as if killed mid-write
    (out / "composite" / "f00.png").write_bytes(b"")  # as if a disk lost the data
    resumed = _spawn(args + ["--resume"])
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr.decode()[-2000:]
    assert "skipped" in stdout.decode()
    assert _tree(out) == _tree(clean_out)
