"""Feature backend for a diffusers ``UNet2DConditionModel`` + ``AutoencoderKL`` (standalone use, CLI, tests).

Attention is recorded by attention processors set per layer path (the sites table), features by forward hooks
on ``up_blocks[0]`` / ``up_blocks[1]``; the forward stops right after the last site it needs. The UNet's own
processors are restored afterwards, so a shared UNet is left as it was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from ..types import UNetFeatures
from .attention import DEFAULT_CHUNK_BYTES, AttentionAccumulator, chunked_attention_with_probabilities
from .backend import ensemble_features
from .fingerprint import weights_fingerprint
from .noise import LatentDistribution, scaled_linear_alphas_cumprod
from .precision import fp32_normalisations, resolve_compute_dtype
from .sites import (
    ATTENTION_SITES,
    FEATURE_SITES,
    IDENTITY_WEIGHTS,
    LAST_SITE_FEATURES_ONLY,
    LAST_SITE_WITH_ATTENTION,
)


class _StopForward(Exception):
    """Raised by a hook once every needed output is recorded; ends the UNet forward early."""


class RecordingAttnProcessor:
    """Self-attention processor that computes the output and records head-averaged probabilities."""

    def __init__(self, level: str, accumulator: AttentionAccumulator, chunk_bytes: int) -> None:
        self.level = level
        self.accumulator = accumulator
        self.chunk_bytes = chunk_bytes

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor:
        unsupported = encoder_hidden_states is not None or attention_mask is not None or hidden_states.ndim != 3
        unsupported = unsupported or any(
            getattr(attn, name, None) is not None for name in ("group_norm", "spatial_norm", "norm_q", "norm_k")
        )
        if unsupported:
            raise ValueError(
                "attention recording expects a plain SD 2.x self-attention layer (attn1: no mask, no context, "
                "no extra norms); this UNet's layer differs. Use an SD 2.x UNet."
            )
        batch, tokens, _ = hidden_states.shape
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        heads = attn.heads
        head_dim = query.shape[-1] // heads

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, tokens, heads, head_dim).transpose(1, 2)

        output, probabilities = chunked_attention_with_probabilities(
            split(query), split(key), split(value), attn.scale, self.chunk_bytes
        )
        self.accumulator.add(self.level, probabilities)
        output = output.transpose(1, 2).reshape(batch, tokens, heads * head_dim)
        output = attn.to_out[1](attn.to_out[0](output))
        if attn.residual_connection:
            output = output + hidden_states
        return output / attn.rescale_output_factor


class DiffusersFeatureBackend:
    """:class:`~icm_core.features.backend.FeatureBackend` over diffusers modules.

    Args:
        unet: SD 2.x ``UNet2DConditionModel`` (frozen).
        vae: ``AutoencoderKL`` (frozen).
        empty_prompt_embedding: ``[1, 77, D]`` text embedding of the empty prompt.
        alphas_cumprod: ``[1000]`` noise schedule; SD's ``scaled_linear`` by default.
        attention_chunk_bytes: bound on the attention score buffer of one query chunk.
        autocast_dtype: run the VAE encoder and UNet under ``torch.autocast`` with this dtype while the weights stay
            as loaded: fp16 (bf16 runs as fp16, see :mod:`.precision`). Normalisations, the recorded attention scores
            and softmax and the ensemble averages stay fp32. fp16 weights run under fp16 autocast anyway.
        channels_last: use the channels-last memory format for the UNet (faster convolutions on GPUs).
    """

    def __init__(
        self,
        unet: nn.Module,
        vae: nn.Module,
        empty_prompt_embedding: torch.Tensor,
        alphas_cumprod: torch.Tensor | None = None,
        attention_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        autocast_dtype: torch.dtype | None = None,
        channels_last: bool = False,
    ) -> None:
        self.unet = unet.eval().requires_grad_(False)
        self.channels_last = channels_last
        if channels_last:
            self.unet.to(memory_format=torch.channels_last)
        self.vae = vae.eval().requires_grad_(False)
        parameter = next(unet.parameters())
        self.device = parameter.device
        self.dtype = parameter.dtype
        if self.dtype not in (torch.float32, torch.float16):
            raise ValueError(
                f"the UNet's weights are {self.dtype}; load them in fp32 or fp16 (bf16 moves the alpha by up to "
                "3.6e-2 from the fp32 result, fp16 stays within 5e-3; load_engine maps bf16 to fp16)."
            )
        autocast_dtype = resolve_compute_dtype(autocast_dtype, "autocast")
        # Reduced-precision weights always run under autocast, so fp32 islands (norms) mix with them cleanly.
        self.autocast_dtype = autocast_dtype or (None if self.dtype == torch.float32 else self.dtype)
        self.prompt = empty_prompt_embedding.to(self.device, self.dtype)
        self.alphas_cumprod = scaled_linear_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod
        self.attention_chunk_bytes = attention_chunk_bytes
        self.feature_channels = int(unet.get_submodule(FEATURE_SITES[-1].diffusers_path).resnets[-1].out_channels)
        cross_dim = unet.config.cross_attention_dim
        if self.prompt.ndim != 3 or self.prompt.shape[-1] != cross_dim:
            raise ValueError(
                f"empty-prompt embedding must be [1, 77, {cross_dim}] for this UNet, got {tuple(self.prompt.shape)}"
            )

    def latent_distribution(self, images: torch.Tensor) -> LatentDistribution:
        vae_dtype = next(self.vae.parameters()).dtype
        with self._autocast(self.vae):
            posterior = self.vae.encode(images.to(self.device, vae_dtype)).latent_dist
        scale = float(self.vae.config.scaling_factor)
        return LatentDistribution(mean=posterior.mean.float() * scale, std=posterior.std.float() * scale)

    def alpha_bar(self, timestep: int) -> float:
        return float(self.alphas_cumprod[timestep])

    def unet_features(
        self, noisy_latents: torch.Tensor, timestep: int, ensemble_size: int, record_attention: bool
    ) -> UNetFeatures:
        rows = noisy_latents.shape[0]
        if rows % ensemble_size:
            raise ValueError(f"{rows} latent rows is not a multiple of the ensemble size {ensemble_size}")
        images = rows // ensemble_size
        accumulator = AttentionAccumulator(images, ensemble_size)
        outputs: dict[str, torch.Tensor] = {}
        latents = noisy_latents.to(self.device, self.dtype)
        if self.channels_last:
            latents = latents.contiguous(memory_format=torch.channels_last)
        with self._recording(accumulator, outputs, record_attention), self._autocast(self.unet):
            try:
                self.unet(
                    latents,
                    torch.tensor(timestep, device=self.device),
                    encoder_hidden_states=self.prompt.expand(rows, -1, -1),
                )
            except _StopForward:
                pass
            else:
                raise RuntimeError("the UNet forward finished without reaching its last recording site")

        return ensemble_features(outputs, accumulator, record_attention)

    @contextlib.contextmanager
    def _recording(
        self, accumulator: AttentionAccumulator, outputs: dict[str, torch.Tensor], record_attention: bool
    ) -> Iterator[None]:
        handles = []
        saved_processors = {}

        def capture(level: str, stop: bool):
            def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
                outputs[level] = output
                if stop:
                    raise _StopForward

            return hook

        def stop_hook(_module: nn.Module, _inputs: object, _output: object) -> None:
            raise _StopForward

        try:
            for site in FEATURE_SITES:
                stop = not record_attention and site == LAST_SITE_FEATURES_ONLY
                module = self.unet.get_submodule(site.diffusers_path)
                handles.append(module.register_forward_hook(capture(site.level, stop)))
            if record_attention:
                for site in ATTENTION_SITES:
                    module = self.unet.get_submodule(site.diffusers_path)
                    saved_processors[site.diffusers_path] = module.processor
                    module.set_processor(
                        RecordingAttnProcessor(site.level, accumulator, self.attention_chunk_bytes)
                    )
                last = self.unet.get_submodule(LAST_SITE_WITH_ATTENTION.diffusers_path)
                handles.append(last.register_forward_hook(stop_hook))
            yield
        finally:
            for handle in handles:
                handle.remove()
            for path, processor in saved_processors.items():
                self.unet.get_submodule(path).set_processor(processor)

    @contextlib.contextmanager
    def _autocast(self, model: nn.Module) -> Iterator[None]:
        """Autocast in the reduced dtype with the model's normalisations in fp32; nothing at all in fp32."""
        if self.autocast_dtype is None:
            yield
            return
        with fp32_normalisations(model), torch.autocast(self.device.type, dtype=self.autocast_dtype):
            yield

    def place_decoder(self, decoder: nn.Module) -> torch.device:
        decoder.to(self.device)
        return self.device

    def fingerprint(self) -> str:
        return weights_fingerprint([self.unet.get_parameter(w.diffusers_path) for w in IDENTITY_WEIGHTS])
