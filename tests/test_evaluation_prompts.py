"""Evaluation under the product's prompt and output options: simulated clicks / scribbles, first-N references,
fit and refinement, all written into the protocol; the tiny engine at 64 px (4 x 4 token grid)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from icm_core.commands.cli import main
from icm_core.evaluation import DatasetError, EvaluationProtocol, center_square, evaluate_dataset
from icm_core.evaluation.simulated_prompts import (
    NoObjectError,
    depth_map,
    scribble_width,
    simulated_clicks,
    simulated_scribble,
)
from icm_core.image_io import read_image, read_mask
from icm_core.pipeline import RefinementConfig
from icm_core.prompts import DEFAULT_TOP_M, ExpansionConfig, Point
from icm_core.tiny import build_tiny_engine

HEIGHT, WIDTH = 80, 112  # wide: the official crop and the crop fit keep the central 80 x 80
GROUPS = {"g": ["g1", "g2", "g3"], "h": ["h1", "h2"]}


def write_dataset(root: Path) -> Path:
    """Rectangles (rows 8..71, columns 8..103, shifted a little per image) on noisy backgrounds; big enough to
    cover whole 16 x 16 px token cells at 64 px under every fit."""
    rng = np.random.default_rng(1)
    for folder in ("image", "alpha"):
        (root / folder).mkdir(parents=True)
    for index, name in enumerate(name for names in GROUPS.values() for name in names):
        alpha = np.zeros((HEIGHT, WIDTH), np.float32)
        shift = index % 3
        alpha[8 + shift : 72 - shift, 8 + shift : 104 - shift] = 1.0
        alpha[7 + shift, 8 + shift : 104 - shift] = 0.5  # a soft edge row (not part of the object: not > 0.5)
        colour = np.array([0.9, 0.2 + 0.2 * index % 0.6, 0.3])
        image = alpha[..., None] * colour + (1 - alpha[..., None]) * rng.uniform(0, 0.5, (HEIGHT, WIDTH, 3))
        Image.fromarray((image * 255).round().astype(np.uint8)).save(root / "image" / f"{name}.png")
        Image.fromarray((alpha * 255).round().astype(np.uint8)).save(root / "alpha" / f"{name}.png")
    (root / "groups.json").write_text(json.dumps(GROUPS))
    return root


@pytest.fixture(scope="module")
def engine():
    return build_tiny_engine(seed=0, image_size=64, ensemble_size=1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "set")


@pytest.fixture(scope="module")
def one_pair(dataset) -> Path:
    """Groups file with one group: reference g1, target g2."""
    path = dataset.parent / "one_pair.json"
    path.write_text(json.dumps({"g": ["g1", "g2"]}))
    return path


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as stream:
        return list(csv.DictReader(stream))


def _load(root: Path, name: str, crop: bool) -> tuple[torch.Tensor, torch.Tensor]:
    prepare = center_square if crop else (lambda x: x)
    return prepare(read_image(root / "image" / f"{name}.png")), prepare(read_mask(root / "alpha" / f"{name}.png"))


def _record(monkeypatch, engine, method: str) -> list[tuple[tuple, dict, object]]:
    """Wrap ``engine.<method>`` so every call's arguments and result are kept."""
    calls, original = [], getattr(engine, method)

    def recording(*args, **kwargs):
        result = original(*args, **kwargs)
        calls.append((args, kwargs, result))
        return result

    monkeypatch.setattr(engine, method, recording)
    return calls


# --- simulated clicks and scribbles ----------------------------------------------------------------------------


def _rectangle_clicks_by_hand(count: int) -> list[tuple[int, int]]:
    """Reference for a 20 x 40 rectangle (rows 10..29, columns 10..49) in a 40 x 60 alpha: the Euclidean distance
    of an inside pixel to the nearest outside pixel is the distance to the nearest side, and farthest-point sampling
    over pixels at least half as deep, written out plainly (whole-pixel distance to the nearest click, then sum of
    distances, then row-major order)."""
    depth = {(y, x): min(y - 9, 30 - y, x - 9, 50 - x) for y in range(10, 30) for x in range(10, 50)}
    deepest = max(depth.values())
    core = [p for p in sorted(depth) if depth[p] >= deepest / 2]
    chosen = [next(p for p in sorted(depth) if depth[p] == deepest)]
    while len(chosen) < count:
        distances = [[np.hypot(p[0] - c[0], p[1] - c[1]) for c in chosen] for p in core]
        chosen.append(max(core, key=lambda p: (int(min(distances[core.index(p)])), sum(distances[core.index(p)]),
                                              -core.index(p))))
    return [(x, y) for y, x in chosen]


