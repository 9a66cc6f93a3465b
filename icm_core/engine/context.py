"""Frozen data between the matting engine and its callers: reference contexts, prompt expansions, refinement."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ReferenceContext:
    """What the targets are matched against: the RoI tokens of one or more reference images.

    Attributes:
        tokens: ``[K, C]`` float32 CPU reference tokens (raw UNet ``up_blocks[1]`` features, ensemble mean) of
            all references, concatenated in reference order.
        token_masks: ``[R, g, g]`` bool, which cells of the g x g grid (S/16) each of the R references uses.
        reference_sizes: ``(H, W)`` of each reference image.
        fingerprint: identifies the model and configuration that produced the tokens.
        prompt_kind: how the references were marked: ``"mask"``, ``"points"``, ``"scribble"``, ``"mixed"``.
    """

    tokens: torch.Tensor
    token_masks: torch.Tensor
    reference_sizes: tuple[tuple[int, int], ...]
    fingerprint: str
    prompt_kind: str = "mask"

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[0])


@dataclass(frozen=True)
class RefinementConfig:
    """Full-resolution edge refinement (fast guided filter driven by the original image).

    Attributes:
        radius: window radius in full-resolution pixels; None picks a 3x3 window on the model's grid.
        eps: regularisation; larger values smooth more.
    """

    radius: int | None = None
    eps: float = 1e-4


@dataclass(frozen=True)
class PromptExpansion:
    """A sparse prompt extended over the reference's token grid.

    Attributes:
        token_mask: ``[g, g]`` bool cells to use as reference tokens.
        mask: ``[H, W]`` float 0/1 at the reference's size covering exactly those cells (pooling it gives
            ``token_mask`` back, so it can go straight into :meth:`IconMatting.encode_reference`).
        prompt_cells: ``[g, g]`` bool cells hit by the prompt itself (points, scribble).
    """

    token_mask: torch.Tensor
    mask: torch.Tensor
    prompt_cells: torch.Tensor


class EmptyReferenceError(ValueError):
    """The reference mask selects no token."""


def combine_contexts(*contexts: ReferenceContext) -> ReferenceContext:
    """One context from several (paper Table 6: more references, better mattes): tokens are concatenated."""
    if not contexts:
        raise ValueError("combine_contexts needs at least one context")
    fingerprints = {context.fingerprint for context in contexts}
    if len(fingerprints) != 1:
        raise ValueError(
            f"cannot combine contexts encoded with different models or configurations ({sorted(fingerprints)}); "
            "encode every reference with the same matting model."
        )
    kinds = {context.prompt_kind for context in contexts}
    return ReferenceContext(
        tokens=torch.cat([context.tokens for context in contexts]),
        token_masks=torch.cat([context.token_masks for context in contexts]),
        reference_sizes=tuple(size for context in contexts for size in context.reference_sizes),
        fingerprint=contexts[0].fingerprint,
        prompt_kind=kinds.pop() if len(kinds) == 1 else "mixed",
    )


def check_context(context: ReferenceContext, fingerprint: str) -> None:
    """Raise unless ``context`` is a :class:`ReferenceContext` encoded by the engine whose fingerprint is given."""
    if not isinstance(context, ReferenceContext):
        raise TypeError(f"expected a ReferenceContext from encode_reference, got {type(context).__name__}")
    if context.fingerprint != fingerprint:
        raise ValueError(
            "this reference context was encoded with another model or configuration (fingerprint "
            f"{context.fingerprint}, this engine {fingerprint}); encode the reference again with this one."
        )
