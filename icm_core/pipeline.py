"""Encode a reference once, matte any number of targets.

>>> engine = IconMatting(backend, decoder)                       # doctest: +SKIP
>>> context = engine.encode_reference(reference_image, reference_mask)
>>> alphas = engine.matte(context, target_images)                # list of [H, W] tensors in [0, 1]

The engine's parts live in :mod:`icm_core.engine` (one concern per module); this module is the public entry point
and re-exports their public names.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch

from .config import ExtractionConfig, config_fingerprint
from .engine import reference as _reference
from .engine.context import (
    EmptyReferenceError,
    PromptExpansion,
    ReferenceContext,
    RefinementConfig,
    check_context,
    combine_contexts,
)
from .engine.decoding import DECODER_DTYPE, decode_alpha, fp32_decoder, module_digest
from .engine.finite import NonFiniteRow, check_features, first_non_finite_row, model_non_finite
from .engine.targets import micro_batches, restore_alpha, target_count, to_model_squares
from .errors import NonFiniteError
from .features.backend import FeatureBackend, extract_features
from .fit import Placement
from .io.images import ImageLike, image_list
from .modeling.decoder import InContextDecoder
from .prompts import ExpansionConfig, Point

__all__ = [
    "DECODER_DTYPE",
    "EmptyReferenceError",
    "IconMatting",
    "ProgressCallback",
    "PromptExpansion",
    "ReferenceContext",
    "RefinementConfig",
    "combine_contexts",
    "decode_alpha",
]

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]


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
        self.decoder = fp32_decoder(decoder).eval()
        self.extraction = extraction
        self.fingerprint = config_fingerprint(
            backend.fingerprint(), extraction, decoder.config, module_digest(decoder)
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
        token_masks = _reference.mask_token_masks(
            references, masks, self.extraction, self.token_grid, min_coverage, fit
        )
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
        tokens = _reference.reference_tokens(self.backend, self.extraction, references, token_masks, seed, fit)
        context = ReferenceContext(
            tokens=tokens,
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
        side, grid = self.extraction.image_size, self.token_grid
        prompt, negatives = _reference.prompt_cells(reference, positive, negative, scribble, side, grid, fit)
        attention = self.reference_attention(reference, seed, fit)
        return _reference.expansion(reference, attention, prompt, negatives, config, side, grid, fit)

    def reference_attention(self, image: ImageLike, seed: int = 0, fit: str = "stretch") -> torch.Tensor:
        """Self-attention of a reference image on the token grid: ``[g, g, g*g]`` float32 CPU (query, key)."""
        reference = image_list(image, "reference image")[0]
        return _reference.reference_attention(self.backend, self.extraction, reference, seed, fit)

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
        total = target_count(images)
        done = 0
        for start, chunk in micro_batches(images, batch_size):
            placements, square = to_model_squares(chunk, self.extraction.image_size, fit)
            alphas = self._finite_alphas(context.tokens, square, seed, start)
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

    def check_context(self, context: ReferenceContext) -> None:
        """Raise unless ``context`` was encoded by this engine's model and configuration."""
        self._check_context(context)

    def _check_context(self, context: ReferenceContext) -> None:
        check_context(context, self.fingerprint)

    @staticmethod
    def _restore(
        alpha: torch.Tensor, image: torch.Tensor, where: Placement, refinement: RefinementConfig | None
    ) -> torch.Tensor:
        """``[1, 1, S, S]`` -> ``[H, W]`` CPU float32, optionally refined at full resolution."""
        return restore_alpha(alpha, image, where, refinement)

    def _finite_alphas(self, tokens: torch.Tensor, square: torch.Tensor, seed: int, start: int) -> torch.Tensor:
        """``[n, 1, S, S]`` float32 alpha of the micro-batch starting at target ``start``; NaN/Inf in the model's
        features or alpha is a :class:`NonFiniteError` naming the target."""
        try:
            alphas = self._matte_squares(tokens, square, seed).float()
        except NonFiniteRow as bad:
            raise NonFiniteError(model_non_finite(f"target image {start + bad.row}", bad.what)) from None
        bad_row = first_non_finite_row(alphas)
        if bad_row is not None:
            raise NonFiniteError(model_non_finite(f"target image {start + bad_row}", "alpha"))
        return alphas

    def _matte_squares(self, tokens: torch.Tensor, square: torch.Tensor, seed: int) -> torch.Tensor:
        """Reference tokens ``[K, C]`` + targets ``[n, 3, S, S]`` in [-1, 1] -> ``[n, 1, S, S]`` alpha."""
        features = extract_features(self.backend, square, self.extraction, seed, record_attention=True)
        device = self.backend.place_decoder(self.decoder)
        check_features(features)
        return decode_alpha(self.decoder, tokens, features, square, device)
