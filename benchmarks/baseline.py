"""An official-style IconMatting pipeline: what the released code computes, and how, re-written for benchmarking.

Written after reading the official repository (tiny-smart/in-context-matting: ``dift_sd.py``,
``attention_controllers.py``, ``in_context_matting.py``, ``eval.py``); no code is copied. It keeps the costs of
the official evaluation (batch size 1, so per target):

* the reference is encoded again for every target (``get_reference_feature`` then ``get_source_feature``);
* every image is repeated E times *before* the VAE, so the VAE encoder runs E times per image, and each row
  draws its own posterior sample (``latent_dist.sample()``) and its own noise;
* the UNet runs through all down, mid and up blocks (the official forward keeps every ``up_blocks`` output and
  only skips ``conv_norm_out``/``conv_out``), for the reference too;
* every attention layer of the down/mid/up blocks gets the recording processor: where the query token count is
  one of the stored grids, the full ``[rows * heads, N, N]`` fp32 probability tensor is materialised (for
  self- *and* cross-attention; cross maps are then dropped), then averaged over groups of E rows and over heads
  as the official attention store does; the attention output itself is computed separately (xformers there,
  PyTorch SDPA here);
* maps are aggregated per grid over the down/mid/up lists, then the decoder runs (our ``InContextDecoder`` is
  numerically the official one, proven by the golden parity tests).

For a given seed the E posterior draws and the E noise draws are exactly those of
``icm_core.features.noise.ensemble_noisy_latents`` (one CPU generator: posterior first, then noise), so alphas
can be compared with icm_core's. The official code used the global RNG instead; that changes numbers, not cost.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from icm_core.modeling.decoder import InContextDecoder
from icm_core.types import UNetFeatures

from .timing import StageTimer


def to_model_square(image: torch.Tensor, side: int) -> torch.Tensor:
    """``[C, H, W]`` in [0, 1] -> ``[1, C, S, S]`` in [-1, 1] (bilinear resize, antialiased; official x/127.5 - 1)."""
    square = F.interpolate(image[None], size=(side, side), mode="bilinear", align_corners=False, antialias=True)
    return square * 2.0 - 1.0


def restore_alpha(alpha: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[1, 1, S, S]`` -> ``[H, W]`` float32 CPU, bilinear, clamped to [0, 1] (official eval: resize back)."""
    return F.interpolate(alpha.float(), size=size, mode="bilinear", align_corners=False).clamp(0, 1)[0, 0].cpu()


def reference_tokens(feature: torch.Tensor, guidance: torch.Tensor, grid: int) -> torch.Tensor:
    """Official token selection: guidance ``[S, S]`` binarised at > 0.5, *min*-pooled to ``grid x grid``; the
    reference feature ``[C, grid, grid]`` at the surviving cells, raster order -> ``[K, C]``."""
    block = guidance.shape[-1] // grid
    binary = (guidance > 0.5).float()[None, None]
    keep = (-F.max_pool2d(-binary, block, block))[0, 0].flatten() > 0.5
    return feature.flatten(1)[:, keep.to(feature.device)].T


class _FinishedUpBlocks(Exception):
    """Raised after the last up block: the official forward returns there (no conv_norm_out / conv_out)."""


class OfficialAttentionStore:
    """The official attention store, in short: per-layer self-attention maps at the stored token counts."""

    def __init__(self, token_counts: Sequence[int], ensemble_size: int) -> None:
        self.token_counts = set(token_counts)
        self.ensemble_size = ensemble_size
        self.reset()

    def reset(self) -> None:
        self.store: dict[str, list[torch.Tensor]] = {
            f"{place}_{kind}": [] for place in ("down", "mid", "up") for kind in ("cross", "self")
        }

    def record(self, probabilities: torch.Tensor, is_cross: bool, place: str, rows: int) -> None:
        """``probabilities``: ``[rows * heads, N, N_keys]`` in diffusers' head_to_batch_dim order (row-major)."""
        heads = probabilities.shape[0] // rows
        if is_cross or probabilities.shape[1] not in self.token_counts:
            return
        # Official grouping: mean over consecutive groups of E rows, then over consecutive groups of `heads`.
        grouped = probabilities.reshape(-1, self.ensemble_size, *probabilities.shape[1:]).mean(dim=1)
        grouped = grouped.reshape(-1, heads, *grouped.shape[1:]).mean(dim=1)
        self.store[f"{place}_self"].append(grouped)

    def aggregate(self, images: int, grid: int) -> torch.Tensor:
        """Mean over every stored layer with ``grid**2`` tokens -> ``[images, grid, grid, grid**2]``."""
        tokens = grid * grid
        layers = [
            item.reshape(images, -1, grid, grid, item.shape[-1])
            for place in ("down", "mid", "up")
            for item in self.store[f"{place}_self"]
            if item.shape[1] == tokens
        ]
        stacked = torch.cat(layers, dim=1)
        mean = (stacked.sum(dim=1) / stacked.shape[1]).reshape(images, tokens, tokens)
        # official: [b, q, k] -> permute(0, 2, 1) -> [b, k, r, r] -> permute(0, 2, 3, 1) -> [b, r, r, k]
        return mean.permute(0, 2, 1).reshape(images, tokens, grid, grid).permute(0, 2, 3, 1)