def test_clicks_of_a_rectangle_are_deep_inside_and_exact():
    alpha = np.zeros((40, 60), np.float32)
    alpha[10:30, 10:50] = 1.0
    clicks = simulated_clicks(alpha, 4)
    assert [(p.x, p.y) for p in clicks] == _rectangle_clicks_by_hand(4)
    assert clicks[:3] == (Point(19.0, 19.0), Point(45.0, 25.0), Point(34.0, 14.0))
    assert simulated_clicks(torch.from_numpy(alpha), 4) == clicks  # deterministic, tensor or array
    depth = depth_map(alpha > 0.5)
    assert all(depth[int(p.y), int(p.x)] >= 5 for p in clicks)  # at least half the deepest distance (10) inside


def test_clicks_of_a_disc_start_at_its_centre():
    yy, xx = np.mgrid[0:64, 0:64]
    disc = ((yy - 30) ** 2 + (xx - 33) ** 2 <= 14**2).astype(np.float32)
    clicks = simulated_clicks(disc, 3)
    assert clicks[0] == Point(33.0, 30.0)
    radii = [np.hypot(p.x - 33, p.y - 30) for p in clicks[1:]]
    assert all(5 <= r <= 8.5 for r in radii)  # on the rim of the core (depth >= ~7.5 of ~15)
    assert clicks[1:] == (Point(29.0, 24.0), Point(37.0, 36.0))  # spread: the third opposite the second


def test_clicks_keep_away_from_the_frame_and_the_invisible_part():
    full = np.ones((40, 60), np.float32)
    # the frame counts as the object's edge: depth min(y + 1, 40 - y, x + 1, 60 - x), deepest first at (19, 19)
    assert depth_map(full > 0.5)[0, 30] == 1 and simulated_clicks(full, 1) == (Point(19.0, 19.0),)
    visible = np.zeros((40, 60), bool)
    visible[:, 40:] = True  # depth min(y + 1, 40 - y, x - 39, 60 - x): 10 first at (x=49, y=9)
    clicks = simulated_clicks(full, 3, visible)
    assert all(44 <= p.x <= 55 for p in clicks) and clicks[0] == Point(49.0, 9.0)  # core: depth >= 5


def test_tiny_object_gets_fewer_clicks_and_empty_alpha_is_an_error():
    alpha = np.zeros((20, 20), np.float32)
    alpha[10, 10] = 1.0
    assert simulated_clicks(alpha, 3) == (Point(10.0, 10.0),)
    with pytest.raises(NoObjectError, match="no pixel above 0.5"):
        simulated_clicks(np.full((20, 20), 0.5, np.float32), 3)


def test_scribble_lies_inside_the_object_and_joins_the_clicks():
    alpha = np.zeros((120, 400), np.float32)
    alpha[20:100, 30:170] = alpha[20:100, 230:370] = 1.0  # two blocks ...
    alpha[20:30, 170:230] = 1.0  # ... joined by a bridge at the top: the stroke between them crosses the gap
    clicks = simulated_clicks(alpha, 4)
    assert {p.x < 170 for p in clicks} == {True, False}  # clicks on both blocks
    scribble = simulated_scribble(alpha, clicks)
    assert scribble.shape == (120, 400) and scribble.dtype == torch.float32
    assert set(scribble.unique().tolist()) == {0.0, 1.0}
    assert scribble.sum() > 0 and not (scribble.numpy().astype(bool) & (alpha <= 0.5)).any()
    assert all(scribble[int(p.y), int(p.x)] == 1 for p in clicks)
    assert torch.equal(simulated_scribble(alpha, clicks), scribble)  # deterministic
    assert scribble_width(120, 400) == 3 and scribble_width(1000, 1500) == 10
    ys, xs = torch.nonzero(scribble, as_tuple=True)
    assert xs.max() - xs.min() > 200  # the stroke runs along the long axis through the clicks
    assert scribble[30:, 170:230].sum() == 0  # clipped where it crosses the gap
    along_x = sorted(clicks, key=lambda p: p.x)  # the principal axis of this wide object is x
    assert [along_x[i] for i in (2, 0, 3, 1)] != list(clicks)
    for order in (along_x, [along_x[i] for i in (2, 0, 3, 1)]):  # the stroke does not depend on the click order
        assert torch.equal(simulated_scribble(alpha, order), scribble)
    single = simulated_scribble(alpha, clicks[:1])
    assert 0 < single.sum() <= 9  # one click: a small disc of the stroke width


