"""Encode a reference once, matte any number of targets.

>>> engine = IconMatting(backend, decoder)                       # doctest: +SKIP
>>> context = engine.encode_reference(reference_image, reference_mask)
>>> alphas = engine.matte(context, target_images)                # list of [H, W] tensors in [0, 1]
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .config import ExtractionConfig, config_fingerprint
from .errors import NonFiniteError
from .features.backend import FeatureBackend, extract_features
from .features.precision import autocast_disabled
from .fit import Placement, aligned_alpha, from_square, placement, to_square
from .io.images import ImageLike, image_list, to_mask, to_model_range, to_rgb
from .postprocess import refine_alpha
from .modeling.decoder import InContextDecoder
from .modeling.similarity import pool_token_mask, select_reference_tokens, token_mask_to_image
from .prompts import ExpansionConfig, Point, expand_cells, point_cells, scribble_cells
from .types import UNetFeatures

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
DECODER_DTYPE = torch.float32  # the decoder always computes in fp32 (see docs/benchmarks.md, Precision)


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


class IconMatting:
    """The matting engine: a frozen SD feature backend + the in-context decoder.

    Args:
        backend: a :class:`~icm_core.features.backend.FeatureBackend` (diffusers or ComfyUI).
        decoder: the in-context decoder (eval mode); moved to the backend's device.
        extraction: timestep / ensemble / image size; the image size must equal the decoder's.
    """

    def __init__(
        self,
        backend: FeatureBackend,
        decoder: InContextDecoder,
        extraction: ExtractionConfig | None = None,
    ) -> None:
        extraction = extraction or ExtractionConfig(image_size=decoder.config.image_size)
        if extraction.image_size != decoder.config.image_size:
            raise ValueError(
                f"the decoder works at {decoder.config.image_size}px but extraction is set to "
                f"{extraction.image_size}px; use ExtractionConfig(image_size={decoder.config.image_size})."
            )
        if backend.feature_channels != decoder.config.feature_channels:
            raise ValueError(
                f"decoder expects {decoder.config.feature_channels}-channel UNet features but the SD model gives "
                f"{backend.feature_channels}; load the decoder trained for this SD model (SD 2.1: 1280 channels)."
            )
        self.backend = backend
        self.decoder = _fp32_decoder(decoder).eval()
        self.extraction = extraction
        self.fingerprint = config_fingerprint(
            backend.fingerprint(), extraction, decoder.config, _module_digest(decoder)
        )

    @property
    def token_grid(self) -> int:
        return self.extraction.attention_resolutions[1]

    def encode_reference(
        self,
        images: ImageLike | Sequence[ImageLike],
        masks: ImageLike | Sequence[ImageLike],
        seed: int = 0,
        min_coverage: float = 1.0,
        fit: str = "stretch",
    ) -> ReferenceContext:
        """Encode one or several reference images with their RoI masks (run once per batch of targets).

        Args:
            images: one image or a batch/sequence (see :mod:`icm_core.images`).
            masks: one ``[H, W]`` mask per image, at that image's size; > 0.5 is the RoI.
            seed: seed of the ensemble noise.
            min_coverage: a token is used when at least this fraction of its cell is inside the mask; 1.0 is the
                official rule (whole cell), smaller values keep thin structures.
            fit: how the reference is brought to the model's square (see :mod:`icm_core.fit`).
        """
        references = image_list(images, "reference image")
        mask_items = list(masks) if isinstance(masks, (list, tuple)) else _split_masks(masks, len(references))
        if len(mask_items) != len(references):
            raise ValueError(f"got {len(references)} reference images but {len(mask_items)} masks; give one each.")
        token_masks = []
        for index, (image, raw_mask) in enumerate(zip(references, mask_items)):
            mask = to_mask(raw_mask, tuple(image.shape[1:]), f"reference mask {index}")
            rows, cols = self._cells(image, fit)
            token_mask = pool_token_mask(mask, self.token_grid, min_coverage, rows, cols)
            if not token_mask.any():
                cell = self.extraction.image_size // self.token_grid
                raise EmptyReferenceError(
                    f"reference mask {index} selects no reference token: a token needs "
                    f"{'its whole' if min_coverage >= 1.0 else f'{min_coverage:.0%} of its'} {cell}x{cell} px cell "
                    f"(at {self.extraction.image_size}x{self.extraction.image_size}) inside the mask, and this mask "
                    f"covers {float((mask > 0.5).float().mean()) * 100:.2f}% of the image. Widen the mask (thin "
                    "strokes and single points vanish), lower the coverage needed, or expand a point/scribble prompt."
                )
            token_masks.append(token_mask)
        return self.encode_reference_tokens(references, token_masks, seed, fit=fit)

    def encode_reference_tokens(
        self,
        images: ImageLike | Sequence[ImageLike],
        token_masks: Sequence[torch.Tensor],
        seed: int = 0,
        prompt_kind: str = "mask",
        fit: str = "stretch",
    ) -> ReferenceContext:
        """Like :meth:`encode_reference`, with the token cells given directly: one ``[g, g]`` bool mask per image."""
        references = image_list(images, "reference image")
        if len(token_masks) != len(references):
            raise ValueError(f"got {len(references)} reference images but {len(token_masks)} token masks.")
        grid = self.token_grid
        tokens = []
        for index, (image, token_mask) in enumerate(zip(references, token_masks)):
            if tuple(token_mask.shape) != (grid, grid) or not token_mask.any():
                raise EmptyReferenceError(
                    f"token mask {index} must be a non-empty [{grid}, {grid}] grid, got shape "
                    f"{tuple(token_mask.shape)} with {int(token_mask.sum())} tokens."
                )
            square = self._square(image, fit)[None]
            features = extract_features(self.backend, square, self.extraction, seed, record_attention=False)
            if _first_non_finite_row(features.high) is not None:
                raise NonFiniteError(_model_non_finite(f"reference image {index}", "UNet features"))
            tokens.append(select_reference_tokens(features.high[0].float().cpu(), token_mask.bool().cpu()))
        context = ReferenceContext(
            tokens=torch.cat(tokens),
            token_masks=torch.stack([mask.bool().cpu() for mask in token_masks]),
            reference_sizes=tuple(tuple(image.shape[1:]) for image in references),
            fingerprint=self.fingerprint,
            prompt_kind=prompt_kind,
        )
        logger.info("reference context: %d references, %d tokens", len(references), context.num_tokens)
        return context

    def expand_prompt(
        self,
        image: ImageLike,
        positive: Sequence[Point] = (),
        negative: Sequence[Point] = (),
        scribble: ImageLike | None = None,
        config: ExpansionConfig = ExpansionConfig(),
        seed: int = 0,
        fit: str = "stretch",
    ) -> PromptExpansion:
        """Points and/or a scribble on a reference -> the token cells to use (paper §3.6), see :mod:`.prompts`."""
        reference = image_list(image, "reference image")[0]
        size = tuple(reference.shape[1:])
        grid = self.token_grid
        rows, cols = self._cells(reference, fit)
        cells = [point_cells(positive, size, grid, "positive point", rows, cols)]
        if scribble is not None:
            cells.append(scribble_cells(to_mask(scribble, size, "scribble"), grid, rows, cols))
        prompt = torch.cat(cells)
        if prompt.numel() == 0:
            raise ValueError("empty prompt: give at least one positive point or a non-empty scribble mask.")
        negatives = point_cells(negative, size, grid, "negative point", rows, cols)
        token_mask = expand_cells(self.reference_attention(reference, seed, fit), prompt, negatives, config)
        if not token_mask.any():
            raise EmptyReferenceError("the negative points removed every token; move them off the object.")
        prompt_mask = torch.zeros(grid * grid, dtype=torch.bool)
        prompt_mask[prompt] = True
        return PromptExpansion(
            token_mask=token_mask,
            mask=token_mask_to_image(token_mask, size, rows, cols),
            prompt_cells=prompt_mask.view(grid, grid),
        )

    def reference_attention(self, image: ImageLike, seed: int = 0, fit: str = "stretch") -> torch.Tensor:
        """Self-attention of a reference image on the token grid: ``[g, g, g*g]`` float32 CPU (query, key)."""
        square = self._square(image_list(image, "reference image")[0], fit)
        features = extract_features(self.backend, square[None], self.extraction, seed, record_attention=True)
        return features.attention_high[0].float().cpu()

    def iter_matte(
        self,
        context: ReferenceContext,
        images: ImageLike | Iterable[ImageLike],
        seed: int = 0,
        batch_size: int = 4,
        progress: ProgressCallback | None = None,
        fit: str = "stretch",
        refinement: RefinementConfig | None = None,
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(index, alpha [H, W] float32 CPU in [0, 1])`` per target, in input order.

        ``images`` may be any iterable (a generator reading files, video frames, ...): it is consumed one
        micro-batch of ``batch_size`` targets at a time, so peak memory depends on ``batch_size``, not on the
        number of targets. ``refinement`` sharpens the alpha at full resolution, guided by the image.
        """
        self._check_context(context)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        total = len(images) if hasattr(images, "__len__") and not isinstance(images, torch.Tensor) else None
        if isinstance(images, torch.Tensor):
            total = images.shape[0] if images.ndim == 4 else 1
        done = 0
        for start, chunk in _micro_batches(images, batch_size):
            placements = [placement(*image.shape[1:], self.extraction.image_size, fit) for image in chunk]
            square = torch.stack([to_model_range(to_square(image, where)) for image, where in zip(chunk, placements)])
            try:
                alphas = self._matte_squares(context.tokens, square, seed).float()
            except _NonFiniteRow as bad:
                raise NonFiniteError(_model_non_finite(f"target image {start + bad.row}", bad.what)) from None
            bad_row = _first_non_finite_row(alphas)
            if bad_row is not None:
                raise NonFiniteError(_model_non_finite(f"target image {start + bad_row}", "alpha"))
            for offset, (image, alpha, where) in enumerate(zip(chunk, alphas, placements)):
                yield start + offset, self._restore(alpha[None], image, where, refinement)
            done += len(chunk)
            if progress is not None:
                progress(done, total if total is not None else done)

    def matte(
        self,
        context: ReferenceContext,
        images: ImageLike | Iterable[ImageLike],
        seed: int = 0,
        batch_size: int = 4,
        progress: ProgressCallback | None = None,
        fit: str = "stretch",
        refinement: RefinementConfig | None = None,
    ) -> list[torch.Tensor]:
        """Alpha mattes ``[H, W]`` (float32 CPU, [0, 1]) of every target, in input order. See :meth:`iter_matte`."""
        return [alpha for _, alpha in self.iter_matte(context, images, seed, batch_size, progress, fit, refinement)]

    def _square(self, image: torch.Tensor, fit: str) -> torch.Tensor:
        where = placement(*image.shape[1:], self.extraction.image_size, fit)
        return to_model_range(to_square(image, where))

    def _cells(self, image: torch.Tensor, fit: str) -> tuple[torch.Tensor, torch.Tensor]:
        where = placement(*image.shape[1:], self.extraction.image_size, fit)
        return where.cell_rows(self.token_grid), where.cell_cols(self.token_grid)

    @staticmethod
    def _restore(
        alpha: torch.Tensor, image: torch.Tensor, where: Placement, refinement: RefinementConfig | None
    ) -> torch.Tensor:
        """``[1, 1, S, S]`` -> ``[H, W]`` CPU float32, optionally refined at full resolution."""
        if refinement is None:
            return from_square(alpha, where)[0, 0].cpu()
        coarse = aligned_alpha(alpha, where)
        guide = image[:3].to(coarse.device, torch.float32)[None]
        refined = refine_alpha(coarse, guide, radius=refinement.radius, eps=refinement.eps)
        return refined[0, 0].float().cpu()

    def _matte_squares(self, tokens: torch.Tensor, square: torch.Tensor, seed: int) -> torch.Tensor:
        """Reference tokens ``[K, C]`` + targets ``[n, 3, S, S]`` in [-1, 1] -> ``[n, 1, S, S]`` alpha."""
        features = extract_features(self.backend, square, self.extraction, seed, record_attention=True)
        device = self.backend.place_decoder(self.decoder)
        _check_features(features)
        return decode_alpha(self.decoder, tokens, features, square, device)

    def check_context(self, context: ReferenceContext) -> None:
        """Raise unless ``context`` was encoded by this engine's model and configuration."""
        self._check_context(context)

    def _check_context(self, context: ReferenceContext) -> None:
        if not isinstance(context, ReferenceContext):
            raise TypeError(f"expected a ReferenceContext from encode_reference, got {type(context).__name__}")
        if context.fingerprint != self.fingerprint:
            raise ValueError(
                "this reference context was encoded with another model or configuration (fingerprint "
                f"{context.fingerprint}, this engine {self.fingerprint}); encode the reference again with this one."
            )


