"""The one table of UNet sites IconMatting reads, shared by the diffusers and the ComfyUI feature backends.

Levels: ``"low"`` is the S/32 token grid (24x24 at 768 px), ``"high"`` the S/16 grid (48x48). The sites follow
the SD 2.x UNet layout (diffusers ``UNet2DConditionModel`` names, and ComfyUI/ldm ``UNetModel`` block indices),
which the tiny test UNets share.
"""

from __future__ import annotations

from dataclasses import dataclass

LEVELS = ("low", "high")


@dataclass(frozen=True)
class AttentionSite:
    """One self-attention layer whose probabilities are recorded.

    Attributes:
        diffusers_path: module path of the ``attn1`` layer in a diffusers ``UNet2DConditionModel``.
        comfy_key: ComfyUI attn1 patch key ``(block name, block index, transformer index)`` of the same layer in
            the ldm ``UNetModel`` (``transformer_options["patches_replace"]["attn1"][key]``).
        level: ``"low"`` or ``"high"`` token grid.
    """

    diffusers_path: str
    comfy_key: tuple[str, int, int]
    level: str


@dataclass(frozen=True)
class FeatureSite:
    """A block whose output (after its upsampler) is a matting feature.

    Attributes:
        diffusers_path: ``up_blocks.i`` in diffusers.
        comfy_output_block: index of the ldm ``output_blocks`` entry with the same output.
        level: ``"low"`` (S/32) or ``"high"`` (S/16).
    """

    diffusers_path: str
    comfy_output_block: int
    level: str


def _attn1(block: str, attention: int) -> str:
    return f"{block}.attentions.{attention}.transformer_blocks.0.attn1"


# In execution order. Mid-block attention (S/64) and the S/8 levels are not used.
ATTENTION_SITES: tuple[AttentionSite, ...] = (
    AttentionSite(_attn1("down_blocks.1", 0), ("input", 4, 0), "high"),
    AttentionSite(_attn1("down_blocks.1", 1), ("input", 5, 0), "high"),
    AttentionSite(_attn1("down_blocks.2", 0), ("input", 7, 0), "low"),
    AttentionSite(_attn1("down_blocks.2", 1), ("input", 8, 0), "low"),
    AttentionSite(_attn1("up_blocks.1", 0), ("output", 3, 0), "low"),
    AttentionSite(_attn1("up_blocks.1", 1), ("output", 4, 0), "low"),
    AttentionSite(_attn1("up_blocks.1", 2), ("output", 5, 0), "low"),
    AttentionSite(_attn1("up_blocks.2", 0), ("output", 6, 0), "high"),
    AttentionSite(_attn1("up_blocks.2", 1), ("output", 7, 0), "high"),
    AttentionSite(_attn1("up_blocks.2", 2), ("output", 8, 0), "high"),
)

FEATURE_SITES: tuple[FeatureSite, ...] = (
    FeatureSite("up_blocks.0", 2, "low"),
    FeatureSite("up_blocks.1", 5, "high"),
)

# The UNet forward can stop right after these (nothing later is used).
LAST_SITE_WITH_ATTENTION = ATTENTION_SITES[-1]
LAST_SITE_FEATURES_ONLY = FEATURE_SITES[-1]


def sites_at(level: str) -> tuple[AttentionSite, ...]:
    """Attention sites of one level, in execution order."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    return tuple(site for site in ATTENTION_SITES if site.level == level)


@dataclass(frozen=True)
class IdentityWeight:
    """A UNet weight that identifies the SD model, named in both layouts (for backend-independent fingerprints).

    Attributes:
        diffusers_path: parameter path in a diffusers ``UNet2DConditionModel``.
        comfy_path: parameter path of the same tensor in the ldm ``UNetModel`` ComfyUI runs.
    """

    diffusers_path: str
    comfy_path: str


# The input convolution, the time embedding and the first convolution of the high-level feature block: the same
# tensors in both layouts, so a context encoded by one backend is accepted by the other.
IDENTITY_WEIGHTS: tuple[IdentityWeight, ...] = (
    IdentityWeight("conv_in.weight", "input_blocks.0.0.weight"),
    IdentityWeight("time_embedding.linear_1.weight", "time_embed.0.weight"),
    IdentityWeight("up_blocks.1.resnets.0.conv1.weight", "output_blocks.3.0.in_layers.2.weight"),
)