# --- the protocol -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"prompt": "clicks"}, "prompt must be one of mask, points, scribble, got 'clicks'"),
        ({"num_points": 0}, "num_points must be an integer >= 1, got 0"),
        ({"top_m": -1}, "top_m must be an integer >= 0, got -1"),
        ({"num_references": 0}, "num_references must be an integer >= 1, got 0"),
        ({"fit": "fill"}, "fit must be one of stretch, pad, crop, got 'fill'"),
        ({"num_references": 2, "references_file": Path("r.json")}, "both choose the references"),
    ],
)
def test_protocol_rejects_bad_values(fields, message):
    with pytest.raises(ValueError, match=message):
        EvaluationProtocol(**fields)


# --- evaluations ----------------------------------------------------------------------------------------------------


def test_points_evaluation_passes_the_expanded_clicks(engine, dataset, one_pair, tmp_path, monkeypatch):
    encoded = _record(monkeypatch, engine, "encode_reference_tokens")
    protocol = EvaluationProtocol(groups_file=one_pair, prompt="points", num_points=2, top_m=2)
    summary = evaluate_dataset(engine, dataset, tmp_path, protocol)
    image, alpha = _load(dataset, "g1", crop=True)
    clicks = simulated_clicks(alpha, 2)
    expected = engine.expand_prompt(image, positive=clicks, config=ExpansionConfig(top_m=2), seed=0)
    (args, kwargs, context), = encoded
    assert torch.equal(args[0][0], image) and len(args[1]) == 1
    assert torch.equal(args[1][0], expected.token_mask)
    assert kwargs == {"prompt_kind": "points", "fit": "stretch"} and context.prompt_kind == "points"
    report = json.loads(summary.files["json"].read_text())
    assert report["groups"][0]["prompt_points"] == [[[p.x, p.y] for p in clicks]]
    assert report["groups"][0]["reference_tokens"] == int(expected.token_mask.sum())
    assert report["protocol"]["prompt"] == "points" and report["protocol"]["num_points"] == 2
    assert "2 simulated click(s)" in report["protocol"]["description"]["reference_roi"]
    assert [r["image"] for r in _rows(summary.files["csv"])] == ["g2"]


