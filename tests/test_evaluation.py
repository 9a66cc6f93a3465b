"""Dataset evaluation on a synthetic ICM-57-layout folder with the tiny engine: rows, references, tables, protocol."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from icm_core.commands.cli import main
from icm_core.evaluation import (
    DatasetError,
    EvaluationProtocol,
    center_square,
    evaluate_dataset,
    load_dataset,
    mean_errors,
)
from icm_core.io.datasets import read_trimap
from icm_core.image_io import read_image, read_mask
from icm_core.metrics import MattingErrors, compute_all, unknown_region
from icm_core.tiny import build_tiny_engine

HEIGHT, WIDTH = 96, 144  # non-square: the official protocol crops to 96 x 96
TRIMAP_GROUP, PLAIN_GROUP = "animal-None-half", "plant-leaf-full"
GROUPS = {TRIMAP_GROUP: ["a1", "a2", "a3"], PLAIN_GROUP: ["p1", "p2", "p3"]}
METRICS = ("sad", "mse", "grad", "conn")


def write_dataset(root: Path, trimap_groups: tuple[str, ...] = (TRIMAP_GROUP,), seed: int = 0) -> Path:
    """Soft elliptical objects on noisy backgrounds; official-style JSON ``{stem: {class, sub_class, HalfOrFull}}``."""
    rng = np.random.default_rng(seed)
    meta = {}
    for folder in ("image", "alpha", "trimap"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for index, (group, names) in enumerate(GROUPS.items()):
        cls, sub, half = group.split("-")
        for name in names:
            yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
            cy, cx = HEIGHT / 2 + rng.uniform(-6, 6), WIDTH / 2 + rng.uniform(-6, 6)
            radius = np.sqrt(((yy - cy) / (HEIGHT * 0.32)) ** 2 + ((xx - cx) / (WIDTH * 0.3)) ** 2)
            alpha = np.clip((1.15 - radius) / 0.3, 0, 1)
            foreground = np.array([0.9, 0.3 + 0.3 * index, 0.2])
            image = alpha[..., None] * foreground + (1 - alpha[..., None]) * rng.uniform(0, 0.4, (HEIGHT, WIDTH, 3))
            alpha8 = (alpha * 255).round().astype(np.uint8)
            Image.fromarray((image * 255).round().astype(np.uint8)).save(root / "image" / f"{name}.png")
            Image.fromarray(alpha8).save(root / "alpha" / f"{name}.png")
            if group in trimap_groups:
                trimap = np.where(alpha8 == 0, 0, np.where(alpha8 == 255, 255, 128)).astype(np.uint8)
                Image.fromarray(trimap).save(root / "trimap" / f"{name}.png")
            meta[name] = {"dataset_name": "ICM57", "class": cls, "sub_class": None if sub == "None" else sub,
                          "HalfOrFull": half, "TransparentOrOpaque": "SO"}  # fmt: skip
    (root.parent / f"{root.name}.json").write_text(json.dumps(meta))  # next to the root, as datasets/ICM57.json
    return root


@pytest.fixture(scope="module")
def engine():
    return build_tiny_engine(seed=0, image_size=128, ensemble_size=2)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "ICM57")


@pytest.fixture(scope="module")
def official(engine, dataset, tmp_path_factory):
    return evaluate_dataset(engine, dataset, tmp_path_factory.mktemp("official"), EvaluationProtocol())


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as stream:
        return list(csv.DictReader(stream))


def _errors(row: dict[str, str]) -> MattingErrors:
    return MattingErrors(**{name: float(row[name]) for name in METRICS})


def _recompute(engine, root: Path, references: list[str], target: str, crop: bool):
    """The engine's alpha for one target, matted by hand, and the (cropped) ground truth."""
    prepare = center_square if crop else (lambda x: x)
    images = [prepare(read_image(root / "image" / f"{n}.png")) for n in references]
    masks = [prepare(read_mask(root / "alpha" / f"{n}.png")) for n in references]
    context = engine.encode_reference(images, masks, seed=0)
    alpha = engine.matte(context, prepare(read_image(root / "image" / f"{target}.png")), seed=0)[0]
    return alpha, prepare(read_mask(root / "alpha" / f"{target}.png"))


def _assert_errors_close(got: MattingErrors, expected: MattingErrors) -> None:
    for name in METRICS:
        assert getattr(got, name) == pytest.approx(getattr(expected, name), rel=1e-6, abs=1e-9), name


def test_groups_from_official_json(dataset):
    loaded = load_dataset(dataset)
    assert loaded.groups_file.name == "ICM57.json"
    assert [g.name for g in loaded.groups] == [TRIMAP_GROUP, PLAIN_GROUP]
    assert [i.name for i in loaded.group(TRIMAP_GROUP).items] == ["a1", "a2", "a3"]
    assert all(i.trimap is not None for i in loaded.group(TRIMAP_GROUP).items)
    assert all(i.trimap is None for i in loaded.group(PLAIN_GROUP).items)


def test_official_protocol_rows_references_and_sizes(engine, dataset, official):
    rows = _rows(official.files["csv"])
    assert [(r["group"], r["image"], r["references"]) for r in rows] == [
        (TRIMAP_GROUP, "a2", "a1"), (TRIMAP_GROUP, "a3", "a1"), (PLAIN_GROUP, "p2", "p1"), (PLAIN_GROUP, "p3", "p1"),
    ]  # fmt: skip
    side = min(HEIGHT, WIDTH)
    assert all((int(r["metric_height"]), int(r["metric_width"])) == (side, side) for r in rows)
    assert all(float(r["seconds"]) > 0 for r in rows)
    alpha, truth = _recompute(engine, dataset, ["a1"], "a3", crop=True)
    assert tuple(alpha.shape) == (side, side)
    _assert_errors_close(_errors(rows[1]), compute_all(alpha, truth))


