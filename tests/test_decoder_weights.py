"""Decoder checkpoints: official layout, loading every accepted file format strictly, and conversion.

Synthetic checkpoints are written the way the official code / third parties would write them (Lightning ``.ckpt``
with non-tensor hyper-parameters, bare ``.pth``, fp16, ``.safetensors``) and read back through the public
``load_decoder``; nothing in the loading path is mocked.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from icm_core.commands import cli
from icm_core.config import DecoderConfig
from icm_core.errors import WeightsNotFoundError
from icm_core.modeling.decoder import InContextDecoder
from icm_core.modeling.key_table import OFFICIAL_PREFIX, infer_decoder_config, to_official
from icm_core.tiny import build_tiny_decoder, tiny_decoder_config
from icm_core.weights.checkpoint_io import read_checkpoint
from icm_core.weights.decoder import (
    FORMAT_TAG,
    OFFICIAL_DECODER_FILE,
    DecoderCheckpointError,
    convert_decoder,
    load_decoder,
    random_decoder_inputs,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"float32": torch.float32, "int64": torch.int64}
FORMATS = ("lightning_ckpt", "bare_prefixed_pth", "bare_unprefixed_pth", "with_feature_extractor", "fp16", "safetensors")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy machine they spin (10x slower)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# --------------------------------------------------------------------------- helpers


def _random_official_state(layout: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with exactly the keys / shapes / dtypes of the official layout, in its order."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for entry in layout["keys"]:
        key, shape, dtype = entry["key"], tuple(entry["shape"]), DTYPES[entry["dtype"]]
        if dtype == torch.int64:
            state[key] = torch.randint(0, 1000, shape, generator=generator, dtype=torch.int64)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=generator) + 0.5
        else:
            state[key] = torch.randn(shape, generator=generator) * 0.05
    return state


def _lightning(state: dict[str, torch.Tensor]) -> dict:
    """A PyTorch-Lightning checkpoint as the official training wrote it (non-tensor globals included)."""
    first = next(v for v in state.values() if v.is_floating_point())
    return {
        "state_dict": state,
        "epoch": 12,
        "global_step": 100,
        "pytorch-lightning_version": "2.0.0",
        "hyper_parameters": {"cfg": argparse.Namespace(lr=1e-4, name="icm"), "image_size": 768},
        "optimizer_states": [
            {"state": {0: {"step": torch.tensor(100.0), "exp_avg": torch.zeros_like(first)}},
             "param_groups": [{"lr": 1e-4, "params": [0]}]}
        ],
        "lr_schedulers": [],
    }


def _write(fmt: str, state: dict[str, torch.Tensor], folder: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """Write ``state`` (official keys) in format ``fmt``; return the file and the fp32 tensors it should load as."""
    expected = state
    if fmt == "lightning_ckpt":
        path = folder / "model.ckpt"
        torch.save(_lightning(state), path)
    elif fmt == "bare_prefixed_pth":
        path = folder / "bare.pth"
        torch.save(state, path)
    elif fmt == "bare_unprefixed_pth":
        path = folder / "unprefixed.pth"
        torch.save({k.removeprefix(OFFICIAL_PREFIX): v for k, v in state.items()}, path)
    elif fmt == "with_feature_extractor":
        path = folder / "training.ckpt"
        frozen = {
            "feature_extractor.unet.conv_in.weight": torch.randn(32, 4, 3, 3),
            "feature_extractor.vae.encoder.conv_in.bias": torch.randn(8),
            "feature_extractor.prompt_embeds": torch.randn(1, 77, 32),
        }
        torch.save(_lightning({**frozen, **state}), path)
    elif fmt == "fp16":
        path = folder / "half.pth"
        half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        torch.save({"state_dict": half, "epoch": 12}, path)
        expected = {k: v.float() if v.is_floating_point() else v for k, v in half.items()}
    elif fmt == "safetensors":
        path = folder / "third_party.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:  # pragma: no cover
        raise AssertionError(fmt)
    return path, expected


def _assert_weights_equal(decoder: InContextDecoder, expected: dict[str, torch.Tensor]) -> None:
    loaded = to_official(decoder.state_dict())
    assert set(loaded) == set(expected)
    for key, value in expected.items():
        assert loaded[key].dtype == (torch.float32 if value.is_floating_point() else value.dtype), key
        assert torch.equal(loaded[key], value), key


def _alpha(decoder: InContextDecoder, seed: int = 1) -> torch.Tensor:
    tokens, features, images = random_decoder_inputs(decoder.config, batch=2, tokens=4, seed=seed)
    with torch.no_grad():
        return decoder(tokens, features, images).alpha


def _direct_decoder(state: dict[str, torch.Tensor], config: DecoderConfig) -> InContextDecoder:
    """Reference: a decoder built directly and filled through the key table (no file involved)."""
    from icm_core.modeling.key_table import our_key

    decoder = InContextDecoder(config)
    decoder.load_state_dict({our_key(k): v.float() if v.is_floating_point() else v for k, v in state.items()})
    return decoder.eval()


@pytest.fixture(scope="module")
def full_state(official_layout) -> dict[str, torch.Tensor]:
    return _random_official_state(official_layout, seed=0)


@pytest.fixture()
def tiny_state() -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in to_official(build_tiny_decoder(seed=3).state_dict()).items()}


# --------------------------------------------------------------------------- layout


def test_default_decoder_has_exact_official_layout(official_layout):
    ours = to_official(InContextDecoder().state_dict())
    official = official_layout["keys"]
    assert official_layout["num_keys"] == len(official) == len(ours) == 89
    assert set(ours) == {entry["key"] for entry in official}
    for entry in official:
        tensor = ours[entry["key"]]
        assert tuple(tensor.shape) == tuple(entry["shape"]), entry["key"]
        assert tensor.dtype == DTYPES[entry["dtype"]], entry["key"]
    assert all(key.startswith(official_layout["prefix"]) for key in ours)


def test_key_order_differs_from_official_but_loading_is_order_independent(official_layout, tiny_state, tmp_path):
    """Our module registration order is not the official one (attn ``ln`` before ``conv``, ``ft_module_list``
    before ``ft_attn_module_list``); keys are matched by name, so files in any key order load all the same."""
    ours = list(to_official(InContextDecoder().state_dict()))
    official = [entry["key"] for entry in official_layout["keys"]]
    assert ours != official and sorted(ours) == sorted(official)
    orders = {"official": [k for k in official if k in tiny_state], "reversed": list(reversed(tiny_state))}
    assert orders["official"] != list(tiny_state) and sorted(orders["official"]) == sorted(tiny_state)
    for name, keys in orders.items():
        path = _save_pth({key: tiny_state[key] for key in keys}, tmp_path / f"{name}.pth")
        assert list(read_checkpoint(path).tensors) == keys  # the file really holds this order
        _assert_weights_equal(load_decoder(path), tiny_state)


def test_infer_config_and_parameter_count(official_layout):
    decoder = InContextDecoder()
    assert infer_decoder_config(to_official(decoder.state_dict())) == DecoderConfig()
    count = sum(p.numel() for p in decoder.parameters())
    assert count == official_layout["num_parameters"] == 21_101_585
    buffers = sum(b.numel() for name, b in decoder.named_buffers() if not name.endswith("num_batches_tracked"))
    buffers += sum(1 for name, _ in decoder.named_buffers() if name.endswith("num_batches_tracked"))
    assert buffers == official_layout["num_buffer_elements"]


# --------------------------------------------------------------------------- loading every format


@pytest.mark.parametrize("fmt", FORMATS)
def test_full_size_checkpoint_loads_exactly(fmt, full_state, tmp_path):
    path, expected = _write(fmt, full_state, tmp_path)
    decoder = load_decoder(path)
    assert decoder.config == DecoderConfig()
    assert not decoder.training
    _assert_weights_equal(decoder, expected)


@pytest.mark.parametrize("fmt", FORMATS)
def test_tiny_checkpoint_loads_exactly_and_matches_direct_decoder(fmt, tiny_state, tmp_path):
    path, expected = _write(fmt, tiny_state, tmp_path)
    decoder = load_decoder(path)
    assert decoder.config == tiny_decoder_config(128)
    _assert_weights_equal(decoder, expected)
    direct = _direct_decoder(expected, tiny_decoder_config(128))
    assert torch.equal(_alpha(decoder), _alpha(direct))


def test_lightning_checkpoint_with_non_tensor_objects_uses_restricted_loader(tiny_state, tmp_path):
    path, _ = _write("lightning_ckpt", tiny_state, tmp_path)
    contents = read_checkpoint(path)
    assert contents.loader == "restricted_unpickler"  # argparse.Namespace becomes an inert placeholder
    assert set(contents.tensors) == set(tiny_state)
    assert {"epoch", "global_step", "hyper_parameters", "optimizer_states"} <= set(contents.ignored_entries)
    bare, _ = _write("bare_prefixed_pth", tiny_state, tmp_path)
    assert read_checkpoint(bare).loader == "restricted_unpickler"  # every pickle: never torch.load


def test_fp16_weights_are_cast_to_fp32(tiny_state, tmp_path):
    path, expected = _write("fp16", tiny_state, tmp_path)
    decoder = load_decoder(path)
    assert all(p.dtype == torch.float32 for p in decoder.parameters())
    original = _alpha(_direct_decoder(tiny_state, tiny_decoder_config(128)))
    assert 0 < (_alpha(decoder) - original).abs().max() < 1e-2  # really rounded, and still close


def test_golden_decoder_loads_from_lightning_pth(golden, tmp_path):
    official = {k: v for k, v in golden.items() if k.startswith(OFFICIAL_PREFIX)}
    path = tmp_path / "golden-mat.pth"
    torch.save(_lightning(official), path)
    decoder = load_decoder(path)
    assert decoder.config == tiny_decoder_config(128)
    assert decoder.config.feature_channels == 48 and decoder.config.image_size == 128
    _assert_weights_equal(decoder, official)


# --------------------------------------------------------------------------- strictness


def _save_pth(state: dict[str, torch.Tensor], path: Path) -> Path:
    torch.save({"state_dict": state, "epoch": 12}, path)
    return path


@pytest.mark.parametrize(
    "key",
    [
        "in_context_decoder.detail_decoder.matting_head.matting_convs.1.running_var",
        "in_context_decoder.in_context_fusion.attn_module.norm.weight",  # also needed to read the widths
    ],
)
def test_missing_key_is_named(key, tiny_state, tmp_path):
    del tiny_state[key]
    with pytest.raises(DecoderCheckpointError) as error:
        load_decoder(_save_pth(tiny_state, tmp_path / "missing.pth"))
    assert key in str(error.value)
    assert "missing.pth" in str(error.value)


@pytest.mark.parametrize(
    "key",
    [
        "in_context_decoder.in_context_fusion.not_a_module.weight",
        # matches a key-table row but is no decoder key: the official 4-conv ConvStream quirk (README Q7)
        "in_context_decoder.detail_decoder.convstream.convs.3.conv.weight",
    ],
)
def test_unexpected_key_is_named(key, tiny_state, tmp_path):
    tiny_state[key] = torch.zeros(4, 3, 3, 3)
    with pytest.raises(DecoderCheckpointError) as error:
        load_decoder(_save_pth(tiny_state, tmp_path / "extra.pth"))
    message = str(error.value)
    assert "unexpected" in message and key in message


def test_wrong_shape_is_named_with_both_shapes(tiny_state, tmp_path):
    key = "in_context_decoder.in_context_fusion.ft_attn_module_list.1.conv.weight"
    good = tuple(tiny_state[key].shape)
    bad = (good[0], good[1] - 1, *good[2:])
    tiny_state[key] = torch.zeros(bad)
    with pytest.raises(DecoderCheckpointError) as error:
        load_decoder(_save_pth(tiny_state, tmp_path / "shape.pth"))
    assert f"{key} (expected {good}, got {bad})" in str(error.value)


@pytest.mark.parametrize(
    "tensors",
    [
        {"model.diffusion_model.conv_in.weight": torch.zeros(4, 4, 3, 3)},
        {"feature_extractor.unet.conv_in.weight": torch.zeros(4, 4, 3, 3)},
    ],
)
def test_file_without_decoder_keys_fails_clearly(tensors, tmp_path):
    path = tmp_path / "not_a_decoder.pth"
    torch.save(tensors, path)
    with pytest.raises(DecoderCheckpointError) as error:
        load_decoder(path)
    message = str(error.value)
    assert "not_a_decoder.pth" in message and "in_context_decoder." in message


def test_missing_file_names_the_official_release(tmp_path):
    with pytest.raises(WeightsNotFoundError) as error:
        load_decoder(tmp_path / "models" / OFFICIAL_DECODER_FILE)
    message = str(error.value)
    assert "12-0.00800-mat.pth" in message and "tiny-smart/in-context-matting" in message


# --------------------------------------------------------------------------- convert


@pytest.fixture()
def tiny_lightning(tiny_state, tmp_path) -> Path:
    path, _ = _write("with_feature_extractor", tiny_state, tmp_path)
    return path


def _check_converted(target: Path, source: Path, tiny_state: dict[str, torch.Tensor]) -> None:
    assert target.is_file()
    with safe_open(str(target), framework="pt") as handle:
        metadata = handle.metadata()
        keys = set(handle.keys())
    assert metadata["format"] == FORMAT_TAG == "icm-decoder"
    assert metadata["converted_from"] == source.name
    assert keys == set(tiny_state)  # only the decoder, official keys, no feature_extractor.*
    assert all(key.startswith(OFFICIAL_PREFIX) for key in keys)
    reloaded = load_decoder(target)
    _assert_weights_equal(reloaded, tiny_state)
    assert torch.equal(_alpha(reloaded), _alpha(load_decoder(source)))
    assert not [p for p in target.parent.iterdir() if p.name.endswith(".tmp")]


def test_convert_via_cli_main(tiny_lightning, tiny_state, tmp_path, capsys):
    target = tmp_path / "out" / "decoder.safetensors"
    target.parent.mkdir()
    assert cli.main(["convert", str(tiny_lightning), str(target)]) == 0
    assert str(target) in capsys.readouterr().out
    _check_converted(target, tiny_lightning, tiny_state)


def test_convert_via_python_dash_m(tiny_lightning, tiny_state, tmp_path):
    target = tmp_path / "decoder.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, "-m", "icm_core", "convert", str(tiny_lightning), str(target)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    _check_converted(target, tiny_lightning, tiny_state)


def test_convert_refuses_non_safetensors_target(tiny_lightning, tmp_path, capsys):
    target = tmp_path / "decoder.pth"
    with pytest.raises(SystemExit) as error:
        cli.main(["convert", str(tiny_lightning), str(target)])
    message = capsys.readouterr().err  # a user error: one "error:" line on stderr, exit code 2
    assert error.value.code == 2 and message.startswith("error:")
    assert ".safetensors" in message and "decoder.pth" in message
    with pytest.raises(ValueError, match=r"\.safetensors"):
        convert_decoder(tiny_lightning, target)
    assert not target.exists()


def test_convert_missing_source_is_a_clear_cli_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as error:
        cli.main(["convert", str(tmp_path / OFFICIAL_DECODER_FILE), str(tmp_path / "out.safetensors")])
    assert error.value.code == 2 and OFFICIAL_DECODER_FILE in capsys.readouterr().err
    assert not (tmp_path / "out.safetensors").exists()
