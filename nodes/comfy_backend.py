"""Feature backend over the graph's own ComfyUI MODEL / VAE (imports ComfyUI; used inside ComfyUI only).

The graph's objects are never mutated or copied: patches travel in a fresh ``transformer_options`` dict per
call (attn1 replace patches at the sites of ``icm_core.features.sites``, an output-block patch capturing the
features), the VAE posterior is read through ``first_stage_model``, and every model is loaded through
``comfy.model_management`` so ComfyUI can account for, offload and evict it.
"""

from __future__ import annotations

import logging

import comfy.model_management as model_management
import comfy.model_patcher
import torch

from ..icm_core.features.attention import (
    DEFAULT_CHUNK_BYTES,
    AttentionAccumulator,
    chunked_attention_with_probabilities,
)
from ..icm_core.features.backend import ensemble_features
from ..icm_core.features.fingerprint import weights_fingerprint
from ..icm_core.features.noise import LatentDistribution
from ..icm_core.features.sites import (
    ATTENTION_SITES,
    FEATURE_SITES,
    IDENTITY_WEIGHTS,
    LAST_SITE_FEATURES_ONLY,
    LAST_SITE_WITH_ATTENTION,
)
from ..icm_core.types import UNetFeatures
from .model_check import check_kl_vae, check_sd2_unet

logger = logging.getLogger(__name__)


class _StopForward(Exception):
    """Ends the UNet forward once every needed output is recorded."""


class ComfyFeatureBackend:
    """:class:`icm_core.features.backend.FeatureBackend` over a ComfyUI ``ModelPatcher`` and ``comfy.sd.VAE``.

    Args:
        model: the graph's SD 2.x MODEL (checked).
        vae: the graph's KL VAE (checked).
        empty_prompt_embedding: ``[1, 77, 1024]`` CLIP embedding of "".
        attention_chunk_bytes: bound on one query chunk's attention scores.
    """

    def __init__(
        self,
        model: comfy.model_patcher.ModelPatcher,
        vae: object,
        empty_prompt_embedding: torch.Tensor,
        attention_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        base = model.model
        check_sd2_unet(base.model_config.unet_config, type(base.model_config).__name__)
        check_kl_vae(vae.first_stage_model)
        self.model = model
        self.vae = vae
        self.device = model_management.get_torch_device()
        self.dtype = base.manual_cast_dtype or base.get_dtype()
        unet = model.get_model_object("diffusion_model")
        feature_block = unet.output_blocks[FEATURE_SITES[-1].comfy_output_block]
        self.feature_channels = int(feature_block[0].out_channels)
        self.prompt = empty_prompt_embedding.detach()
        self.attention_chunk_bytes = attention_chunk_bytes
        self._decoder_patchers: dict[int, comfy.model_patcher.ModelPatcher] = {}
        self._fingerprint = weights_fingerprint([unet.get_parameter(w.comfy_path) for w in IDENTITY_WEIGHTS])

    def latent_distribution(self, images: torch.Tensor) -> LatentDistribution:
        vae = self.vae
        shape = (images.shape[0], images.shape[1], images.shape[2], images.shape[3])
        model_management.load_models_gpu([vae.patcher], memory_required=vae.memory_used_encode(shape, vae.vae_dtype))
        stage = vae.first_stage_model
        moments = stage.quant_conv(stage.encoder(images.to(vae.device, vae.vae_dtype))).float()
        mean, log_variance = moments.chunk(2, dim=1)
        std = torch.exp(0.5 * log_variance.clamp(-30.0, 20.0))
        latent_format = self.model.model.latent_format
        return LatentDistribution(
            mean=latent_format.process_in(mean).to(self.device), std=(std * latent_format.scale_factor).to(self.device)
        )

    def alpha_bar(self, timestep: int) -> float:
        sigma = float(self.model.get_model_object("model_sampling").sigmas[timestep])
        return 1.0 / (1.0 + sigma * sigma)

    def unet_features(
        self, noisy_latents: torch.Tensor, timestep: int, ensemble_size: int, record_attention: bool
    ) -> UNetFeatures:
        rows = noisy_latents.shape[0]
        images = rows // ensemble_size
        memory = self.model.model.memory_required(list(noisy_latents.shape)) + self.attention_chunk_bytes
        model_management.load_models_gpu([self.model], memory_required=memory)
        unet = self.model.get_model_object("diffusion_model")
        accumulator = AttentionAccumulator(images, ensemble_size)
        outputs: dict[str, torch.Tensor] = {}
        options = self._transformer_options(accumulator, outputs, record_attention)
        with torch.no_grad():
            try:
                unet(
                    noisy_latents.to(self.device, self.dtype),
                    torch.full((rows,), float(timestep), device=self.device),
                    context=self.prompt.to(self.device, self.dtype).expand(rows, -1, -1),
                    transformer_options=options,
                )
            except _StopForward:
                pass
            else:
                raise RuntimeError("the UNet forward finished without reaching its last recording site")

        return ensemble_features(outputs, accumulator, record_attention)

    def _transformer_options(
        self, accumulator: AttentionAccumulator, outputs: dict[str, torch.Tensor], record_attention: bool
    ) -> dict:
        chunk_bytes = self.attention_chunk_bytes
        capture_at = {("output", site.comfy_output_block + 1): site.level for site in FEATURE_SITES}
        stop_at = ("output", LAST_SITE_FEATURES_ONLY.comfy_output_block + 1)

        def capture_features(h: torch.Tensor, skip: torch.Tensor, transformer_options: dict):
            model_management.throw_exception_if_processing_interrupted()  # an interrupt stops mid-UNet
            block = tuple(transformer_options["block"])
            if block in capture_at:
                outputs[capture_at[block]] = h
            if not record_attention and block == stop_at:
                raise _StopForward
            return h, skip

        def recorder(level: str, last: bool):
            def attn1(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
                heads = extra_options["n_heads"]
                batch, tokens, inner = q.shape

                def split(x: torch.Tensor) -> torch.Tensor:
                    return x.view(batch, tokens, heads, inner // heads).transpose(1, 2)

                output, probabilities = chunked_attention_with_probabilities(
                    split(q), split(k), split(v), (inner // heads) ** -0.5, chunk_bytes
                )
                accumulator.add(level, probabilities)
                if last:
                    raise _StopForward
                return output.transpose(1, 2).reshape(batch, tokens, inner)

            return attn1

        options: dict = {"patches": {"output_block_patch": [capture_features]}}
        if record_attention:
            options["patches_replace"] = {
                "attn1": {site.comfy_key: recorder(site.level, site == LAST_SITE_WITH_ATTENTION) for site in ATTENTION_SITES}
            }
        return options

    def place_decoder(self, decoder: torch.nn.Module) -> torch.device:
        patcher = self._decoder_patchers.get(id(decoder))
        if patcher is None:
            patcher = comfy.model_patcher.ModelPatcher(
                decoder,
                load_device=model_management.get_torch_device(),
                offload_device=model_management.unet_offload_device(),
            )
            self._decoder_patchers[id(decoder)] = patcher
        model_management.load_models_gpu([patcher])
        return patcher.load_device

    def fingerprint(self) -> str:
        return self._fingerprint
