"""Hostile files: no loader allocates much more than the file holds, and poisoned numbers are named.

The memory cases run in one subprocess (so ``ru_maxrss`` measures only the loaders): it first loads a valid file
of each kind (lazy imports, allocator warm-up), then every hostile file in turn, and reports the growth of its
peak RSS and the error raised. Each hostile file is small (< ~1 MB) but claims hundreds of MB to GBs.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from icm_core.context_io import ContextFileError, load_context, save_context
from icm_core.modeling.key_table import to_official
from icm_core.pipeline import ReferenceContext
from icm_core.tiny import build_tiny_decoder
from icm_core.weights.checkpoint_io import CheckpointError, read_checkpoint
from icm_core.weights.decoder import DecoderCheckpointError, load_decoder
from icm_core.weights.restricted_unpickler import RestrictedUnpickler

REPO_ROOT = Path(__file__).resolve().parents[1]
MAX_GROWTH_MB = 50
GB = 1 << 30

# --------------------------------------------------------------------------- builders of hostile files


def _zip(members: list[tuple[str, bytes, int, int]]) -> bytes:
    """A zip of ``(name, stored bytes, method, uncompressed size)`` members, written by hand.

    Stored members get their true CRC; compressed ones a bogus CRC (a reader notices only after inflating).
    """
    out, central = bytearray(), bytearray()
    for name, data, method, size in members:
        offset, raw, crc = len(out), name.encode(), zlib.crc32(data) if method == 0 else 0
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0, crc, len(data), size, len(raw), 0)
        out += raw + data
        central += struct.pack(
            "<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0, crc, len(data), size, len(raw), 0, 0, 0, 0, 0,
            offset,
        ) + raw  # fmt: skip
    count = len(members)
    return bytes(out + central + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, len(central), len(out), 0))


def _storage_pickle(numel: int) -> bytes:
    """protocol-2 ``{"w": _rebuild_tensor_v2(<storage "0": FloatStorage x numel>, 0, (numel,), (1,), ...)}``."""
    pid = b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuJ"
    pid += struct.pack("<i", numel) + b"tQ"
    size = b"J" + struct.pack("<i", numel)
    return (
        b"\x80\x02}X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n(" + pid + b"K\x00" + size + b"\x85K\x01\x85"
        b"\x89ccollections\nOrderedDict\n)RtRs."
    )  # fmt: skip


def _bytearray_pickle(size: int) -> bytes:
    """protocol-2 ``{"state_dict": bytearray(size)}``: a few bytes that allocate ``size`` when unpickled."""
    return b"\x80\x02}X\n\x00\x00\x00state_dictc__builtin__\nbytearray\nJ" + struct.pack("<i", size) + b"\x85Rs."


def _call_pickle(module: str, name: str, size: int) -> bytes:
    """protocol-2 ``{"state_dict": module.name(size)}``."""
    return b"\x80\x02}X\n\x00\x00\x00state_dictc" + f"{module}\n{name}\n".encode() + b"J" + struct.pack(
        "<i", size
    ) + b"\x85Rs."


def _deflate_bomb(size: int) -> bytes:
    """A raw deflate stream of ``size`` zero bytes (``size`` a multiple of 16 MiB), ~1000x smaller."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(bytes(16 << 20)) + compressor.flush(zlib.Z_FULL_FLUSH)
    return block * (size // (16 << 20)) + compressor.flush()


def _torch_zip(pkl: bytes, records: list[tuple[str, bytes, int, int]] = ()) -> bytes:  # type: ignore[assignment]
    base = [("archive/data.pkl", pkl, 0, len(pkl)), ("archive/byteorder", b"little", 0, 6)]
    return _zip(base + [(f"archive/data/{key}", data, method, size) for key, data, method, size in records])


def _tiny_state() -> dict[str, torch.Tensor]:
    return {k: v.clone().contiguous() for k, v in to_official(build_tiny_decoder(seed=1).state_dict()).items()}


def _huge_width_decoder(path: Path) -> Path:
    """A tiny decoder whose intra-similarity conv claims 100000 output channels (a zero-sized tensor)."""
    state = _tiny_state()
    key = "in_context_decoder.in_context_fusion.attn_module_list.0.conv.weight"
    state[key] = torch.zeros(100_000, 0, 3, 3)
    save_file(state, str(path))
    return path


def _safetensors(header: dict, data: bytes, claimed_header_len: int | None = None) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if claimed_header_len is None else claimed_header_len) + raw + data


def _context(tokens: int = 3, channels: int = 8, grid: int = 4) -> ReferenceContext:
    masks = torch.zeros(1, grid, grid, dtype=torch.bool)
    masks.view(-1)[:tokens] = True
    return ReferenceContext(
        tokens=torch.randn(tokens, channels), token_masks=masks, reference_sizes=((64, 48),), fingerprint="0123abcd"
    )


