"""Tests for icm_core.weights.checkpoint_io (and its restricted unpickler)."""

from __future__ import annotations

import argparse
import builtins
import logging
import os
import pathlib
import pickle
import shlex
import subprocess
import sys
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from icm_core.weights import checkpoint_io
from icm_core.weights.checkpoint_io import (
    CheckpointContents,
    CheckpointError,
    read_checkpoint,
    write_safetensors_atomic,
)
from icm_core.weights.restricted_unpickler import (
    CheckpointPlaceholder,
    placeholder_for,
)
from icm_core.weights.torch_archive import read_torch_file
from tests.restricted_pickle import RestrictedPickle

# ----------------------------------------------------------------------------- fixtures


class HParams:
    """A user class a Lightning checkpoint might pickle into hyper_parameters."""

    def __init__(self) -> None:
        self.lr = 1e-4
        self.backbone = "sd-2.1"


class AttributeDict(dict):
    """Like lightning's AttributeDict: a dict subclass (pickled with SETITEMS)."""


class Evil:
    """Pickles as ``fn(*args)``: runs ``fn`` when naively unpickled."""

    def __init__(self, fn: Any, args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (self.fn, self.args)


def _attacks(target: Path) -> dict[str, Evil]:
    t = str(target)
    return {
        "path_touch": Evil(pathlib.Path.touch, (target,)),
        "open": Evil(builtins.open, (t, "w")),
        "os_system": Evil(os.system, (f"touch {shlex.quote(t)}",)),
        "exec": Evil(builtins.exec, (f"open({t!r}, 'w').close()",)),
        "eval": Evil(builtins.eval, (f"open({t!r}, 'w').close()",)),
        "subprocess": Evil(subprocess.call, (["touch", t],)),
    }


ATTACK_NAMES = ["path_touch", "open", "os_system", "exec", "eval", "subprocess"]


def _state_dict() -> OrderedDict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return OrderedDict(
        [
            ("encoder.conv.weight", torch.randn(4, 3, 3, 3, generator=gen)),
            ("encoder.conv.bias", torch.randn(4, generator=gen)),
            ("decoder.proj.weight", torch.randn(2, 4, generator=gen).to(torch.float16)),
            ("decoder.step", torch.tensor(7, dtype=torch.int64)),
            ("decoder.bf", torch.randn(3, generator=gen).to(torch.bfloat16)),
        ]
    )


def _assert_same_tensors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype, name
        assert got[name].device.type == "cpu"
        assert type(got[name]) is torch.Tensor
        assert torch.equal(got[name], tensor.detach()), name


class _LoadSpy:
    """Fails the test if read_checkpoint ever calls torch.load (untrusted files never reach it)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[Any] = []

        def spy(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((args, kwargs))
            raise AssertionError("torch.load must not be called on a checkpoint")

        monkeypatch.setattr(torch, "load", spy)

    @property
    def modes(self) -> list[str]:
        return ["torch.load" for _ in self.calls]


# ----------------------------------------------------------------------------- round trips


def test_bare_state_dict_pth_loads_without_torch_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sd = _state_dict()
    sd["head.weight"] = torch.nn.Parameter(torch.ones(2, 2))
    path = tmp_path / "model.pth"
    torch.save(sd, path)
    spy = _LoadSpy(monkeypatch)

    contents = read_checkpoint(path)

    assert isinstance(contents, CheckpointContents)
    _assert_same_tensors(contents.tensors, sd)
    assert contents.tensors["head.weight"].requires_grad is False
    assert contents.metadata == {}
    assert contents.source_format == "torch-zip"
    assert contents.loader == "restricted_unpickler"
    assert contents.ignored_entries == ()
    assert spy.modes == []


def test_bare_state_dict_with_a_few_non_tensor_entries(tmp_path: Path) -> None:
    sd = _state_dict()
    payload: dict[str, Any] = dict(sd)
    payload["epoch"] = 12
    payload["note"] = "fine-tuned"
    path = tmp_path / "weights.bin"
    torch.save(payload, path)

    contents = read_checkpoint(path)

    _assert_same_tensors(contents.tensors, sd)
    assert contents.ignored_entries == ("epoch", "note")


@pytest.mark.parametrize(
    "hyper_parameters",
    [argparse.Namespace(lr=0.1, name="icm"), HParams(), AttributeDict(lr=0.1, tags=["a"])],
    ids=["namespace", "custom_class", "dict_subclass"],
)
def test_lightning_ckpt_falls_back_to_restricted_unpickler(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    hyper_parameters: Any,
) -> None:
    sd = _state_dict()
    sd["_metadata_like_version"] = torch.zeros(1)
    state = OrderedDict(sd)
    state["non_tensor_in_state"] = 3  # type: ignore[assignment]
    ckpt = {
        "epoch": 3,
        "global_step": 1200,
        "state_dict": state,
        "hyper_parameters": hyper_parameters,
        "optimizer_states": [{"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": [{"lr": 0.1}]}],
        "callbacks": {"ModelCheckpoint": HParams()},
    }
    path = tmp_path / "epoch=3.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, map_location="cpu", weights_only=True)  # why the fallback is needed
    spy = _LoadSpy(monkeypatch)

    with caplog.at_level(logging.INFO, logger=checkpoint_io.__name__):
        contents = read_checkpoint(path)

    _assert_same_tensors(contents.tensors, sd)
    assert contents.loader == "restricted_unpickler"
    assert contents.source_format == "torch-zip"
    assert contents.metadata == {}
    assert contents.ignored_entries == (
        "epoch",
        "global_step",
        "hyper_parameters",
        "optimizer_states",
        "callbacks",
        "state_dict.non_tensor_in_state",
    )
    assert spy.modes == []
    expected_global = f"{type(hyper_parameters).__module__}.{type(hyper_parameters).__qualname__}"
    assert expected_global in caplog.text
    assert "placeholder" in caplog.text


def test_lightning_ckpt_with_plain_values(tmp_path: Path) -> None:
    sd = _state_dict()
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": sd, "epoch": 1, "hyper_parameters": {"lr": 0.1}}, path)

    contents = read_checkpoint(path)

    _assert_same_tensors(contents.tensors, sd)
    assert contents.loader == "restricted_unpickler"
    assert contents.ignored_entries == ("epoch", "hyper_parameters")


@pytest.mark.parametrize("with_namespace", [False, True])
def test_legacy_non_zip_format(tmp_path: Path, with_namespace: bool) -> None:
    sd = _state_dict()
    payload: dict[str, Any] = {"state_dict": sd}
    if with_namespace:
        payload["hyper_parameters"] = argparse.Namespace(lr=1)
    path = tmp_path / "legacy.pt"
    torch.save(payload, path, _use_new_zipfile_serialization=False)
    assert path.read_bytes()[:2] != b"PK"

    contents = read_checkpoint(path)

    _assert_same_tensors(contents.tensors, sd)
    assert contents.source_format == "torch-legacy"
    assert contents.loader == "restricted_unpickler"
    assert contents.ignored_entries == (("hyper_parameters",) if with_namespace else ())


def test_global_mmap_setting_does_not_break_legacy_files(tmp_path: Path) -> None:
    from torch.utils.serialization import config

    sd = _state_dict()
    path = tmp_path / "legacy.pth"
    torch.save({"state_dict": sd, "hp": HParams()}, path, _use_new_zipfile_serialization=False)
    old = config.load.mmap
    config.load.mmap = True
    try:
        contents = read_checkpoint(path)
    finally:
        config.load.mmap = old
    _assert_same_tensors(contents.tensors, sd)


def test_safetensors_round_trip_with_metadata(tmp_path: Path) -> None:
    sd = _state_dict()
    sd["transposed"] = torch.arange(12.0).reshape(3, 4).t()  # non-contiguous
    sd["tied"] = sd["encoder.conv.bias"]  # shares memory with another entry
    path = tmp_path / "icm.safetensors"
    meta = {"format": "pt", "source": "icm.ckpt", "icm_version": "1"}

    write_safetensors_atomic(sd, path, metadata=meta)
    contents = read_checkpoint(path)

    _assert_same_tensors(contents.tensors, {k: v.contiguous() for k, v in sd.items()})
    assert contents.metadata == meta
    assert contents.source_format == "safetensors"
    assert contents.loader == "safetensors"
    assert contents.ignored_entries == ()


def test_safetensors_content_behind_a_pickle_extension_is_sniffed(tmp_path: Path) -> None:
    sd = _state_dict()
    path = tmp_path / "diffusion_pytorch_model.bin"
    save_file(dict(sd), str(path), metadata={"a": "b"})

    contents = read_checkpoint(path)

    _assert_same_tensors(contents.tensors, sd)
    assert contents.loader == "safetensors"
    assert contents.metadata == {"a": "b"}


_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.uint8, torch.bool]


@settings(max_examples=25, deadline=None)
@given(
    entries=st.dictionaries(
        keys=st.from_regex(r"[a-z][a-z0-9_]{0,6}(\.[a-z0-9_]{1,6}){0,3}", fullmatch=True),
        values=st.tuples(
            st.lists(st.integers(0, 4), min_size=0, max_size=3), st.sampled_from(_DTYPES)
        ),
        min_size=1,
        max_size=6,
    ),
    fmt=st.sampled_from(["safetensors", "zip", "legacy"]),
)
def test_round_trip_property(entries: dict[str, tuple[list[int], torch.dtype]], fmt: str) -> None:
    sd = {name: torch.randn(shape).mul(3).to(dtype) for name, (shape, dtype) in entries.items()}
    with tempfile.TemporaryDirectory() as tmp:
        if fmt == "safetensors":
            path = Path(tmp) / "w.safetensors"
            write_safetensors_atomic(sd, path)
        else:
            path = Path(tmp) / "w.pth"
            torch.save(sd, path, _use_new_zipfile_serialization=fmt == "zip")
        contents = read_checkpoint(path)
        assert sorted(os.listdir(tmp)) == [path.name]
    assert set(contents.tensors) == set(sd)
    for name, tensor in sd.items():
        assert contents.tensors[name].dtype == tensor.dtype
        assert torch.equal(contents.tensors[name], tensor)


# ----------------------------------------------------------------------------- safety


@pytest.mark.parametrize("attack", ATTACK_NAMES)
def test_attack_payloads_are_live_with_plain_pickle(tmp_path: Path, attack: str) -> None:
    """Guard against vacuous safety tests: plain pickle really creates the file."""
    target = tmp_path / "pwned"
    result = pickle.loads(pickle.dumps(_attacks(target)[attack], protocol=2))  # noqa: S301
    if hasattr(result, "close"):
        result.close()
    assert target.exists()


@pytest.mark.parametrize("attack", ATTACK_NAMES)
@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_restricted_unpickler_never_runs_reduce_targets(tmp_path: Path, attack: str, protocol: int) -> None:
    target = tmp_path / "pwned"
    data = pickle.dumps({"evil": _attacks(target)[attack], "x": [1, 2]}, protocol=protocol)
    module = RestrictedPickle()

    result = module.loads(data)

    assert not target.exists()
    assert isinstance(result["evil"], CheckpointPlaceholder)
    assert result["x"] == [1, 2]
    assert module.placeholders  # the refused globals were recorded
    assert not any(name.startswith(("collections.", "torch.")) for name in module.placeholders)


def test_restricted_unpickler_never_imports_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A module of this test's own, never imported before, whose import leaves a mark on disk."""
    module_name = f"icm_unpickle_probe_{tmp_path.name.replace('-', '_')}"
    mark = tmp_path / "imported"
    (tmp_path / f"{module_name}.py").write_text(f"open({str(mark)!r}, 'w').close()\nclass Zen:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    data = f"c{module_name}\nZen\n(tR.".encode()
    module = RestrictedPickle()

    result = module.loads(data)

    assert module_name not in sys.modules and not mark.exists()
    assert isinstance(result, CheckpointPlaceholder)
    assert module.placeholders == {f"{module_name}.Zen"}
    plain = pickle.loads(data)  # noqa: S301 - the probe is live: plain pickle imports it
    try:
        assert mark.exists() and type(plain).__name__ == "Zen"
    finally:
        sys.modules.pop(module_name, None)


def _build_on_global_pickle(module: str, name: str) -> bytes:
    """protocol-2 pickle: GLOBAL module.name, then BUILD with slot state __defaults__=(1,)."""
    key = b"__defaults__"
    return (
        b"\x80\x02c" + f"{module}\n{name}\n".encode()
        + b"N}X" + len(key).to_bytes(4, "little") + key + b"K\x01\x85s\x86b."
    )  # fmt: skip


@pytest.mark.parametrize(
    ("module", "name"),
    [("torch._utils", "_rebuild_tensor_v2"), ("argparse", "Namespace"), ("torch", "Tensor")],
)
def test_build_on_a_global_is_refused(module: str, name: str) -> None:
    before = torch._utils._rebuild_tensor_v2.__defaults__
    data = _build_on_global_pickle(module, name)
    with pytest.raises(pickle.UnpicklingError, match="BUILD"):
        RestrictedPickle().loads(data)
    assert torch._utils._rebuild_tensor_v2.__defaults__ == before
    assert not hasattr(placeholder_for("argparse.Namespace"), "__defaults__")


def test_extension_opcodes_and_placeholder_class_mutation_are_refused() -> None:
    with pytest.raises(pickle.UnpicklingError, match="EXT"):
        RestrictedPickle().loads(b"\x80\x02\x82\x01.")
    with pytest.raises(AttributeError):
        placeholder_for("os.system").__call__ = print  # type: ignore[method-assign]


def test_storage_load_from_bytes_is_not_allowed() -> None:
    """Plain-pickled tensors go through torch.storage._load_from_bytes -> full torch.load."""
    module = RestrictedPickle()

    # The placeholder "storage" cannot be turned into a tensor: the rebuild fails loudly.
    with pytest.raises(pickle.UnpicklingError, match="storage records"):
        module.loads(pickle.dumps(torch.ones(3)))

    assert "torch.storage._load_from_bytes" in module.placeholders


@pytest.mark.parametrize("attack", ATTACK_NAMES)
def test_raw_pickle_named_pth_is_never_executed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, attack: str) -> None:
    target = tmp_path / "pwned"
    path = tmp_path / "model.pth"
    with path.open("wb") as handle:
        pickle.dump({"w": [1.0, 2.0], "evil": _attacks(target)[attack]}, handle, protocol=2)
    spy = _LoadSpy(monkeypatch)

    with pytest.raises(CheckpointError) as excinfo:
        read_checkpoint(path)

    assert not target.exists()
    assert "model.pth" in str(excinfo.value)
    assert spy.modes == []  # refused by the restricted reader alone


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4:UserWarning")
@pytest.mark.parametrize("attack", ATTACK_NAMES)
@pytest.mark.parametrize("layout", ["zip", "zip-protocol4", "legacy"])
@pytest.mark.parametrize("where", ["top_level", "inside_state_dict"])
def test_torch_saved_evil_checkpoint_is_neutralised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, attack: str, layout: str, where: str
) -> None:
    target = tmp_path / "pwned"
    sd = _state_dict()
    evil = _attacks(target)[attack]
    if where == "top_level":
        payload: dict[str, Any] = {"state_dict": sd, "evil": evil}
        expected_ignored: tuple[str, ...] = ("evil",)
    else:
        payload = {**sd, "evil": evil}
        expected_ignored = ("evil",)
    path = tmp_path / "evil.ckpt"
    kwargs: dict[str, Any] = {"_use_new_zipfile_serialization": layout != "legacy"}
    if layout == "zip-protocol4":
        kwargs["pickle_protocol"] = 4
    torch.save(payload, path, **kwargs)
    spy = _LoadSpy(monkeypatch)

    contents = read_checkpoint(path)

    assert not target.exists()
    assert spy.modes == []  # neutralised without torch.load
    assert contents.loader == "restricted_unpickler"
    assert contents.source_format == ("torch-legacy" if layout == "legacy" else "torch-zip")
    _assert_same_tensors(contents.tensors, sd)
    assert contents.ignored_entries == expected_ignored


def test_evil_object_becomes_placeholder_in_loaded_object(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.ones(2), "evil": _attacks(target)["open"]}, path)

    result = read_torch_file(path)
    loaded = result.obj

    assert not target.exists()
    assert torch.equal(loaded["w"], torch.ones(2))
    assert isinstance(loaded["evil"], CheckpointPlaceholder)
    open_global = f"{builtins.open.__module__}.{builtins.open.__qualname__}"  # io.open
    assert loaded["evil"].placeholder_for_global == open_global
    assert loaded["evil"].args == (str(target), "w")
    assert result.placeholders == {open_global}
    assert result.stored_bytes == 8


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_archive_is_rejected_without_jit_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))

    def no_jit_load(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("torch.jit.load must not be called")

    monkeypatch.setattr(torch.jit, "load", no_jit_load)
    with pytest.raises(CheckpointError, match="TorchScript") as excinfo:
        read_checkpoint(path)
    assert "scripted.pt" in str(excinfo.value)


def test_force_weights_only_env_does_not_matter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.load is never used, so torch's environment switches cannot change what is loaded."""
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": _state_dict(), "hyper_parameters": HParams()}, path)
    monkeypatch.setenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "1")

    _assert_same_tensors(read_checkpoint(path).tensors, _state_dict())


