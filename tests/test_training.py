"""Decoder fine-tuning with the tiny engine: losses, loss decrease, checkpoints, resume, feature cache, CLI."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from icm_core.commands.cli import main
from icm_core.tiny import build_tiny_engine
from icm_core.training import (
    TrainingConfig,
    TrainingStateError,
    gradient_loss,
    is_binary_alpha,
    l1_loss,
    laplacian_loss,
    laplacian_pyramid,
    segmentation_loss,
    train_decoder,
    uncertain_band,
    cooldown_factor,
    warmup_factor,
)
from icm_core.weights.decoder import load_decoder, random_decoder_inputs

SIZE = (144, 176)  # larger than the 128 px model square: real random crops
GROUPS = {"animal-None-half": ["a1", "a2", "a3"], "plant-leaf-full": ["p1", "p2", "p3"]}
BINARY = {"p3"}  # a segmentation sample (alpha only 0/1)


def write_dataset(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    meta = {}
    for folder in ("image", "alpha"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for index, (group, names) in enumerate(GROUPS.items()):
        cls, sub, half = group.split("-")
        for name in names:
            height, width = SIZE
            yy, xx = np.mgrid[0:height, 0:width]
            cy, cx = height / 2 + rng.uniform(-8, 8), width / 2 + rng.uniform(-8, 8)
            radius = np.sqrt(((yy - cy) / (height * 0.3)) ** 2 + ((xx - cx) / (width * 0.3)) ** 2)
            alpha = np.clip((1.15 - radius) / 0.3, 0, 1)
            if name in BINARY:
                alpha = (alpha > 0.5).astype(np.float64)
            foreground = np.array([0.9, 0.3 + 0.3 * index, 0.2])
            image = alpha[..., None] * foreground + (1 - alpha[..., None]) * rng.uniform(0, 0.4, (height, width, 3))
            Image.fromarray((image * 255).round().astype(np.uint8)).save(root / "image" / f"{name}.png")
            Image.fromarray((alpha * 255).round().astype(np.uint8)).save(root / "alpha" / f"{name}.png")
            meta[name] = {"class": cls, "sub_class": None if sub == "None" else sub, "HalfOrFull": half}
    (root / "groups.json").write_text(json.dumps(meta))
    return root


# ----------------------------------------------------------------------------------------------- losses


def test_l1_hand_value():
    pred = torch.zeros(1, 1, 2, 2)
    target = torch.tensor([[[[0.0, 1.0], [0.5, 0.25]]]])
    assert float(l1_loss(pred, target)) == pytest.approx(0.4375)
    weight = torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]])
    assert float(l1_loss(pred, target, weight)) == pytest.approx(0.75)


def test_gradient_hand_value():
    ramp = (0.1 * torch.arange(5.0)).expand(5, 5)[None, None].contiguous()
    # Sobel d/dx of a ramp with step s: 8 s inside, 4 s on the replicated border columns -> (3*8s + 2*4s) / 5.
    assert float(gradient_loss(torch.zeros_like(ramp), ramp)) == pytest.approx(6.4 * 0.1)
    assert float(gradient_loss(ramp, ramp)) == 0.0
    assert float(gradient_loss(ramp + 0.3, ramp)) == pytest.approx(0.0, abs=1e-6)  # offsets have no gradient


def test_laplacian_zero_on_identical_positive_otherwise_and_matches_cv2():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 32, 32, generator=generator, dtype=torch.float64)
    assert float(laplacian_loss(x, x)) == 0.0
    assert float(laplacian_loss(x + 0.25, x)) == pytest.approx(0.0, abs=1e-12)  # band-pass only (L1 sees offsets)
    checker = torch.from_numpy(np.indices((32, 32)).sum(0) % 2).to(torch.float64)[None, None]
    assert float(laplacian_loss(x + 0.1 * checker, x)) > 0.0
    # Level 0 against an independent OpenCV construction: blur/decimate (pyrDown, replicated border), bilinear up.
    image = x[0, 0].numpy()
    down = cv2.pyrDown(image, borderType=cv2.BORDER_REPLICATE)
    band = image - cv2.resize(down, (32, 32), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(laplacian_pyramid(x, 1)[0][0, 0].numpy(), band, atol=1e-12)


def test_segmentation_loss_ignores_the_uncertain_band():
    target = torch.zeros(1, 1, 16, 16)
    target[..., :, 8:] = 1.0  # vertical edge between columns 7 and 8
    band = uncertain_band(target, 2)
    assert band[0, 0, 0].nonzero().flatten().tolist() == [6, 7, 8, 9]  # 2 px on each side
    pred = target.clone()
    pred[band] = torch.rand(int(band.sum()))
    assert float(segmentation_loss(pred, target, 2)) == 0.0
    pred[0, 0, 0, 0] = 1.0  # a confident pixel wrong by 1
    assert float(segmentation_loss(pred, target, 2)) == pytest.approx(1.0 / int((~band).sum()))
    assert is_binary_alpha(target) and not is_binary_alpha(target * 0.5)


def test_warmup_is_linear():
    assert [warmup_factor(step, 4) for step in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0


def test_cooldown_falls_linearly_over_the_last_steps():
    assert [cooldown_factor(step, 4, 10) for step in range(10)] == [1, 1, 1, 1, 1, 1, 1.0, 0.75, 0.5, 0.25]
    assert cooldown_factor(3, 0, 10) == 1.0
    assert cooldown_factor(0, 20, 10) == 0.5  # longer than the run: it starts lower
    with pytest.raises(ValueError, match="cooldown_steps"):
        TrainingConfig(cooldown_steps=-1)


# ----------------------------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def engine():
    return build_tiny_engine(seed=0, image_size=128, ensemble_size=2)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("train") / "data")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("feature_cache")


def _config(cache: Path | None, **changes) -> TrainingConfig:
    base = TrainingConfig(
        steps=30, batch_size=1, warmup_steps=5, seed=0, fixed_crops=True, cache_dir=cache, checkpoint_every=10
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture(scope="module")
def trained(engine, dataset, cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    started = time.perf_counter()
    result = train_decoder(engine, dataset, out, _config(cache_dir, validation_root=dataset, validate_every=30))
    print(f"30 training steps in {time.perf_counter() - started:.1f} s")
    return result


def test_loss_decreases(trained):
    losses = [record.loss for record in trained.history]
    assert len(losses) == 30 and trained.start_step == 0 and trained.steps == 30
    first, last = float(np.mean(losses[:5])), float(np.mean(losses[-5:]))
    print(f"mean loss of steps 1-5: {first:.4f}, of steps 26-30: {last:.4f}")
    assert last < 0.8 * first
    assert {name for r in trained.history for name in r.parts} == {"l1", "laplacian", "gradient", "segmentation"}
    assert trained.history[0].lr == pytest.approx(4e-4 / 5) and trained.history[-1].lr == pytest.approx(4e-4)
    lines = [json.loads(line) for line in trained.log_file.read_text().splitlines()]
    assert [line["step"] for line in lines if line["kind"] == "train"] == list(range(1, 31))
    assert [line["step"] for line in lines if line["kind"] == "validation"] == [30]
    assert trained.validation[0][0] == 30 and np.isfinite(trained.validation[0][1])


def test_checkpoint_reloads_strictly_and_reproduces_outputs(trained):
    assert not trained.decoder.training
    reloaded = load_decoder(trained.checkpoint)
    assert (trained.checkpoint.parent / "checkpoints" / "decoder_step0000030.safetensors").is_file()
    tokens, features, images = random_decoder_inputs(trained.decoder.config, batch=2, tokens=7, seed=3)
    with torch.no_grad():
        expected = trained.decoder(tokens, features, images).alpha
        got = reloaded(tokens, features, images).alpha
    assert torch.equal(got, expected)


def test_resume_continues_like_an_uninterrupted_run(engine, dataset, cache_dir, tmp_path):
    config = _config(cache_dir, steps=3, batch_size=2, warmup_steps=3)
    straight = train_decoder(engine, dataset, tmp_path / "straight", config)
    train_decoder(engine, dataset, tmp_path / "resumed", dataclasses.replace(config, steps=2))
    with pytest.raises(TrainingStateError, match="--resume"):
        train_decoder(engine, dataset, tmp_path / "resumed", config)
    resumed = train_decoder(engine, dataset, tmp_path / "resumed", dataclasses.replace(config, resume=True))
    assert resumed.start_step == 2 and [r.step for r in resumed.history] == [3]
    assert resumed.history[0].loss == straight.history[2].loss
    assert resumed.history[0].targets == straight.history[2].targets
    a = load_file(str(tmp_path / "straight" / "training_state.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "training_state.safetensors"))
    assert a.keys() == b.keys() and any(k.endswith("exp_avg_sq") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)  # decoder, BatchNorm statistics and AdamW moments/steps
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "loss_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


def test_feature_cache_gives_the_same_losses(engine, dataset, tmp_path):
    config = _config(None, steps=3)
    plain = train_decoder(engine, dataset, tmp_path / "plain", config)
    cached = dataclasses.replace(config, cache_dir=tmp_path / "cache")
    cold = train_decoder(engine, dataset, tmp_path / "cold", cached)
    warm = train_decoder(engine, dataset, tmp_path / "warm", cached)
    assert cold.cache_misses > 0 and warm.cache_misses == 0 and warm.cache_hits == 6
    losses = [[r.loss for r in run.history] for run in (plain, cold, warm)]
    assert losses[0] == losses[1] == losses[2]


def test_cache_needs_fixed_crops(tmp_path):
    with pytest.raises(ValueError, match="fixed crops"):
        TrainingConfig(cache_dir=tmp_path, fixed_crops=False)


def test_cli_train_and_resume(dataset, cache_dir, tmp_path, capsys):
    common = ["train", str(dataset), "--out", str(tmp_path), "--tiny", "--batch-size", "1", "--fixed-crops",
              "--cache-dir", str(cache_dir), "--warmup-steps", "5"]  # fmt: skip
    assert main([*common, "--steps", "2"]) == 0
    assert main([*common, "--steps", "3", "--resume"]) == 0
    output = capsys.readouterr().out
    assert "trained steps 3..3" in output
    lines = (tmp_path / "loss_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]
    assert load_decoder(tmp_path / "decoder.safetensors").config.image_size == 128


def test_cli_cooldown_lowers_the_rate_over_the_last_steps(dataset, cache_dir, tmp_path):
    arguments = ["train", str(dataset), "--out", str(tmp_path), "--tiny", "--batch-size", "1", "--fixed-crops",
                 "--cache-dir", str(cache_dir), "--warmup-steps", "0", "--lr", "1e-3", "--steps", "4",
                 "--cooldown-steps", "2"]  # fmt: skip
    assert main(arguments) == 0
    lines = [json.loads(line) for line in (tmp_path / "loss_log.jsonl").read_text().splitlines()]
    assert [line["lr"] for line in lines] == pytest.approx([1e-3, 1e-3, 1e-3, 5e-4])