def _write_hostile_files(folder: Path) -> dict[str, tuple[str, Path]]:
    """``case -> (loader kind, file)`` for the memory cases."""
    files: dict[str, tuple[str, Path]] = {}

    def put(case: str, kind: str, name: str, data: bytes) -> None:
        path = folder / name
        path.write_bytes(data)
        files[case] = (kind, path)

    files["decoder_width_100000"] = ("decoder", _huge_width_decoder(folder / "wide.safetensors"))
    put("bytearray_2gb_zip", "checkpoint", "bytearray.pth", _torch_zip(_bytearray_pickle(2_000_000_000)))
    put("bytearray_2gb_raw_pickle", "checkpoint", "bytearray_raw.ckpt", _bytearray_pickle(2_000_000_000))
    put("bytearray8_2gb", "checkpoint", "bytearray8.pth",
        _torch_zip(b"\x80\x05\x96" + struct.pack("<Q", 2_000_000_000) + b"\x00" * 600 + b"."))  # fmt: skip
    put("float_storage_2gb", "checkpoint", "storage_call.pth", _torch_zip(_call_pickle("torch", "FloatStorage", 500_000_000)))
    put("tensor_2gb", "checkpoint", "tensor_call.pth", _torch_zip(_call_pickle("torch", "Tensor", 500_000_000)))
    numel = GB // 4
    put("deflated_record_1gb", "checkpoint", "bomb.pth",
        _torch_zip(_storage_pickle(numel), [("0", _deflate_bomb(GB), 8, GB)]))  # fmt: skip
    put("record_smaller_than_claim", "checkpoint", "short_record.pth",
        _torch_zip(_storage_pickle(numel), [("0", b"\x00" * 16, 0, 16)]))  # fmt: skip
    put("safetensors_header_1gb", "checkpoint", "header.safetensors", _safetensors({}, b"\x00" * 64, GB))
    put("safetensors_short_data", "checkpoint", "short.safetensors",
        _safetensors({"w": {"dtype": "F32", "shape": [numel], "data_offsets": [0, GB]}}, b"\x00" * 16))  # fmt: skip
    huge_tokens = {"tokens": {"dtype": "F32", "shape": [numel, 1], "data_offsets": [0, GB]}}
    put("context_huge_tokens", "context", "ctx.safetensors", _safetensors(huge_tokens, b"\x00" * 64))
    return files


