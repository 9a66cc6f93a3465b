"""Decoder checkpoints: strict loading from the official layout, and conversion to ``.safetensors``.

Accepted files: the official release (``12-0.00800-mat.pth``: a Lightning checkpoint whose ``state_dict`` holds
the 89 ``in_context_decoder.*`` keys), a bare state dict with or without that prefix, and ``.safetensors``.
Keys of the frozen SD model (``feature_extractor.*``), which training checkpoints may still carry, are ignored.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..config import DecoderConfig
from ..errors import WeightsNotFoundError
from ..modeling.decoder import InContextDecoder
from ..modeling.key_table import OFFICIAL_PREFIX, infer_decoder_config, official_key, our_key, to_official
from ..types import UNetFeatures
from .checkpoint_io import NonFiniteTensorError, check_finite, read_checkpoint, write_safetensors_atomic

logger = logging.getLogger(__name__)

OFFICIAL_DECODER_FILE = "12-0.00800-mat.pth"
IGNORED_PREFIXES = ("feature_extractor.",)
FORMAT_TAG = "icm-decoder"


class DecoderCheckpointError(ValueError):
    """The file is a checkpoint, but not one our decoder can load strictly."""


def load_decoder(path: str | Path) -> InContextDecoder:
    """Read a decoder checkpoint and build the matching decoder (widths read from the tensors), fp32, eval.

    Raises:
        WeightsNotFoundError: no file at ``path``.
        CheckpointError: the file is unreadable, corrupt or claims more data than it holds.
        DecoderCheckpointError: keys, shapes or dtypes are not those of a decoder; NaN/Inf weights.
    """
    file = Path(path)
    if not file.is_file():
        raise WeightsNotFoundError(
            f"decoder checkpoint not found: expected a file at {file}. Download the official IconMatting decoder "
            f"'{OFFICIAL_DECODER_FILE}' (released with the GitHub repository tiny-smart/in-context-matting) and "
            "put it there (in ComfyUI: models/icm/)."
        )
    contents = read_checkpoint(file)
    return decoder_from_tensors(contents.tensors, source=str(file))


def decoder_from_tensors(tensors: dict[str, torch.Tensor], source: str = "state dict") -> InContextDecoder:
    """Build and strictly load a decoder from official-layout tensors (keys with or without the prefix).

    The decoder is first built on the ``meta`` device (no memory) from the widths the tensors imply; only when
    every key, shape and dtype kind matches and every value is finite is it materialised and filled, so a file
    claiming huge widths costs nothing.
    """
    ours, names, unexpected = _map_keys(tensors, source)
    try:
        config = infer_decoder_config({official_key(k): v for k, v in ours.items()})
    except ValueError as error:
        raise DecoderCheckpointError(f"{source}: {error}") from error
    _check_widths(config, source)
    with torch.device("meta"):
        decoder = InContextDecoder(config)
    expected = decoder.state_dict()
    _check_layout(ours, names, unexpected, expected, config, source)
    try:
        check_finite({names[k]: v for k, v in ours.items()}, source, _FIX_NON_FINITE)
    except NonFiniteTensorError as error:
        raise DecoderCheckpointError(str(error)) from error
    decoder.to_empty(device="cpu")
    decoder.load_state_dict({k: v.to(expected[k].dtype) for k, v in ours.items()}, strict=True)
    return decoder.eval()


_FIX_NON_FINITE = (
    "The weights are damaged (or came from a diverged training run): re-download the official decoder or use an "
    "earlier checkpoint."
)


def _map_keys(
    tensors: dict[str, torch.Tensor], source: str
) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str]]:
    """``(our key -> tensor, our key -> key as stored, unexpected stored keys)``; frozen SD keys are dropped."""
    ours: dict[str, torch.Tensor] = {}
    names: dict[str, str] = {}
    unexpected: list[str] = []
    for key, value in tensors.items():
        if key.startswith(IGNORED_PREFIXES):
            continue
        mapped = our_key(key)
        if mapped is None:
            unexpected.append(key)
        else:
            ours[mapped] = value
            names[mapped] = key
    ignored = sum(1 for key in tensors if key.startswith(IGNORED_PREFIXES))
    if ignored:
        logger.info("%s: ignored %d frozen SD tensors (feature_extractor.*)", source, ignored)
    return ours, names, unexpected


def _check_widths(config: DecoderConfig, source: str) -> None:
    widths = {name: value for name, value in config.__dict__.items() if name != "image_size"}
    flat = [w for value in widths.values() for w in (value if isinstance(value, tuple) else (value,))]
    if min(flat) < 1:
        raise DecoderCheckpointError(
            f"{source}: its tensors imply a decoder with a zero width ({config}); expected positive widths as in "
            "the official release. Re-download or re-convert the file."
        )


def _check_layout(
    ours: dict[str, torch.Tensor],
    names: dict[str, str],
    unexpected: list[str],
    expected: dict[str, torch.Tensor],
    config: DecoderConfig,
    source: str,
) -> None:
    """Every key of the (meta) decoder present with its exact shape and a matching dtype kind; nothing else."""
    # Keys that match a table row but are not in this decoder (e.g. a 4th convstream conv) are unexpected too.
    unexpected = unexpected + [names[k] for k in ours if k not in expected]
    missing = [official_key(k) for k in expected if k not in ours]
    misshaped = [
        f"{official_key(k)} (expected {tuple(v.shape)}, got {tuple(ours[k].shape)})"
        for k, v in expected.items()
        if k in ours and tuple(ours[k].shape) != tuple(v.shape)
    ]
    mistyped = [
        f"{official_key(k)} (expected {v.dtype}, got {ours[k].dtype})"
        for k, v in expected.items()
        if k in ours and ours[k].is_floating_point() != v.is_floating_point()
    ]
    if missing or unexpected or misshaped or mistyped:
        problems = []
        labelled = (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped),
                    ("wrong dtype", mistyped))  # fmt: skip
        for label, items in labelled:
            if items:
                more = " ..." if len(items) > 12 else ""
                problems.append(f"{label} keys ({len(items)}): " + ", ".join(items[:12]) + more)
        raise DecoderCheckpointError(
            f"{source} is not a complete IconMatting decoder for widths {config}: " + "; ".join(problems)
            + f". Expected the {len(expected)} '{OFFICIAL_PREFIX}*' tensors of the official release; re-download "
            "or re-convert the file."
        )


def save_decoder(decoder: InContextDecoder, path: str | Path, extra_metadata: dict[str, str] | None = None) -> None:
    """Write the decoder in the official key layout as ``.safetensors`` (atomically)."""
    metadata = {"format": FORMAT_TAG, "decoder_config": json.dumps(decoder.config.__dict__, default=list)}
    metadata.update(extra_metadata or {})
    state = {k: v.detach().cpu() for k, v in to_official(decoder.state_dict()).items()}
    write_safetensors_atomic(state, Path(path), metadata)


def convert_decoder(source: str | Path, target: str | Path, overwrite: bool = False) -> float:
    """Convert any accepted decoder file to ``.safetensors``; reload both and check they give identical alphas.

    The file is written under a partial name next to ``target``, reloaded and checked there, and only then renamed
    onto ``target``; a failed check removes only that partial file. ``target`` is never the source, and an existing
    ``target`` is replaced only with ``overwrite``.

    Returns:
        The max abs alpha difference between the source and the converted file on a random input (0.0).
    """
    from ..io.file_safety import check_new_file, publish, staged

    target = Path(target)
    if target.suffix != ".safetensors":
        raise ValueError(f"the converted file must end in .safetensors, got {target.name}")
    check_new_file(target, [Path(source)], overwrite, "the converted file")
    original = load_decoder(source)
    with staged(target) as temp:
        save_decoder(original, temp, {"converted_from": Path(source).name})
        difference = _max_output_difference(original, load_decoder(temp))
        if difference != 0.0:
            raise RuntimeError(f"conversion check failed: outputs differ by {difference}; {target} was not written")
        publish(temp, target, overwrite)
    return difference


def random_decoder_inputs(
    config: DecoderConfig, batch: int = 1, tokens: int = 5, seed: int = 0
) -> tuple[torch.Tensor, UNetFeatures, torch.Tensor]:
    """Random but well-formed decoder inputs ``(tokens [K, C], features, images [B, 3, S, S])``."""
    generator = torch.Generator().manual_seed(seed)
    low, high = config.attention_resolutions
    channels, size = config.feature_channels, config.image_size

    def attention(side: int) -> torch.Tensor:
        logits = torch.randn(batch, side, side, side * side, generator=generator)
        return logits.softmax(dim=-1)

    features = UNetFeatures(
        low=torch.randn(batch, channels, low, low, generator=generator),
        high=torch.randn(batch, channels, high, high, generator=generator),
        attention_low=attention(low),
        attention_high=attention(high),
    )
    images = torch.rand(batch, 3, size, size, generator=generator) * 2 - 1
    return torch.randn(tokens, channels, generator=generator), features, images


def _max_output_difference(first: InContextDecoder, second: InContextDecoder) -> float:
    tokens, features, images = random_decoder_inputs(first.config)
    with torch.no_grad():
        a = first(tokens, features, images).alpha
        b = second(tokens, features, images).alpha
    return float((a - b).abs().max())
