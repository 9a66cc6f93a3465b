"""Dataset-scale matting on Ray Data: same names and bits as the local ``matte``, exactly once, resumable.

The cluster is a local one (2 CPUs, no dashboard, loopback) shared by the whole test session; the engine is the tiny
one written by tests/tiny_files.py.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from icm_core.commands import cli
from icm_core.commands.checks import CommandError
from icm_core.io.file_safety import is_partial_name, partial_path
from icm_core.commands.matte_job import JobSettings, OutputCollisionError, collect_targets
from icm_core.scale.inputs import collect_sources

from tests.tiny_files import write_tiny_weights

REPO = Path(__file__).resolve().parents[1]
RAY_MISSING = "ray[data] is not installed (pip install -r requirements-scale.txt)"


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the session: 2 CPUs, no dashboard, node address 127.0.0.1; shut down at the end."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        if (os.environ.get("CI") or "").strip().lower() not in ("", "0", "false"):
            pytest.fail(RAY_MISSING + "; CI installs it through requirements-dev.txt")
        pytest.skip(RAY_MISSING)
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(
        num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", configure_logging=False,
        log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": path}},
    )  # fmt: skip
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    started = _descendants(os.getpid())  # GCS, raylet and the workers: all started by this process
    ray.shutdown()
    assert not ray.is_initialized()
    slow = _wait_gone(started, seconds=120.0)  # a loaded machine can take a while
    for pid in slow:  # only processes this test session started, by id
        os.kill(pid, signal.SIGKILL)
    left = _wait_gone(set(slow), seconds=10.0)
    assert not left, f"Ray left processes running after shutdown, even after SIGKILL: {left}"


def _parents() -> dict[int, int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def _descendants(root: int) -> set[int]:
    """Every process below ``root`` (Linux /proc; empty elsewhere)."""
    if not Path("/proc/self/stat").exists():
        return set()
    parents, found, frontier = _parents(), set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited (only its parent has not collected it yet)


def _wait_gone(pids: set[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = sorted(pid for pid in pids if _alive(pid))
        if not left:
            return []
        time.sleep(0.5)
    return sorted(pid for pid in pids if _alive(pid))


@pytest.fixture()
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # the actors run one torch thread each: same reductions, same bits
    yield
    torch.set_num_threads(previous)


def _sharp_decoder(sd: Path, decoder_file: Path, image: torch.Tensor) -> Path:
    """The tiny decoder with its logits centred and scaled x300: alphas spread over [0, 1], so a float difference of
    one rounding step in the features changes some 8-bit pixels (the untrained one is nearly constant)."""
    from icm_core.config import ExtractionConfig
    from icm_core.loader import load_engine
    from icm_core.weights.decoder import load_decoder, save_decoder

    decoder = load_decoder(decoder_file)
    engine = load_engine(sd, decoder, extraction=ExtractionConfig(200, 2, decoder.config.image_size))
    mask = torch.zeros(image.shape[1:])
    mask[16:-16, 16:-16] = 1.0
    mean = float(engine.matte(engine.encode_reference(image, mask), image)[0].mean())
    with torch.no_grad():
        head = decoder.matting_head.out
        head.bias.sub_(math.log(mean / (1.0 - mean))).mul_(300.0)
        head.weight.mul_(300.0)
    save_decoder(decoder, decoder_file.with_name("sharp-decoder.safetensors"))
    return decoder_file.with_name("sharp-decoder.safetensors")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("scale")
    sd, decoder = write_tiny_weights(root / "weights")
    data = root / "data"
    for i, (height, width) in enumerate([(400, 480), (430, 420), (390, 500), (420, 420), (450, 410)]):
        folder = data / "sub" if i % 2 else data
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.random.default_rng(i).integers(0, 256, (height // 10, width // 10, 3), dtype=np.uint8)
        image = Image.fromarray(pixels).resize((width, height), Image.BILINEAR)  # smooth: mattes with real edges
        image.save(folder / (f"im{i}.png" if i == 3 else f"im{i}.jpg"))
    (data / "zz-broken.png").write_bytes(b"not a png")  # last: the readable micro-batches match the local run's
    reference = root / "ref"
    reference.mkdir()
    Image.fromarray(np.random.default_rng(9).integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(reference / "r.png")
    mask = np.zeros((90, 120), np.uint8)
    mask[15:75, 25:95] = 255
    Image.fromarray(mask).save(reference / "m.png")
    sharp = _sharp_decoder(sd, decoder, torch.rand(3, 128, 128, generator=torch.Generator().manual_seed(0)))
    return {"sd": sd, "decoder": sharp, "data": data, "ref": reference / "r.png", "mask": reference / "m.png"}


def _common(files, out: Path, *extra: str) -> list[str]:
    return ["--sd", str(files["sd"]), "--decoder", str(files["decoder"]), "--reference", str(files["ref"]),
            "--reference-mask", str(files["mask"]), "--out", str(out), "--ensemble", "2", "--batch-size", "2",
            "--seed", "5", "--save", "alpha,rgba", *extra]  # fmt: skip


def _tree(root: Path, skip: tuple[str, ...] = ("manifest.parquet",)) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
        and p.name not in skip
    }  # fmt: skip


def _manifest(out: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(out / "manifest.parquet").to_pylist()


def test_missing_ray_is_one_line_error_and_core_never_imports_ray(tmp_path, files):
    script = (
        "import sys\n"
        "import icm_core.commands.cli, icm_core.pipeline, icm_core.scale.command\n"
        "assert 'ray' not in sys.modules, 'importing the core or the command imported ray'\n"
        "sys.modules['ray'] = None  # ray made unimportable\n"
        f"sys.exit(icm_core.commands.cli.main(['matte-dataset', {str(files['data'])!r}, *{_common(files, tmp_path / 'o')!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: matte-dataset needs Ray Data, which is not installed")
    assert 'install it with: pip install "ray[data]>=2.60,<3"' in lines[0]
    assert not (tmp_path / "o").exists()


def test_sources_are_named_like_the_local_command(tmp_path, files):
    data = files["data"]
    local = {t.path.as_posix(): t.relative.as_posix() for t in collect_targets([data])}
    assert {s.location: s.relative.as_posix() for s in collect_sources([str(data)])} == local
    as_uri = {s.location.removeprefix("file://"): s.relative.as_posix() for s in collect_sources([data.as_uri()])}
    assert as_uri == local
    globbed = collect_sources([f"{data}/**/*.jpg"])
    assert {s.relative.as_posix() for s in globbed} == {"im0.jpg.png", "sub/im1.jpg.png", "im2.jpg.png", "im4.jpg.png"}
    listing = data.parent / "list.txt"
    listing.write_text(f"# a list\n{data / 'im0.jpg'}\n\ndata/sub/im3.png\n")
    named = [(Path(s.location).name, s.relative.as_posix()) for s in collect_sources([str(listing)])]
    assert named == [("im0.jpg", "im0.jpg.png"), ("im3.png", "data/sub/im3.png")]
    (tmp_path / "up.txt").write_text(f"{os.path.relpath(data / 'im0.jpg', tmp_path)}\n")
    with pytest.raises(CommandError, match=r"up.txt line 1: \.\./.*im0.jpg does not lie below the list file's folder"):
        collect_sources([str(tmp_path / "up.txt")])
    with pytest.raises(OutputCollisionError, match="1 output name collision"):
        collect_sources([str(data / "im0.jpg"), f"{data}/im0.*"])


def test_bit_identical_to_local_matte_with_manifest(tmp_path, files, ray_cluster, one_thread, capsys):
    assert cli.main(["matte", str(files["data"]), *_common(files, tmp_path / "local")]) == 1  # broken.png fails
    assert cli.main(["matte-dataset", str(files["data"]), *_common(files, tmp_path / "ray")]) == 1
    local, scaled = _tree(tmp_path / "local"), _tree(tmp_path / "ray")
    assert len(local) == 10 and local.keys() == scaled.keys()
    assert [name for name in local if local[name] != scaled[name]] == []  # byte for byte
    assert "failed: " + str(files["data"] / "zz-broken.png") in capsys.readouterr().err
    rows = _manifest(tmp_path / "ray")
    assert [row["index"] for row in rows] == list(range(6))
    assert {row["relative"]: row["status"] for row in rows} == {
        "zz-broken.png": "failed", "im0.jpg.png": "written", "im2.jpg.png": "written", "im4.jpg.png": "written",
        "sub/im1.jpg.png": "written", "sub/im3.png": "written",
    }  # fmt: skip
    written = [row for row in rows if row["status"] == "written"]
    for row in written:
        assert row["outputs"] == [str(tmp_path / "ray" / kind / row["relative"]) for kind in ("alpha", "rgba")]
        assert row["error"] is None and row["seconds"] > 0 and row["run"]
        assert row["seconds"] == pytest.approx(row["decode_seconds"] + row["matte_seconds"] + row["write_seconds"])
    [broken] = [row for row in rows if row["status"] == "failed"]
    assert broken["outputs"] == [] and "cannot identify image file" in broken["error"]


def test_resume_redoes_only_missing_or_damaged_outputs(tmp_path, files, ray_cluster, one_thread, capsys):
    out = tmp_path / "out"
    args = ["matte-dataset", str(files["data"]), *_common(files, out)]
    cli.main(args)
    before = _tree(out)
    first = {row["input"]: row for row in _manifest(out)}
    (out / "alpha" / "im2.jpg.png").unlink()
    (out / "rgba" / "sub" / "im1.jpg.png").write_bytes(before["rgba/sub/im1.jpg.png"][:100])  # truncated
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli.main(args)  # outputs exist: refused, nothing touched
    assert capsys.readouterr().err.startswith("error: 10 output file(s) already exist")
    assert cli.main([*args, "--resume"]) == 1
    assert _tree(out) == before
    rows = {row["input"]: row for row in _manifest(out)}
    assert rows.keys() == first.keys()
    redone = sorted(Path(k).name for k, row in rows.items() if row["run"] != first[k]["run"] and row["status"] == "written")
    assert redone == ["im1.jpg", "im2.jpg"]
    assert "wrote 2, skipped 3 (already done), failed 1" in capsys.readouterr().out


class Kills:
    """Inside the actor, after an input's outputs are written: the first time ever, leave a partial file and
    SIGKILL the actor process (its pid, from inside, goes to ``marker``); and every time input ``poison`` is done,
    SIGKILL it again (a micro-batch that kills its actor on every attempt)."""

    def __init__(self, marker: Path, partial_folder: Path, poison: int, log: Path) -> None:
        self.marker, self.partial_folder, self.poison, self.log = marker, partial_folder, poison, log

    def __call__(self, index: int) -> None:
        if index == self.poison:
            with open(self.log, "a") as handle:
                handle.write(f"{os.getpid()}\n")
            os.kill(os.getpid(), signal.SIGKILL)
        try:
            handle = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return  # killed once already: this is a restarted actor
        os.write(handle, str(os.getpid()).encode())
        os.close(handle)
        partial_path(self.partial_folder / "im0.jpg.png")  # as if killed in the middle of a write
        os.kill(os.getpid(), signal.SIGKILL)


def test_actor_killed_mid_run_every_input_exactly_once(tmp_path, files, ray_cluster, one_thread):
    from icm_core.context_io import load_context
    from icm_core.scale.dataset import EngineSpec, Resources
    from icm_core.scale.job import LOST, run_dataset

    reference_out, context_file = tmp_path / "local", tmp_path / "context.safetensors"
    assert cli.main(["matte", str(files["data"]), *_common(files, reference_out), "--save-context", str(context_file)]) == 1
    sources = collect_sources([str(files["data"])])  # im0, im2 | im4, sub/im1 | sub/im3, zz-broken (micro-batches)
    out, marker, log = tmp_path / "killed", tmp_path / "killed.pid", tmp_path / "poison.txt"
    report = run_dataset(
        sources, load_context(context_file), EngineSpec(str(files["sd"]), str(files["decoder"]), ensemble=2), out,
        JobSettings(kinds=("alpha", "rgba"), seed=5, batch_size=2), Resources(actors=1, retries=1),
        after_write=Kills(marker, out / "alpha", poison=2, log=log),
    )  # fmt: skip
    killed = int(marker.read_text())
    assert str(killed) not in {row["worker"].split(":")[1] for row in report.rows if row["worker"]}
    assert len(log.read_text().split()) == 2  # the poisoned micro-batch: first attempt + one retry, then given up
    assert [row["index"] for row in report.rows] == list(range(6)) and len(_manifest(out)) == 6
    statuses = {row["relative"]: (row["status"], row["error"]) for row in report.rows}
    assert statuses["sub/im1.jpg.png"] == ("failed", LOST)  # its actor died on every attempt before its write
    assert statuses["zz-broken.png"][0] == "failed" and "cannot identify" in statuses["zz-broken.png"][1]
    written = [name for name, (status, _) in statuses.items() if status == "written"]
    assert sorted(written) == ["im0.jpg.png", "im2.jpg.png", "im4.jpg.png", "sub/im3.png"]  # im4: complete outputs
    assert report.removed_partials == 1 and not [p for p in out.rglob("*") if is_partial_name(p.name)]
    expected = {name: data for name, data in _tree(reference_out).items() if not name.endswith("sub/im1.jpg.png")}
    assert _tree(out) == expected  # every other output byte for byte (im4's written before each kill)


def test_ray_is_an_extra_with_one_version_range_everywhere():
    import tomllib

    from icm_core.scale import INSTALL_HINT

    [pin] = [line for line in (REPO / "requirements-scale.txt").read_text().splitlines() if line and line[0] != "#"]
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["scale"] == [pin] == ["ray[data]>=2.60,<3"]
    assert f'pip install "{pin}"' in INSTALL_HINT
    dev = [line.split("#")[0].strip() for line in (REPO / "requirements-dev.txt").read_text().splitlines()]
    assert "-r requirements-scale.txt" in dev  # CI and the README's test command install ray
    assert "ray" not in (REPO / "requirements.txt").read_text().lower()  # ComfyUI users never install it



def test_save_context_never_replaces_the_weights_even_with_overwrite(files, tmp_path, capsys):
    """Checked before Ray starts: --save-context pointed at the decoder is refused, --overwrite or not."""
    for target in (files["decoder"],):
        before = target.read_bytes()
        for extra in ((), ("--overwrite",)):
            with pytest.raises(SystemExit) as stop:
                cli.main(["matte-dataset", str(files["data"]),
                          *_common(files, tmp_path / "out", "--save-context", str(target), *extra)])  # fmt: skip
            message = capsys.readouterr().err.strip()
            assert stop.value.code == 2 and message.startswith("error: ") and "is an input of this run" in message
        assert target.read_bytes() == before
    assert not (tmp_path / "out").exists()
