"""Feature-extractor parity with the official pipeline on the tiny golden (golden/README.md §3)."""

from __future__ import annotations

import pytest
import torch

from icm_core.features.diffusers_backend import DiffusersFeatureBackend
from icm_core.features.noise import add_noise, scaled_linear_alphas_cumprod
from icm_core.features.sites import sites_at


class _NoVAE(torch.nn.Module):
    """The golden stores noisy latents directly; the VAE is never called in these tests."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))


@pytest.fixture(scope="module")
def backend(golden, golden_meta):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_config(golden_meta["unet_config"])
    unet.load_state_dict({k[len("unet.") :]: v for k, v in golden.items() if k.startswith("unet.")}, strict=True)
    return DiffusersFeatureBackend(unet, _NoVAE(), golden["prompt_embeds"])


def test_schedule_matches(golden):
    ours = scaled_linear_alphas_cumprod()
    assert torch.equal(ours, golden["sched.alphas_cumprod"])
    assert float(ours[200].sqrt()) == pytest.approx(float(golden["sched.sqrt_alpha_prod_t"][0]), abs=1e-7)


def test_add_noise_matches(golden):
    schedule = scaled_linear_alphas_cumprod()
    noisy = add_noise(golden["addnoise.clean"], golden["addnoise.noise"], golden["addnoise.timesteps"], schedule)
    torch.testing.assert_close(noisy, golden["addnoise.noisy"], atol=1e-6, rtol=0)
    for prefix, ensemble in (("ref", 2), ("tgt", 2)):
        clean = golden[f"{prefix}_clean_latents"].repeat_interleave(ensemble, dim=0)
        steps = torch.full((clean.shape[0],), 200, dtype=torch.int64)
        noisy = add_noise(clean, golden[f"{prefix}_noise"], steps, schedule)
        torch.testing.assert_close(noisy, golden[f"{prefix}_noisy_latents"], atol=1e-6, rtol=0)


def test_reference_features_match(golden, backend):
    features = backend.unet_features(golden["ref_noisy_latents"], 200, ensemble_size=2, record_attention=False)
    torch.testing.assert_close(features.high, golden["ref_feature"], atol=1e-4, rtol=0)
    assert features.attention_high is None


def test_target_features_and_attention_match(golden, backend):
    features = backend.unet_features(golden["tgt_noisy_latents"], 200, ensemble_size=2, record_attention=True)
    torch.testing.assert_close(features.low, golden["tgt_ft_matting_24"], atol=1e-4, rtol=0)
    torch.testing.assert_close(features.high, golden["tgt_ft_matting_48"], atol=1e-4, rtol=0)
    torch.testing.assert_close(features.high, golden["tgt_ft_cor"], atol=1e-4, rtol=0)
    torch.testing.assert_close(features.attention_low, golden["tgt_attn_24"], atol=1e-5, rtol=0)
    torch.testing.assert_close(features.attention_high, golden["tgt_attn_48"], atol=1e-5, rtol=0)


def test_attention_chunking_does_not_change_maps(golden, backend, monkeypatch):
    """One query per chunk (a 1-byte budget reaches every recorded layer) gives the official maps."""
    from icm_core.features import diffusers_backend

    budgets = []
    chunked = diffusers_backend.chunked_attention_with_probabilities

    def spy(query, key, value, scale, chunk_bytes, *args, **kwargs):
        budgets.append(chunk_bytes)
        return chunked(query, key, value, scale, chunk_bytes, *args, **kwargs)

    monkeypatch.setattr(diffusers_backend, "chunked_attention_with_probabilities", spy)
    small = DiffusersFeatureBackend(backend.unet, backend.vae, golden["prompt_embeds"], attention_chunk_bytes=1)
    features = small.unet_features(golden["tgt_noisy_latents"], 200, ensemble_size=2, record_attention=True)
    assert budgets == [1] * (len(sites_at("low")) + len(sites_at("high")))
    torch.testing.assert_close(features.attention_low, golden["tgt_attn_24"], atol=1e-5, rtol=0)
    torch.testing.assert_close(features.attention_high, golden["tgt_attn_48"], atol=1e-5, rtol=0)


def test_site_table_matches_golden_layers(golden_meta):
    pipeline = golden_meta["pipeline"]
    assert [s.diffusers_path for s in sites_at("low")] == pipeline["attention_layers_24"]
    assert [s.diffusers_path for s in sites_at("high")] == pipeline["attention_layers_48"]


def test_unet_processors_restored_and_forward_stopped_early(golden, backend):
    before = {name: type(p) for name, p in backend.unet.attn_processors.items()}
    calls = []
    handle = backend.unet.up_blocks[3].register_forward_hook(lambda *a: calls.append(1))
    try:
        backend.unet_features(golden["tgt_noisy_latents"], 200, ensemble_size=2, record_attention=True)
    finally:
        handle.remove()
    assert calls == []  # up_blocks[3] never runs
    assert {name: type(p) for name, p in backend.unet.attn_processors.items()} == before


def test_end_to_end_alpha_matches(golden, backend):
    """Stored noisy latents -> our features -> our decoder -> alpha (golden/README.md §3, atol 2e-4)."""
    from icm_core.modeling.decoder import InContextDecoder
    from icm_core.modeling.key_table import infer_decoder_config, our_key
    from icm_core.modeling.similarity import pool_token_mask, select_reference_tokens

    official = {k: v for k, v in golden.items() if k.startswith("in_context_decoder.")}
    decoder = InContextDecoder(infer_decoder_config(official))
    decoder.load_state_dict({our_key(k): v for k, v in official.items()}, strict=True)
    reference = backend.unet_features(golden["ref_noisy_latents"], 200, ensemble_size=2, record_attention=False)
    targets = backend.unet_features(golden["tgt_noisy_latents"], 200, ensemble_size=2, record_attention=True)
    tokens = select_reference_tokens(reference.high[0], pool_token_mask(golden["ref_mask"][0, 0], 8))
    with torch.no_grad():
        output = decoder(tokens, targets, golden["tgt_images"])
    torch.testing.assert_close(output.alpha, golden["alpha"], atol=2e-4, rtol=0)
    torch.testing.assert_close(output.guidance_map, golden["guidance_map"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("per_row", [True, False])
def test_chunked_attention_equals_plain_softmax_attention(per_row):
    from icm_core.features.attention import chunked_attention_with_probabilities

    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(3, 2, 300, 8, generator=generator) for _ in range(3))
    output, probabilities = chunked_attention_with_probabilities(query, key, value, 8**-0.5, 4096, per_row)
    weights = (query @ key.transpose(-1, -2) * 8**-0.5).softmax(-1)
    torch.testing.assert_close(probabilities, weights.mean(1), atol=1e-6, rtol=0)
    torch.testing.assert_close(output, weights @ value, atol=1e-5, rtol=0)


def test_autocast_and_channels_last_options(golden):
    """bf16 autocast stays close to fp32 with fp32 attention maps; channels-last changes nothing but the layout."""
    from icm_core.tiny import build_tiny_backend

    reference = build_tiny_backend(seed=0)
    latents = golden["tgt_noisy_latents"]
    exact = reference.unet_features(latents, 200, ensemble_size=2, record_attention=True)
    fresh = build_tiny_backend(seed=0)
    autocast = DiffusersFeatureBackend(fresh.unet, fresh.vae, fresh.prompt, autocast_dtype=torch.bfloat16)
    low_precision = autocast.unet_features(latents, 200, ensemble_size=2, record_attention=True)
    assert low_precision.attention_high.dtype == torch.float32
    torch.testing.assert_close(low_precision.attention_high.sum(-1), torch.ones(2, 8, 8), atol=1e-5, rtol=0)
    scale = float(exact.high.abs().max())
    assert float((low_precision.high - exact.high).abs().max()) < 0.05 * scale
    assert float((low_precision.attention_high - exact.attention_high).abs().max()) < 0.02
    fresh = build_tiny_backend(seed=0)
    channels_last = DiffusersFeatureBackend(fresh.unet, fresh.vae, fresh.prompt, channels_last=True)
    same = channels_last.unet_features(latents, 200, ensemble_size=2, record_attention=True)
    torch.testing.assert_close(same.high, exact.high, atol=1e-5, rtol=0)
    torch.testing.assert_close(same.attention_low, exact.attention_low, atol=1e-6, rtol=0)