class OfficialRecordingProcessor:
    """Attention processor of the official feature extractor (recording variant), for one Attention module."""

    def __init__(self, store: OfficialAttentionStore, place: str, timer: StageTimer) -> None:
        self.store, self.place, self.timer = store, place, timer
        self.cuda = timer.cuda

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if attention_mask is not None or hidden_states.ndim != 3 or attn.group_norm is not None:
            raise ValueError("the benchmark baseline supports plain SD 2.x transformer attention only")
        rows, tokens, _ = hidden_states.shape
        is_cross = encoder_hidden_states is not None
        context = encoder_hidden_states if is_cross else hidden_states
        if is_cross and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states)).contiguous()  # [rows * heads, N, d]
        key = attn.head_to_batch_dim(attn.to_k(context)).contiguous()
        value = attn.head_to_batch_dim(attn.to_v(context)).contiguous()
        recorded = tokens in self.store.token_counts
        if recorded:  # the official processor materialises these maps for self- *and* cross-attention
            with self.timer.stage("attention"):
                scores = torch.einsum("bid,bjd->bij", query, key) * attn.scale
                scores = scores / 1  # official: `sim / if_softmax`, if_softmax = 1 in eval.yaml
                probabilities = scores.softmax(dim=-1)
                del scores
                self.store.record(probabilities, is_cross, self.place, rows)
                del probabilities
                if self.cuda:
                    torch.cuda.empty_cache()  # the official store empties the CUDA cache after every layer
                if not is_cross:
                    output = _memory_efficient_attention(query, key, value, attn.scale)
        if not recorded or is_cross:
            output = _memory_efficient_attention(query, key, value, attn.scale)
        output = attn.batch_to_head_dim(output.to(query.dtype))
        output = attn.to_out[1](attn.to_out[0](output))
        if attn.residual_connection:
            output = output + hidden_states
        return output / attn.rescale_output_factor


def _memory_efficient_attention(query, key, value, scale: float) -> torch.Tensor:
    """Stand-in for ``xformers.ops.memory_efficient_attention`` on ``[rows * heads, N, d]``: exact attention via
    PyTorch's fused SDPA kernel (given 4-D input; 3-D input would fall back to the N x N math path on CPU)."""
    return F.scaled_dot_product_attention(query[None], key[None], value[None], scale=scale)[0]


