"""NaN/Inf never becomes a black matte: inputs, the model's features and alpha, and the writers refuse them by name."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from icm_core import pipeline
from icm_core.errors import NonFiniteError
from icm_core.image_io import ImageReadError, read_image, read_mask, save_image_atomic
from icm_core.commands.matte_job import JobSettings, Target, run_job
from icm_core.outputs import make_outputs
from icm_core.tiny import build_tiny_engine


@pytest.fixture(scope="module")
def engine():
    return build_tiny_engine(seed=0, image_size=64, ensemble_size=1)


@pytest.fixture(scope="module")
def context(engine):
    mask = torch.zeros(64, 64)
    mask[16:48, 16:48] = 1
    return engine.encode_reference(torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0)), mask)


def _targets(count: int) -> list[torch.Tensor]:
    return [torch.rand(3, 64, 72, generator=torch.Generator().manual_seed(i)) for i in range(count)]


def test_float_tiff_with_nan_is_a_read_error(tmp_path):
    values = np.full((70, 70), 0.5, np.float32)
    values[3, 4] = np.nan
    values[5, 6] = np.inf
    path = tmp_path / "poisoned.tif"
    Image.fromarray(values, mode="F").save(path)
    for reader in (read_image, read_mask):
        with pytest.raises(ImageReadError, match=r"poisoned\.tif: 2 NaN/Inf value\(s\) in a float image"):
            reader(path)


def test_non_finite_inputs_are_refused_naming_them(engine, context):
    image = torch.rand(3, 64, 64)
    image[0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="target image 2 contains NaN or infinite values"):
        engine.matte(context, [*_targets(2), image])
    mask = torch.ones(64, 64)
    mask[0, 0] = float("inf")
    with pytest.raises(ValueError, match="reference mask 0 contains NaN or infinite values"):
        engine.encode_reference(torch.rand(3, 64, 64), mask)


def test_non_finite_features_name_the_target(engine, context, monkeypatch):
    extract = pipeline.extract_features
    calls = []

    def overflowing(backend, square, extraction, seed, record_attention):
        features = extract(backend, square, extraction, seed, record_attention=record_attention)
        calls.append(square.shape[0])
        if len(calls) == 2:  # the second micro-batch: targets 2 and 3
            high = features.high.clone()
            high[1, 0, 0, 0] = float("inf")
            features = dataclasses.replace(features, high=high)
        return features

    monkeypatch.setattr(pipeline, "extract_features", overflowing)
    done = []
    with pytest.raises(NonFiniteError, match=r"target image 3: the model produced NaN/Inf in its UNet features.*"
                                             r"fp16 overflow\? run in fp32: --dtype fp32"):
        for index, _ in engine.iter_matte(context, _targets(5), batch_size=2):
            done.append(index)
    assert done == [0, 1]  # the good micro-batch came out, the poisoned one did not


def test_non_finite_alpha_names_the_target(engine, context, monkeypatch):
    forward = engine.decoder.forward

    def nan_for_the_second(tokens, features, images):
        output = forward(tokens, features, images)
        if features.high.shape[0] == 1 and float(images.mean()) == pytest.approx(float(poisoned.mean()), abs=1e-6):
            return dataclasses.replace(output, alpha=output.alpha * float("nan"))
        return output

    targets = _targets(3)
    poisoned = torch.stack([t * 2 - 1 for t in targets])[1:2]  # what the decoder sees of target 1 (stretched below)
    poisoned = torch.nn.functional.interpolate(poisoned, size=(64, 64), mode="bilinear", antialias=True)
    monkeypatch.setattr(engine.decoder, "forward", nan_for_the_second)
    with pytest.raises(NonFiniteError, match="target image 1: the model produced NaN/Inf in its alpha"):
        engine.matte(context, targets, batch_size=3)


def test_a_poisoned_model_writes_nothing_and_fails_the_job(engine, context, monkeypatch, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    targets = []
    for index, image in enumerate(_targets(2)):
        path = inputs / f"{index}.png"
        Image.fromarray((image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(path)
        targets.append(Target(path, path.relative_to(inputs).with_suffix("")))
    monkeypatch.setattr(engine, "_matte_squares", lambda tokens, square, seed: torch.full_like(square[:, :1], torch.nan))
    out = tmp_path / "out"
    with pytest.raises(NonFiniteError, match="target image 0"):
        run_job(engine, context, targets, out, JobSettings(kinds=("alpha", "rgba")))
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))


def test_writers_refuse_non_finite_values(tmp_path):
    alpha = torch.rand(8, 8)
    alpha[2, 2] = float("nan")
    target = tmp_path / "alpha.png"
    with pytest.raises(ValueError, match=r"refusing to write .*alpha\.png: 1 NaN/Inf value\(s\)"):
        save_image_atomic(alpha, target)
    with pytest.raises(ValueError, match="NaN/Inf"):
        save_image_atomic(alpha.numpy(), target)
    assert list(tmp_path.iterdir()) == []  # no output, no temp file
    with pytest.raises(NonFiniteError, match="make_outputs: the alpha holds NaN/Inf"):
        make_outputs(torch.rand(3, 8, 8), alpha, ("rgba",))
    save_image_atomic(torch.rand(8, 8), target)  # finite values are written
    assert target.is_file()
