"""Explicit map between our decoder's state-dict keys and the official IconMatting checkpoint keys.

Official keys carry the LightningModule attribute prefix ``in_context_decoder.``. Every row maps one of our
module prefixes onto one official prefix; ``{i}`` stands for a list index. The mapping is checked to be a
bijection on the full key set whenever it is used, so a key can never be matched "by accident".
"""

from __future__ import annotations

import re

import torch

from ..config import DecoderConfig

OFFICIAL_PREFIX = "in_context_decoder."

# (our prefix, official prefix without OFFICIAL_PREFIX)
KEY_TABLE: tuple[tuple[str, str], ...] = (
    ("token_norm.", "in_context_fusion.attn_module.norm."),
    ("intra_similarity.{i}.key_norm.", "in_context_fusion.attn_module_list.{i}.ln."),
    ("intra_similarity.{i}.conv.", "in_context_fusion.attn_module_list.{i}.conv."),
    ("feature_projection.{i}.", "in_context_fusion.ft_module_list.{i}."),
    ("attention_fusion.{i}.", "in_context_fusion.ft_attn_module_list.{i}."),
    ("scale_fusion.", "in_context_fusion.fusion.module_list.0.conv."),
    ("detail_stream.{i}.", "detail_decoder.convstream.convs.{i}."),
    ("detail_fusion.{i}.", "detail_decoder.fusion_blks.{i}.conv."),
    ("matting_head.conv.", "detail_decoder.matting_head.matting_convs.0."),
    ("matting_head.bn.", "detail_decoder.matting_head.matting_convs.1."),
    ("matting_head.out.", "detail_decoder.matting_head.matting_convs.3."),
)


def _pattern(prefix: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(prefix).replace(re.escape("{i}"), r"(\d+)") + "(.*)$")


_OURS_TO_OFFICIAL = [(_pattern(ours), official) for ours, official in KEY_TABLE]
_OFFICIAL_TO_OURS = [(_pattern(official), ours) for ours, official in KEY_TABLE]


def _translate(key: str, rules: list[tuple[re.Pattern[str], str]]) -> str | None:
    for pattern, target in rules:
        match = pattern.match(key)
        if match:
            *index, rest = match.groups()
            return target.replace("{i}", index[0]) + rest if index else target + rest
    return None


def official_key(our_key: str) -> str:
    """Our key -> official checkpoint key (with the ``in_context_decoder.`` prefix)."""
    translated = _translate(our_key, _OURS_TO_OFFICIAL)
    if translated is None:
        raise KeyError(f"decoder key {our_key!r} has no row in KEY_TABLE")
    return OFFICIAL_PREFIX + translated


def our_key(official: str) -> str | None:
    """Official key (with or without the prefix) -> our key, or None when no table row matches."""
    bare = official[len(OFFICIAL_PREFIX) :] if official.startswith(OFFICIAL_PREFIX) else official
    return _translate(bare, _OFFICIAL_TO_OURS)


def to_official(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename our state dict to the official layout (what a released checkpoint's ``state_dict`` holds)."""
    return {official_key(key): value for key, value in state_dict.items()}


def infer_decoder_config(official: dict[str, torch.Tensor]) -> DecoderConfig:
    """Read the decoder widths from an official-layout state dict (keys with or without the prefix).

    Lets a decoder trained for another UNet width (e.g. 320-channel test fixtures) or image size load.
    """
    ours = {our_key(k): v for k, v in official.items() if our_key(k) is not None}
    required = [
        "token_norm.weight", "intra_similarity.1.key_norm.weight", "intra_similarity.0.conv.weight",
        "feature_projection.0.conv.weight", "detail_fusion.0.conv.weight", "detail_fusion.1.conv.weight",
        "detail_fusion.2.conv.weight", "detail_fusion.3.conv.weight", "matting_head.conv.weight",
        "detail_stream.0.conv.weight", "detail_stream.1.conv.weight", "detail_stream.2.conv.weight",
    ]
    missing = [OFFICIAL_PREFIX + _translate(k, _OURS_TO_OFFICIAL) for k in required if k not in ours]
    if missing:
        raise ValueError(
            "cannot read the decoder widths: the checkpoint lacks " + ", ".join(missing) + ". Expected an "
            "IconMatting decoder checkpoint (keys 'in_context_decoder.*')."
        )
    high_tokens = ours["intra_similarity.1.key_norm.weight"].shape[0]
    high_grid = round(high_tokens**0.5)
    if high_grid * high_grid != high_tokens:
        raise ValueError(f"attention LayerNorm width {high_tokens} is not a square number of tokens.")
    return DecoderConfig(
        feature_channels=ours["token_norm.weight"].shape[0],
        image_size=high_grid * 16,
        attention_channels=ours["intra_similarity.0.conv.weight"].shape[0],
        projected_channels=ours["feature_projection.0.conv.weight"].shape[0],
        detail_channels=tuple(ours[f"detail_stream.{i}.conv.weight"].shape[0] for i in range(3)),
        fusion_channels=tuple(ours[f"detail_fusion.{j}.conv.weight"].shape[0] for j in range(4)),
        head_channels=ours["matting_head.conv.weight"].shape[0],
    )