def decode_alpha(
    decoder: InContextDecoder,
    tokens: torch.Tensor,
    features: UNetFeatures,
    images: torch.Tensor,
    device: torch.device,
) -> torch.Tensor:
    """Run the decoder in fp32 on ``device``, whatever dtype the features came in.

    Args:
        decoder: an fp32 :class:`InContextDecoder` already on ``device``.
        tokens: ``[K, C]`` reference tokens.
        features: :class:`UNetFeatures` of n targets with attention maps (any float dtype, any device).
        images: ``[n, 3, S, S]`` targets in [-1, 1].

    Returns:
        ``[n, 1, S, S]`` fp32 alpha in [0, 1].
    """
    features = _cast_features(features, device, DECODER_DTYPE)
    tokens, images = tokens.to(device, DECODER_DTYPE), images.to(device, DECODER_DTYPE)
    # On CPUs the decoder runs image by image: same speed, a third of the working memory at 768 px.
    step = 1 if device.type == "cpu" else images.shape[0]
    alphas = []
    with torch.no_grad(), autocast_disabled(device.type):  # fp32 even inside a caller's autocast
        for start in range(0, images.shape[0], step):
            part = _slice_features(features, slice(start, start + step))
            alphas.append(decoder(tokens, part, images[start : start + step]).alpha)
    return torch.cat(alphas)