def test_scribble_with_crop_fit_stays_in_the_visible_part(engine, dataset, one_pair, tmp_path, monkeypatch):
    encoded = _record(monkeypatch, engine, "encode_reference_tokens")
    protocol = EvaluationProtocol(groups_file=one_pair, prompt="scribble", resolution="original", fit="crop")
    summary = evaluate_dataset(engine, dataset, tmp_path, protocol)
    image, alpha = _load(dataset, "g1", crop=False)
    visible = np.zeros((HEIGHT, WIDTH), bool)
    visible[:, (WIDTH - HEIGHT) // 2 : (WIDTH + HEIGHT) // 2] = True  # the crop fit keeps the central square
    clicks = simulated_clicks(alpha, 3, visible)
    assert all(16 <= p.x < 96 for p in clicks)
    scribble = simulated_scribble(alpha, clicks, visible)
    expected = engine.expand_prompt(image, scribble=scribble, config=ExpansionConfig(DEFAULT_TOP_M), fit="crop")
    (args, kwargs, _), = encoded
    assert torch.equal(args[1][0], expected.token_mask)
    assert kwargs == {"prompt_kind": "scribble", "fit": "crop"}
    assert summary.groups[0].prompt_points == (tuple((p.x, p.y) for p in clicks),)
    assert summary.images[0].metric_size == (HEIGHT, WIDTH)


def test_first_two_references_form_one_context(engine, dataset, tmp_path, monkeypatch):
    matted = _record(monkeypatch, engine, "matte")
    summary = evaluate_dataset(engine, dataset, tmp_path, EvaluationProtocol(num_references=2))
    rows = _rows(summary.files["csv"])
    assert [(r["group"], r["image"], r["references"]) for r in rows] == [("g", "g3", "g1;g2")]
    assert summary.skipped_groups == ("h",)
    report = json.loads(summary.files["json"].read_text())
    assert report["skipped_groups"] == ["h"] and "2 images or fewer" in report["skipped_groups_reason"]
    assert "first 2 images of each group by name" in report["protocol"]["description"]["references"]
    assert "2 images or fewer, all taken as references): h" in summary.files["markdown"].read_text()
    (g1, m1), (g2, m2) = _load(dataset, "g1", True), _load(dataset, "g2", True)
    context = engine.encode_reference([g1, g2], [m1, m2], seed=0)
    assert context.token_masks.shape[0] == 2 and torch.equal(matted[0][0][0].tokens, context.tokens)
    alpha = engine.matte(context, [_load(dataset, "g3", True)[0]], seed=0, batch_size=1)[0]
    assert torch.equal(matted[0][2][0], alpha)


def test_too_many_references_for_every_group_is_a_clear_error(engine, dataset, tmp_path, caplog):
    with pytest.raises(DatasetError, match=r"num_references=3 takes every image.*largest group has 3.*at most 2"):
        evaluate_dataset(engine, dataset, tmp_path / "out", EvaluationProtocol(num_references=3))
    assert not (tmp_path / "out").exists()
    assert not caplog.records  # the error alone: no "group skipped" warnings before it


@pytest.mark.parametrize("option", [{"fit": "pad"}, {"refine": True}])
def test_fit_and_refine_reach_the_matte_and_change_the_alphas(engine, dataset, one_pair, tmp_path, monkeypatch, option):
    matted = _record(monkeypatch, engine, "matte")
    protocol = EvaluationProtocol(groups_file=one_pair, resolution="original", **option)
    evaluate_dataset(engine, dataset, tmp_path, protocol)
    (args, kwargs, (alpha,)), = matted
    expected = {"fit": option.get("fit", "stretch"), "refinement": RefinementConfig() if "refine" in option else None}
    assert {key: kwargs[key] for key in expected} == expected
    context, image = args[0], _load(dataset, "g2", False)[0]
    direct = engine.matte(context, [image], seed=0, batch_size=1, **expected)[0]
    plain = engine.matte(context, [image], seed=0, batch_size=1)[0]
    assert torch.equal(alpha, direct) and alpha.shape == (HEIGHT, WIDTH)
    assert (alpha - plain).abs().max() > 1e-3  # the option changes the alpha


# --- the command line ---------------------------------------------------------------------------------------------


def test_cli_protocol_options_reach_summary_json(dataset, one_pair, tmp_path):
    args = ["evaluate", str(dataset), "--out", str(tmp_path), "--tiny", "--ensemble", "1", "--groups-file",
            str(one_pair), "--resolution", "original", "--prompt", "scribble", "--points", "2", "--top-m", "3",
            "--fit", "pad", "--refine"]  # fmt: skip
    assert main(args) == 0
    report = json.loads((tmp_path / "summary.json").read_text())
    protocol = report["protocol"]
    assert {k: protocol[k] for k in ("prompt", "num_points", "top_m", "num_references", "fit", "refine")} == {
        "prompt": "scribble", "num_points": 2, "top_m": 3, "num_references": 1, "fit": "pad", "refine": True,
    }  # fmt: skip
    assert protocol["engine"] == {"timestep": 200, "ensemble_size": 1, "image_size": 128}
    assert "ensemble of 1" in protocol["description"]["engine"]
    markdown = (tmp_path / "summary.md").read_text()
    assert "- engine: image size 128 px, ensemble of 1" in markdown and "- refinement: guided filter" in markdown
    assert "- fit: pad:" in markdown and "top_m=3" in markdown


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--points", "2"], "error: --points only apply to --prompt points or scribble, got --prompt mask"),
        (["--top-m", "2", "--points", "2"], "error: --points and --top-m only apply to --prompt points or scribble"),
        (["--num-references", "2", "--references", "r.json"], "error: --num-references 2 and --references r.json both"),
        (["--num-references", "5"], "error: nothing to evaluate in"),
        (["--prompt", "clicks"], "invalid choice: 'clicks'"),
        (["--fit", "fill"], "invalid choice: 'fill'"),
        (["--num-references", "0"], "--num-references"),
    ],
)
def test_cli_errors_are_one_line(dataset, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as raised:
        main(["evaluate", str(dataset), "--out", str(tmp_path / "out"), "--tiny", *extra])
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ") and err.count("\n") == 1  # one line, no traceback
    assert not (tmp_path / "out").exists()