class OfficialStyleBaseline:
    """Official-style inference: per target, reference + target each through VAE (E copies) and the full UNet.

    Args:
        unet, vae: the frozen diffusers modules (shared with icm_core; processors are swapped only during a call).
        prompt: ``[1, 77, D]`` empty-prompt embedding.
        decoder: the in-context decoder.
        timestep, ensemble_size, image_size: official values 200, 4, 768.
        timer: where stage times go.
    """

    def __init__(self, unet, vae, prompt, decoder: InContextDecoder, timestep: int = 200, ensemble_size: int = 4,
                 image_size: int = 768, timer: StageTimer | None = None) -> None:
        from diffusers import DDIMScheduler

        self.unet, self.vae, self.decoder = unet, vae, decoder
        self.device = next(unet.parameters()).device
        self.dtype = next(unet.parameters()).dtype  # fp32 as the official code; fp16 to separate precision gains
        self.prompt = prompt.to(self.device, self.dtype)
        self.timestep, self.ensemble_size, self.image_size = timestep, ensemble_size, image_size
        self.timer = timer or StageTimer(self.device)
        # SD 2.1 scheduler settings (the official code loads them from the model folder).
        self.scheduler = DDIMScheduler(
            num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
        )
        grids = (image_size // 32, image_size // 16)  # official attention_res [24, 48] at 768 px
        self.grids = grids
        self.store = OfficialAttentionStore([grid * grid for grid in grids], ensemble_size)

    @torch.no_grad()
    def matte(self, reference: torch.Tensor, reference_mask: torch.Tensor, targets: Sequence[torch.Tensor],
              seed: int = 0) -> list[torch.Tensor]:
        """``reference [3, H, W]`` in [0, 1], ``reference_mask [H, W]``, targets ``[3, h, w]`` -> alphas ``[h, w]``."""
        side = self.image_size
        reference_square = to_model_square(reference, side).to(self.device)
        guidance = F.interpolate(reference_mask[None, None].float(), size=(side, side), mode="bilinear",
                                 align_corners=False, antialias=True)[0, 0]
        alphas = []
        with self.recording():
            for target in targets:  # official eval: batch size 1, the reference paired with every target
                target_square = to_model_square(target, side).to(self.device)
                alpha = self.matte_square(reference_square, guidance, target_square, seed)
                with self.timer.stage("postprocess"):
                    alphas.append(restore_alpha(alpha, tuple(target.shape[1:])))
        return alphas

    def matte_square(self, reference_square: torch.Tensor, guidance: torch.Tensor, target_square: torch.Tensor,
                     seed: int) -> torch.Tensor:
        """One official forward (inside :meth:`recording`): ``[1, 3, S, S]`` images, ``[S, S]`` guidance ->
        ``[1, 1, S, S]`` alpha."""
        self.store.reset()
        reference_rows = self._unet_pass(reference_square, seed)
        reference_feature = self._ensemble_mean(reference_rows[1], 1)
        self.store.reset()
        if self.timer.cuda:
            torch.cuda.empty_cache()  # official get_source_feature
        target_rows = self._unet_pass(target_square, seed)
        with self.timer.stage("attention"):
            attention_low = self.store.aggregate(1, self.grids[0])
            attention_high = self.store.aggregate(1, self.grids[1])
        features = UNetFeatures(  # the decoder runs in fp32 whatever the UNet's precision, as in icm_core
            low=self._ensemble_mean(target_rows[0], 1),
            high=self._ensemble_mean(target_rows[1], 1),
            attention_low=attention_low.float(),
            attention_high=attention_high.float(),
        )
        with self.timer.stage("decoder"):
            tokens = self.select_tokens(reference_feature[0], guidance)
            return self.decoder(tokens, features, target_square).alpha

    def select_tokens(self, feature: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        return reference_tokens(feature, guidance, self.grids[1])

    def _unet_pass(self, image: torch.Tensor, seed: int) -> dict[int, torch.Tensor]:
        """``[1, 3, S, S]`` -> outputs of every up block for the E rows (official ``forward_feature_extractor``)."""
        rows = image.to(self.dtype).repeat_interleave(self.ensemble_size, dim=0)  # E identical copies, image-major
        with self.timer.stage("vae"):
            generator = torch.Generator(device="cpu").manual_seed(int(seed))
            latents = self.vae.encode(rows).latent_dist.sample(generator=generator) * self.vae.config.scaling_factor
            noise = torch.randn(latents.shape, generator=generator).to(self.device, latents.dtype)
            timestep = torch.tensor(self.timestep, dtype=torch.long, device=self.device)
            noisy = self.add_noise(latents, noise, timestep)
        outputs: dict[int, torch.Tensor] = {}
        handles = [
            block.register_forward_hook(self._keep(outputs, index)) for index, block in enumerate(self.unet.up_blocks)
        ]
        try:
            with self.timer.stage("unet_total"):
                self.unet(noisy, timestep, encoder_hidden_states=self.prompt.expand(rows.shape[0], -1, -1))
        except _FinishedUpBlocks:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return outputs

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return self.scheduler.add_noise(latents, noise, timestep)  # official: DDIMScheduler.add_noise

    def _keep(self, outputs: dict[int, torch.Tensor], index: int):
        last = index == len(self.unet.up_blocks) - 1

        def hook(_module, _inputs, output):
            outputs[index] = output.detach()
            if last:
                raise _FinishedUpBlocks

        return hook

    def _ensemble_mean(self, rows: torch.Tensor, images: int) -> torch.Tensor:
        return rows.float().reshape(images, self.ensemble_size, *rows.shape[1:]).mean(dim=1)

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Install the recording processor on every Attention module of down/mid/up blocks; restore afterwards."""
        from diffusers.models.attention_processor import Attention

        saved = {}
        for place, container in (("down", self.unet.down_blocks), ("mid", self.unet.mid_block),
                                 ("up", self.unet.up_blocks)):
            for name, module in container.named_modules():
                if isinstance(module, Attention):
                    saved[module] = module.processor
                    module.set_processor(OfficialRecordingProcessor(self.store, place, self.timer))
        try:
            yield
        finally:
            for module, processor in saved.items():
                module.set_processor(processor)
            self.store.reset()