def _fp32_decoder(decoder: InContextDecoder) -> InContextDecoder:
    """The decoder in fp32: lower precision moves the alpha by up to 0.11 (released decoder, bf16) for ~2 % of
    the time, so it always runs in fp32; a decoder given in another dtype is converted, with a note."""
    dtypes = {tensor.dtype for tensor in decoder.state_dict().values() if tensor.is_floating_point()}
    if dtypes - {DECODER_DTYPE}:
        logger.warning(
            "the in-context decoder was given in %s; it runs in fp32 (fp16/bf16 visibly change the matte for "
            "about 2%% of the time), converting it.", ", ".join(sorted(str(d) for d in dtypes))
        )
        decoder = decoder.to(DECODER_DTYPE)
    return decoder


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


def _micro_batches(
    images: ImageLike | Iterable[ImageLike], batch_size: int
) -> Iterator[tuple[int, list[torch.Tensor]]]:
    """``(start index, [3, H, W] images)`` per micro-batch, converting lazily; errors name the target's index."""
    single = isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim < 4
    if single or not isinstance(images, Iterable):
        images = [images]
    chunk: list[torch.Tensor] = []
    start = 0
    for index, image in enumerate(images):
        chunk.append(to_rgb(image, f"target image {index}"))
        if len(chunk) == batch_size:
            yield start, chunk
            start, chunk = index + 1, []
    if chunk:
        yield start, chunk


