"""``evaluate`` survives bad items: they are listed with the reason, the other rows are kept, the run exits 1."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from icm_core.commands.cli import main
from icm_core.evaluation import EvaluationProtocol, evaluate_dataset
from icm_core.tiny import build_tiny_engine

GOOD = ("a1", "a2", "a3")


def _save(root: Path, name: str, height: int, width: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(root / "image" / f"{name}.png")
    alpha = np.zeros((height, width), np.uint8)
    alpha[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 255
    Image.fromarray(alpha).save(root / "alpha" / f"{name}.png")


@pytest.fixture()
def dataset(tmp_path) -> Path:
    """Group "g": the reference a1, good targets a2/a3 and four bad ones; group "h": an unreadable reference."""
    root = tmp_path / "data"
    for folder in ("image", "alpha"):
        (root / folder).mkdir(parents=True)
    for index, name in enumerate(GOOD + ("b_truncated", "b_garbage", "b_small", "b_size", "h1", "h2")):
        _save(root, name, 96 if name != "b_small" else 40, 128, index)
    data = (root / "image" / "b_truncated.png").read_bytes()
    (root / "image" / "b_truncated.png").write_bytes(data[: len(data) // 3])
    (root / "image" / "b_garbage.png").write_bytes(b"definitely not an image")
    Image.fromarray(np.zeros((50, 50), np.uint8)).save(root / "alpha" / "b_size.png")
    (root / "image" / "h1.png").write_bytes(b"")
    groups = {"g": [*GOOD, "b_truncated", "b_garbage", "b_small", "b_size"], "h": ["h1", "h2"]}
    (root / "groups.json").write_text(json.dumps(groups))
    return root


def test_bad_items_are_listed_and_skipped(dataset, tmp_path, capsys):
    out = tmp_path / "report"
    code = main(["evaluate", str(dataset), "--out", str(out), "--tiny", "--resolution", "original"])
    assert code == 1
    captured = capsys.readouterr()
    assert "mean over images" in captured.out and "Traceback" not in captured.err
    with (out / "per_image.csv").open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["image"] for row in rows] == ["a2", "a3"]
    summary = json.loads((out / "summary.json").read_text())
    failed = {entry["image"]: entry["reason"] for entry in summary["failed"]}
    assert set(failed) == {"b_truncated", "b_garbage", "b_small", "b_size", "h2"}
    assert "truncated" in failed["b_truncated"] or "broken" in failed["b_truncated"]
    assert "cannot identify image file" in failed["b_garbage"]
    assert ">= 64" in failed["b_small"]
    assert "expected the same size" in failed["b_size"]
    assert failed["h2"].startswith("reference h1 unusable")
    assert summary["overall_mean_over_images"]["images"] == 2 and [g["name"] for g in summary["groups"]] == ["g"]
    for name in failed:
        assert f"g/{name}" in captured.err or f"h/{name}" in captured.err
    markdown = (out / "summary.md").read_text()
    assert "## Not evaluated" in markdown and "b_garbage" in markdown


def test_rows_are_on_disk_as_they_are_computed(dataset, tmp_path):
    """A crash after the first target keeps its row (written and flushed before the next target is matted)."""
    engine = build_tiny_engine(seed=0, image_size=128, ensemble_size=2)
    out = tmp_path / "report"
    original = engine.matte
    calls = []

    def crash_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            rows = (out / "per_image.csv").read_text().splitlines()
            assert len(rows) == 2 and rows[1].startswith("g,a2,a1,")
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    engine.matte = crash_on_second
    with pytest.raises(KeyboardInterrupt):
        evaluate_dataset(engine, dataset, out, EvaluationProtocol())
    rows = (out / "per_image.csv").read_text().splitlines()
    assert rows[0].startswith("group,image,references,sad") and len(rows) == 2


def test_nothing_evaluable_still_writes_the_summary(dataset, tmp_path):
    engine = build_tiny_engine(seed=0, image_size=128, ensemble_size=2)
    groups = tmp_path / "bad_only.json"
    groups.write_text(json.dumps({"g": ["a1", "b_garbage", "b_small"]}))
    summary = evaluate_dataset(engine, dataset, tmp_path / "r", EvaluationProtocol(groups_file=groups))
    assert summary.overall_over_images is None and len(summary.failures) == 2
    saved = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert saved["overall_mean_over_images"] is None and len(saved["failed"]) == 2
    assert (tmp_path / "r" / "per_image.csv").read_text().count("\n") == 1