# ----------------------------------------------------------------------------- broken files


@pytest.mark.parametrize("layout", ["zip", "legacy", "legacy-namespace"])
def test_truncated_pth_raises_checkpoint_error(tmp_path: Path, layout: str) -> None:
    payload: dict[str, Any] = {"state_dict": _state_dict()}
    if layout == "legacy-namespace":
        payload["hp"] = argparse.Namespace(a=1)
    full = tmp_path / "full.pth"
    torch.save(payload, full, _use_new_zipfile_serialization=layout == "zip")
    data = full.read_bytes()
    path = tmp_path / "half_downloaded.pth"
    path.write_bytes(data[: len(data) // 2])

    with pytest.raises(CheckpointError) as excinfo:
        read_checkpoint(path)

    message = str(excinfo.value)
    assert "half_downloaded.pth" in message
    assert "truncated or corrupt" in message
    assert "Re-download" in message
    assert excinfo.value.__cause__ is not None  # original exception chained


@pytest.mark.parametrize("content", [b"", b"\x00" * 64, os.urandom(4096), b"PK\x03\x04garbage"], ids=["empty", "zeros", "random", "fake-zip"])
def test_garbage_bytes_raise_checkpoint_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "garbage.ckpt"
    path.write_bytes(content)

    with pytest.raises(CheckpointError, match="garbage.ckpt") as excinfo:
        read_checkpoint(path)
    assert excinfo.value.__cause__ is not None


@pytest.mark.parametrize("cut", ["half", "header_only", "eight_bytes"])
def test_truncated_safetensors_raises_checkpoint_error(tmp_path: Path, cut: str) -> None:
    full = tmp_path / "full.safetensors"
    write_safetensors_atomic(_state_dict(), full, metadata={"k": "v"})
    data = full.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    keep = {"half": len(data) // 2, "header_only": 8 + header_len, "eight_bytes": 8}[cut]
    path = tmp_path / "model_part.safetensors"
    path.write_bytes(data[:keep])

    with pytest.raises(CheckpointError) as excinfo:
        read_checkpoint(path)

    assert "model_part.safetensors" in str(excinfo.value)
    assert "truncated or corrupt" in str(excinfo.value)
    assert excinfo.value.__cause__ is not None


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "icm.safetensors"
    with pytest.raises(CheckpointError, match="not found") as excinfo:
        read_checkpoint(path)
    assert str(path) in str(excinfo.value)


def test_directory_and_unknown_extension(tmp_path: Path) -> None:
    folder = tmp_path / "weights.pth"
    folder.mkdir()
    with pytest.raises(CheckpointError, match="not a regular file"):
        read_checkpoint(folder)
    other = tmp_path / "weights.onnx"
    other.write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"\.onnx"):
        read_checkpoint(other)


@pytest.mark.parametrize(
    "payload",
    [{"epoch": 3, "lr": 0.1}, {"model": {"w": 1}, "epoch": 1, "x": 2}, [torch.ones(2)], torch.ones(2)],
    ids=["no_tensors", "nested_model", "list", "bare_tensor"],
)
def test_file_without_state_dict(tmp_path: Path, payload: Any) -> None:
    path = tmp_path / "odd.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="odd.pt"):
        read_checkpoint(path)


def test_pickled_whole_object_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "whole.pth"
    torch.save(HParams(), path)
    with pytest.raises(CheckpointError, match="HParams") as excinfo:
        read_checkpoint(path)
    assert "state_dict" in str(excinfo.value)


def test_checkpoint_error_is_value_error() -> None:
    assert issubclass(CheckpointError, ValueError)


# ----------------------------------------------------------------------------- atomic write


def test_non_str_metadata_leaves_nothing_behind(tmp_path: Path) -> None:
    path = tmp_path / "out.safetensors"
    with pytest.raises(CheckpointError, match="str"):
        write_safetensors_atomic(_state_dict(), path, metadata={"epoch": 3})  # type: ignore[dict-item]
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "tensors",
    [{}, {"w": [1.0, 2.0]}, {3: torch.ones(1)}],
    ids=["empty", "non_tensor_value", "non_str_key"],
)
def test_invalid_tensors_are_rejected(tmp_path: Path, tensors: Any) -> None:
    with pytest.raises(CheckpointError):
        write_safetensors_atomic(tensors, tmp_path / "out.safetensors")
    assert os.listdir(tmp_path) == []


def test_failed_write_keeps_old_file_and_removes_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "out.safetensors"
    old = {"old": torch.zeros(2)}
    write_safetensors_atomic(old, path, metadata={"v": "1"})
    old_bytes = path.read_bytes()

    def half_write_then_fail(tensors: Any, filename: str, metadata: Any = None) -> None:
        Path(filename).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_io, "save_file", half_write_then_fail)
    with pytest.raises(CheckpointError, match="out.safetensors") as excinfo:
        write_safetensors_atomic({"new": torch.ones(3)}, path)

    assert isinstance(excinfo.value.__cause__, OSError)
    assert os.listdir(tmp_path) == ["out.safetensors"]
    assert path.read_bytes() == old_bytes
    monkeypatch.undo()
    assert read_checkpoint(path).metadata == {"v": "1"}


def test_target_only_appears_complete_via_replace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "out.safetensors"
    seen: list[tuple[str, bool, bool]] = []
    real_replace = os.replace

    def checking_replace(src: Any, dst: Any) -> None:
        src_path = Path(src)
        # At the moment of the swap, the temp file is complete and in the same directory,
        # and the target does not exist yet (no half-written target ever).
        assert src_path.parent == path.parent
        complete = load_file(str(src_path))
        seen.append((src_path.name, path.exists(), set(complete) == set(sd)))
        real_replace(src, dst)

    sd = _state_dict()
    monkeypatch.setattr(checkpoint_io.os, "replace", checking_replace)
    write_safetensors_atomic(sd, path, metadata={"a": "b"})

    assert len(seen) == 1
    tmp_name, target_existed, tmp_complete = seen[0]
    assert tmp_name != path.name and tmp_name.endswith(".tmp")
    assert not target_existed and tmp_complete
    assert os.listdir(tmp_path) == ["out.safetensors"]
    _assert_same_tensors(read_checkpoint(path).tensors, sd)


def test_write_into_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        write_safetensors_atomic({"w": torch.ones(1)}, tmp_path / "missing" / "w.safetensors")