def test_tables_match_the_csv(official):
    rows = _rows(official.files["csv"])
    per_image = mean_errors([_errors(r) for r in rows])
    group_means = [mean_errors([_errors(r) for r in rows if r["group"] == g]) for g in (TRIMAP_GROUP, PLAIN_GROUP)]
    report = json.loads(official.files["json"].read_text())
    assert [g["name"] for g in report["groups"]] == [TRIMAP_GROUP, PLAIN_GROUP]
    assert [g["images"] for g in report["groups"]] == [2, 2]
    for name in METRICS:
        assert report["overall_mean_over_images"][name] == pytest.approx(getattr(per_image, name), rel=1e-9)
        assert report["overall_mean_over_groups"][name] == pytest.approx(
            np.mean([getattr(m, name) for m in group_means]), rel=1e-9
        )
        for group, mean in zip(report["groups"], group_means):
            assert group[name] == pytest.approx(getattr(mean, name), rel=1e-9)
    markdown = official.files["markdown"].read_text()
    for label in (TRIMAP_GROUP, PLAIN_GROUP, "overall (mean over images)", "overall (mean over groups)"):
        assert label in markdown
    assert f"{per_image.sad:.4f}" in markdown.split("overall (mean over images)")[1].splitlines()[0]
    assert "centre-cropped" in markdown and "first image of each group by name" in markdown


def test_original_protocol_metrics_at_original_size(engine, dataset, tmp_path):
    summary = evaluate_dataset(engine, dataset, tmp_path, EvaluationProtocol(resolution="original", batch_size=2))
    rows = _rows(summary.files["csv"])
    assert all((int(r["metric_height"]), int(r["metric_width"])) == (HEIGHT, WIDTH) for r in rows)
    alpha, truth = _recompute(engine, dataset, ["p1"], "p2", crop=False)
    assert tuple(alpha.shape) == (HEIGHT, WIDTH)
    expected = compute_all(alpha, truth)
    row = next(r for r in rows if r["image"] == "p2")
    for name in METRICS:  # batch of 2 vs 1: same math, float32 reduction order may differ
        assert float(row[name]) == pytest.approx(getattr(expected, name), rel=1e-3, abs=1e-6)


def test_unknown_region_without_trimaps_is_a_clear_error(engine, dataset, tmp_path):
    with pytest.raises(DatasetError, match=r"needs a trimap.*plant-leaf-full/p2.*region='whole'"):
        evaluate_dataset(engine, dataset, tmp_path, EvaluationProtocol(region="unknown"))
    assert not any(tmp_path.iterdir())  # failed before writing anything


def test_unknown_region_and_several_references(engine, dataset, tmp_path):
    groups_file = tmp_path / "only_trimaps.json"
    groups_file.write_text(json.dumps({TRIMAP_GROUP: ["a1.png", "a2", "a3"]}))  # plain structure, suffix dropped
    references = tmp_path / "references.json"
    references.write_text(json.dumps({TRIMAP_GROUP: ["a1", "a2"]}))
    protocol = EvaluationProtocol(
        region="unknown", groups_file=groups_file, references_file=references, save_alphas=True
    )
    summary = evaluate_dataset(engine, dataset, tmp_path / "out", protocol)
    saved = tmp_path / "out" / "alphas" / TRIMAP_GROUP / "a3.png"
    assert Image.open(saved).size == (min(HEIGHT, WIDTH),) * 2
    rows = _rows(summary.files["csv"])
    assert [(r["group"], r["image"], r["references"]) for r in rows] == [(TRIMAP_GROUP, "a3", "a1;a2")]
    alpha, truth = _recompute(engine, dataset, ["a1", "a2"], "a3", crop=True)
    region = unknown_region(np.ascontiguousarray(center_square(read_trimap(dataset / "trimap" / "a3.png"))))
    assert 0 < region.sum() < region.size
    expected = compute_all(alpha, truth, region)
    _assert_errors_close(_errors(rows[0]), expected)
    assert expected.sad < compute_all(alpha, truth).sad  # the unknown band is a strict subset of the image


def test_listed_image_without_files_is_an_error(dataset, tmp_path):
    groups_file = tmp_path / "groups.json"
    groups_file.write_text(json.dumps({"g": ["a1", "missing"]}))
    with pytest.raises(DatasetError, match="missing"):
        load_dataset(dataset, groups_file)


def test_cli_evaluate(dataset, tmp_path, capsys):
    groups_file = tmp_path / "one_group.json"
    groups_file.write_text(json.dumps({PLAIN_GROUP: ["p1", "p2", "p3"]}))
    args = ["evaluate", str(dataset), "--out", str(tmp_path), "--tiny", "--resolution", "original", "--batch-size", "2"]
    assert main([*args, "--groups-file", str(groups_file)]) == 0
    assert "mean over images" in capsys.readouterr().out
    assert {p.name for p in tmp_path.iterdir()} >= {"per_image.csv", "summary.md", "summary.json"}
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    assert re.search(r"--tiny\s+FOR\s+TESTING\s+ONLY", capsys.readouterr().out)


def test_center_square_offsets():
    tensor = torch.arange(2 * 5).reshape(2, 5)
    assert center_square(tensor).tolist() == [[1, 2], [6, 7]]