class _NonFiniteRow(Exception):
    """Internal: row ``row`` of a micro-batch holds NaN/Inf in ``what`` (turned into NonFiniteError by the caller)."""

    def __init__(self, row: int, what: str) -> None:
        super().__init__(row, what)
        self.row, self.what = row, what


def _first_non_finite_row(tensor: torch.Tensor) -> int | None:
    """Index of the first row (dim 0) of ``tensor`` holding NaN/Inf, or None."""
    bad = ~torch.isfinite(tensor.reshape(tensor.shape[0], -1)).all(dim=1)
    return int(bad.nonzero()[0, 0]) if bool(bad.any()) else None


def _check_features(features: UNetFeatures) -> None:
    """Raise :class:`_NonFiniteRow` for the first target whose features or attention maps hold NaN/Inf."""
    for what, tensor in (
        ("UNet features", features.low),
        ("UNet features", features.high),
        ("attention maps", features.attention_low),
        ("attention maps", features.attention_high),
    ):
        row = None if tensor is None else _first_non_finite_row(tensor)
        if row is not None:
            raise _NonFiniteRow(row, what)


def _model_non_finite(source: str, what: str) -> str:
    return (
        f"{source}: the model produced NaN/Inf in its {what}, so no matte was made (fp16 overflow? run in fp32: "
        "--dtype fp32 without --autocast, or dtype=torch.float32 when loading the engine)."
    )


def _split_masks(masks: ImageLike, count: int) -> list[ImageLike]:
    if isinstance(masks, torch.Tensor) and masks.ndim == 3 and masks.shape[0] == count and count > 1:
        return list(masks)
    if isinstance(masks, torch.Tensor) and masks.ndim == 4:
        return [mask[0] if mask.ndim == 3 else mask for mask in masks]
    return [masks]


def _cast_features(features: UNetFeatures, device: torch.device, dtype: torch.dtype) -> UNetFeatures:
    return dataclasses.replace(
        features,
        low=features.low.to(device, dtype),
        high=features.high.to(device, dtype),
        attention_low=features.attention_low.to(device, dtype),
        attention_high=features.attention_high.to(device, dtype),
    )


def _slice_features(features: UNetFeatures, rows: slice) -> UNetFeatures:
    return UNetFeatures(
        low=features.low[rows],
        high=features.high[rows],
        attention_low=features.attention_low[rows],
        attention_high=features.attention_high[rows],
    )


def _module_digest(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().flatten()[:1024].to(torch.float16).cpu().numpy().tobytes())
    return digest.hexdigest()[:16]