_RSS_SCRIPT = """
import json, resource, sys
from icm_core.context_io import load_context
from icm_core.weights.checkpoint_io import read_checkpoint
from icm_core.weights.decoder import load_decoder

loaders = {"decoder": load_decoder, "checkpoint": read_checkpoint, "context": load_context}
cases = json.loads(sys.argv[1])
for kind, warm in json.loads(sys.argv[2]).items():
    loaders[kind](warm)
results = {}
for case, (kind, path) in cases.items():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        loaders[kind](path)
        error = None
    except Exception as exc:  # reported to the test, which checks the class and message
        error = [type(exc).__name__, str(exc)]
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    results[case] = {"growth_mb": (after - before) / 1024, "error": error}
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def memory_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    folder = tmp_path_factory.mktemp("hostile")
    files = _write_hostile_files(folder)
    warm_decoder = folder / "ok_decoder.safetensors"
    save_file(_tiny_state(), str(warm_decoder))
    warm_checkpoint = folder / "ok.pth"
    torch.save({"state_dict": {"w": torch.ones(3)}}, warm_checkpoint)
    warm_context = save_context(_context(), folder / "ok_context.safetensors")
    warm = {"decoder": str(warm_decoder), "checkpoint": str(warm_checkpoint), "context": str(warm_context)}
    cases = {case: (kind, str(path)) for case, (kind, path) in files.items()}
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, json.dumps(cases), json.dumps(warm)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for case, (_, path) in files.items():
        results[case]["size"] = path.stat().st_size
    return results


MEMORY_CASES = {
    # case: (error class, words the message must contain)
    "decoder_width_100000": ("DecoderCheckpointError", ["wrong shape", "attention_channels=100000", "re-download"]),
    "bytearray_2gb_zip": ("CheckpointError", ["bytearray() accepts bytes", "bytearray.pth", "truncated or corrupt"]),
    "bytearray_2gb_raw_pickle": ("CheckpointError", ["bytearray() accepts bytes", "legacy (non-zip)"]),
    "bytearray8_2gb": ("CheckpointError", ["BYTEARRAY8 claims 2000000000 bytes"]),
    "float_storage_2gb": ("CheckpointError", ["'StorageType' object is not callable"]),
    "tensor_2gb": ("CheckpointError", ["'TensorType' object is not callable"]),
    "deflated_record_1gb": ("CheckpointError", ["record 'archive/data/0' is compressed", "inflating to 1073741824"]),
    "record_smaller_than_claim": ("CheckpointError", ["holds 16 bytes but the pickle claims 268435456 x torch.float32"]),
    "safetensors_header_1gb": ("CheckpointError", ["header claims 1073741824 bytes", "header.safetensors"]),
    "safetensors_short_data": ("CheckpointError", ["tensor 'w' (F32 [268435456]) needs 1073741824 bytes"]),
    "context_huge_tokens": ("CheckpointError", ["tensor 'tokens'", "needs 1073741824 bytes"]),
}


@pytest.mark.parametrize("case", sorted(MEMORY_CASES))
def test_hostile_file_is_refused_without_allocating(memory_results: dict[str, dict], case: str) -> None:
    result = memory_results[case]
    assert result["size"] < 2_000_000, "the hostile files themselves are small"
    assert result["growth_mb"] < MAX_GROWTH_MB, f"{case}: peak RSS grew by {result['growth_mb']:.0f} MB"
    assert result["error"] is not None, f"{case} was loaded"
    error_class, words = MEMORY_CASES[case]
    assert result["error"][0] == error_class, result["error"]
    for word in words:
        assert word in result["error"][1], (word, result["error"][1])


# --------------------------------------------------------------------------- pickles (in process)


def test_storage_views_larger_than_their_record_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "expanded.pth"
    torch.save({"w": torch.ones(1).expand(10**8)}, path)  # 4 bytes stored, 400 MB described
    with pytest.raises(CheckpointError, match=r"needs 400000000 bytes but its storage record holds 4"):
        read_checkpoint(path)


def test_many_tensors_viewing_one_record_are_refused(tmp_path: Path) -> None:
    shared = torch.zeros(256 * 1024)  # 1 MB stored once
    path = tmp_path / "aliased.pth"
    torch.save({f"w{i}": shared[:] for i in range(64)}, path)
    with pytest.raises(CheckpointError, match=r"stores 1048576 bytes of tensor data but its state dict describes"):
        read_checkpoint(path)
    torch.save({"a": shared, "tied": shared}, path)  # tied weights stay fine
    assert set(read_checkpoint(path).tensors) == {"a", "tied"}


def test_legacy_storage_claims_beyond_the_file_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(4)}, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    # The pickle stores numel 4 as BININT1 after the 'cpu' location; claim 2**30 elements instead.
    marker = b"X\x03\x00\x00\x00cpuq"
    start = data.index(marker) + len(marker) + 1
    assert data[start : start + 2] == b"K\x04"
    hostile = data[:start] + b"J" + struct.pack("<i", 1 << 30) + data[start + 2 :]
    path.write_bytes(hostile)
    with pytest.raises(CheckpointError, match=r"claims \d+ bytes of tensor data but only \d+ bytes follow"):
        read_checkpoint(path)


def test_opcode_budget_bounds_the_objects_a_pickle_can_create() -> None:
    data = pickle.dumps([[] for _ in range(1000)], protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="more than 500 opcodes"):
        RestrictedUnpickler(__import__("io").BytesIO(data), max_bytes=len(data), max_opcodes=500).load()


def test_legit_bytes_sets_and_parameters_still_load(tmp_path: Path) -> None:
    path = tmp_path / "mixed.ckpt"
    state = {"w": torch.nn.Parameter(torch.arange(6.0).reshape(2, 3)), "b": torch.ones(2, dtype=torch.float16)}
    extras = {"blob": b"abc", "buffer": bytearray(b"xy"), "tags": {"a", "b"}, "frozen": frozenset([1]), "z": 1j}
    for protocol in (2, 4, 5):
        torch.save({"state_dict": state, **extras}, path, pickle_protocol=protocol)
        contents = read_checkpoint(path)
        assert torch.equal(contents.tensors["w"], state["w"].detach())
        assert contents.tensors["b"].dtype == torch.float16


# --------------------------------------------------------------------------- poisoned numbers


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_decoder_weight_names_file_and_key(tmp_path: Path, value: float) -> None:
    state = _tiny_state()
    key = "in_context_decoder.detail_decoder.matting_head.matting_convs.0.weight"
    state[key].view(-1)[5] = value
    path = tmp_path / "poisoned.safetensors"
    save_file(state, str(path))
    with pytest.raises(DecoderCheckpointError) as error:
        load_decoder(path)
    message = str(error.value)
    assert str(path) in message and f"'{key}'" in message
    assert ("1 NaN and 0 Inf" if value != value else "0 NaN and 1 Inf") in message
    assert "re-download" in message


def test_non_finite_check_has_no_false_alarm_on_fp16_overflowing_sums(tmp_path: Path) -> None:
    state = {k: v.half() if v.is_floating_point() else v for k, v in _tiny_state().items()}
    key = "in_context_decoder.in_context_fusion.attn_module.norm.weight"
    state[key] = torch.full_like(state[key], 60000.0)  # finite, but the fp16 sum overflows
    path = tmp_path / "big.safetensors"
    save_file(state, str(path))
    assert torch.equal(load_decoder(path).token_norm.weight, torch.full((48,), 60000.0))


# --------------------------------------------------------------------------- saved contexts


def _rewrite(path: Path, tensors: dict | None = None, **metadata: str | None) -> Path:
    contents = read_checkpoint(path)
    meta = {k: v for k, v in {**contents.metadata, **metadata}.items() if v is not None}
    save_file({**contents.tensors, **(tensors or {})}, str(path), metadata=meta)
    return path


@pytest.fixture()
def saved_context(tmp_path: Path) -> Path:
    return save_context(_context(), tmp_path / "ctx.safetensors")


def test_context_round_trip_keeps_everything(saved_context: Path) -> None:
    context, loaded = _context(), load_context(saved_context)
    assert loaded.token_masks.dtype == torch.bool and loaded.reference_sizes == ((64, 48),)
    assert loaded.num_tokens == 3 and loaded.fingerprint == "0123abcd" and loaded.prompt_kind == "mask"
    assert torch.equal(loaded.token_masks, context.token_masks)


@pytest.mark.parametrize("value", [float("nan"), float("-inf")])
def test_context_with_non_finite_tokens_names_file_and_tensor(saved_context: Path, value: float) -> None:
    tokens = read_checkpoint(saved_context).tensors["tokens"].clone()
    tokens[1, 2] = value
    _rewrite(saved_context, {"tokens": tokens})
    with pytest.raises(ContextFileError) as error:
        load_context(saved_context)
    assert str(saved_context) in str(error.value) and "tensor 'tokens'" in str(error.value)
    assert "expected finite features" in str(error.value)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"fingerprint": None}, "metadata 'fingerprint' must be"),
        ({"prompt_kind": None}, "metadata 'prompt_kind' must be one of"),
        ({"prompt_kind": "lasso"}, "got 'lasso'"),
        ({"num_tokens": None}, "metadata 'num_tokens' must be a positive integer"),
        ({"num_tokens": "4"}, "metadata num_tokens (= K): 4 vs 3"),
        ({"token_grid": "48"}, "token_masks grid g (= metadata token_grid): 4 vs 48"),
        ({"token_channels": "1280"}, "tokens columns C (= metadata token_channels): 8 vs 1280"),
        ({"version": "2"}, "context format version '2' is not supported (expected '1')"),
        ({"format": None}, "is not a saved IconMatting reference context"),
    ],
    ids=["no-fingerprint", "no-kind", "bad-kind", "no-count", "wrong-count", "wrong-grid", "wrong-channels",
         "version", "format"],  # fmt: skip
)
def test_context_metadata_is_validated(saved_context: Path, change: dict, words: str) -> None:
    _rewrite(saved_context, **change)
    with pytest.raises(ContextFileError) as error:
        load_context(saved_context)
    assert words in str(error.value) and str(saved_context) in str(error.value)


@pytest.mark.parametrize(
    ("tensors", "words"),
    [
        ({"tokens": torch.randn(4, 8)}, "tokens rows K (= ones in token_masks): 4 vs 3"),
        ({"tokens": torch.randn(3, 8, 1)}, "tokens must be a float [K >= 1, C >= 1] tensor"),
        ({"token_masks": torch.ones(1, 4, 5, dtype=torch.uint8)}, "token_masks must be [R >= 1, g, g]"),
        ({"token_masks": torch.full((1, 4, 4), 2, dtype=torch.uint8)}, "token_masks must hold 0/1"),
        ({"reference_sizes": torch.tensor([[64, 48], [1, 1]])}, "reference_sizes rows (= references): 2 vs 1"),
        ({"reference_sizes": torch.tensor([[0, 48]])}, "reference_sizes must be int64 [R, 2] with sizes >= 1"),
        ({"extra": torch.ones(1)}, "expected exactly the tensors ['tokens', 'token_masks', 'reference_sizes']"),
    ],
    ids=["token-count", "token-rank", "mask-shape", "mask-values", "size-rows", "size-zero", "extra-tensor"],
)
def test_context_shapes_are_validated(saved_context: Path, tensors: dict, words: str) -> None:
    _rewrite(saved_context, tensors)
    with pytest.raises(ContextFileError) as error:
        load_context(saved_context)
    assert words in str(error.value), str(error.value)


def test_loader_errors_are_value_errors() -> None:
    for error in (CheckpointError, DecoderCheckpointError, ContextFileError):
        assert issubclass(error, ValueError)
