"""Every precision mode the pack offers keeps the golden alpha within 5e-3 of fp32 (docs/benchmarks.md, Precision).

End to end on the official tiny golden: stored noisy latents -> UNet features in the mode -> the fp32 decoder.
Both autocast dtypes run on CPU, so these run in CI.
"""

from __future__ import annotations

import logging

import pytest
import torch

from icm_core.features.attention import AttentionAccumulator
from icm_core.features.backend import ensemble_features
from icm_core.features.diffusers_backend import DiffusersFeatureBackend
from icm_core.features.precision import fp32_normalisations, resolve_compute_dtype
from icm_core.modeling.decoder import InContextDecoder
from icm_core.modeling.key_table import infer_decoder_config, our_key
from icm_core.modeling.similarity import pool_token_mask, select_reference_tokens
from icm_core.pipeline import IconMatting, decode_alpha

TOLERANCE = 5e-3
CPU = torch.device("cpu")

# name -> (UNet/VAE weight dtype asked for, autocast dtype asked for); bf16 requests run as fp16.
MODES = {
    "fp32": (torch.float32, None),
    "autocast fp16": (torch.float32, torch.float16),
    "autocast bf16": (torch.float32, torch.bfloat16),
    "weights fp16": (torch.float16, None),
    "weights bf16": (torch.bfloat16, None),
    "weights fp16 + autocast fp16": (torch.float16, torch.float16),
}


class _NoVAE(torch.nn.Module):
    """The golden stores noisy latents directly; the VAE is never called here."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))


def _golden_unet(golden, golden_meta, dtype: torch.dtype) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_config(golden_meta["unet_config"])
    unet.load_state_dict({k[len("unet.") :]: v for k, v in golden.items() if k.startswith("unet.")}, strict=True)
    return unet.to(dtype)


def _golden_decoder(golden) -> InContextDecoder:
    official = {k: v for k, v in golden.items() if k.startswith("in_context_decoder.")}
    decoder = InContextDecoder(infer_decoder_config(official))
    decoder.load_state_dict({our_key(k): v for k, v in official.items()}, strict=True)
    return decoder.eval()


def _alpha(golden, golden_meta, weights: torch.dtype, autocast: torch.dtype | None) -> torch.Tensor:
    """Golden noisy latents -> features in the mode (as load_engine sets it up) -> decoder as the pipeline runs it."""
    unet = _golden_unet(golden, golden_meta, resolve_compute_dtype(weights, "UNet/VAE dtype"))
    backend = DiffusersFeatureBackend(unet, _NoVAE(), golden["prompt_embeds"], autocast_dtype=autocast)
    reference = backend.unet_features(golden["ref_noisy_latents"], 200, ensemble_size=2, record_attention=False)
    targets = backend.unet_features(golden["tgt_noisy_latents"], 200, ensemble_size=2, record_attention=True)
    tokens = select_reference_tokens(reference.high[0], pool_token_mask(golden["ref_mask"][0, 0], 8))
    return decode_alpha(_golden_decoder(golden), tokens, targets, golden["tgt_images"], CPU)


@pytest.fixture(scope="module")
def mode_alpha(golden, golden_meta):
    """``mode_alpha(name)``: the golden alpha in one of MODES, computed once per module."""
    cache: dict[str, torch.Tensor] = {}

    def get(mode: str) -> torch.Tensor:
        if mode not in cache:
            cache[mode] = _alpha(golden, golden_meta, *MODES[mode])
        return cache[mode]

    return get


@pytest.fixture(scope="module")
def fp32_alpha(mode_alpha) -> torch.Tensor:
    return mode_alpha("fp32")


@pytest.mark.parametrize("mode", list(MODES))
def test_offered_mode_keeps_golden_alpha_within_tolerance(golden, fp32_alpha, mode_alpha, mode):
    alpha = mode_alpha(mode)
    assert alpha.dtype == torch.float32 and torch.isfinite(alpha).all()
    error = float((alpha - fp32_alpha).abs().max())
    assert error <= TOLERANCE, f"{mode}: alpha differs from fp32 by {error:.2e} (> {TOLERANCE})"
    official = float((alpha - golden["alpha"]).abs().max())
    assert official <= TOLERANCE, f"{mode}: alpha differs from the official alpha by {official:.2e}"


def test_fp16_normalisations_are_what_keeps_autocast_close(fp32_alpha, mode_alpha):
    """fp32 norms halve the fp16 autocast error on the golden (measured 2.2e-3 with, 4.2e-3 without)."""
    alpha = mode_alpha("autocast fp16")
    assert float((alpha - fp32_alpha).abs().max()) < 3e-3


def test_normalisations_compute_in_fp32_under_autocast_and_are_restored(golden, golden_meta):
    unet = _golden_unet(golden, golden_meta, torch.float32)
    backend = DiffusersFeatureBackend(unet, _NoVAE(), golden["prompt_embeds"], autocast_dtype=torch.float16)
    seen: dict[str, torch.dtype] = {}
    norms = {name: m for name, m in unet.named_modules() if isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm))}
    handles = [m.register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o.dtype)) for n, m in norms.items()]
    backend.unet_features(golden["tgt_noisy_latents"], 200, ensemble_size=2, record_attention=True)
    for handle in handles:
        handle.remove()
    assert seen and set(seen.values()) == {torch.float32}
    assert all("forward" not in module.__dict__ for module in norms.values())  # the shared UNet is left as it was


def test_fp32_mode_touches_nothing(golden, golden_meta):
    unet = _golden_unet(golden, golden_meta, torch.float32)
    backend = DiffusersFeatureBackend(unet, _NoVAE(), golden["prompt_embeds"])
    assert backend.autocast_dtype is None
    with fp32_normalisations(unet, enabled=False):
        assert not any("forward" in module.__dict__ for module in unet.modules())


def test_bf16_requests_run_as_fp16_with_a_note(caplog, golden, golden_meta):
    with caplog.at_level(logging.WARNING, logger="icm_core.features.precision"):
        assert resolve_compute_dtype(torch.bfloat16, "autocast") == torch.float16
    assert "autocast bf16 runs as fp16" in caplog.text
    assert resolve_compute_dtype(torch.float16, "autocast") == torch.float16
    assert resolve_compute_dtype(None, "autocast") is None
    with pytest.raises(ValueError, match=r"must be fp32, fp16 or bf16 \(runs as fp16\), got torch.float64"):
        resolve_compute_dtype(torch.float64, "UNet/VAE dtype")
    backend = DiffusersFeatureBackend(
        _golden_unet(golden, golden_meta, torch.float32), _NoVAE(), golden["prompt_embeds"],
        autocast_dtype=torch.bfloat16,
    )
    assert backend.autocast_dtype == torch.float16


def test_bf16_unet_weights_are_refused_by_the_backend(golden, golden_meta):
    unet = _golden_unet(golden, golden_meta, torch.bfloat16)
    with pytest.raises(ValueError, match=r"weights are torch.bfloat16; load them in fp32 or fp16"):
        DiffusersFeatureBackend(unet, _NoVAE(), golden["prompt_embeds"])


def test_decoder_given_in_half_precision_runs_in_fp32(caplog):
    from icm_core.tiny import build_tiny_backend, build_tiny_decoder

    decoder = build_tiny_decoder().to(torch.float16)
    with caplog.at_level(logging.WARNING, logger="icm_core.pipeline"):
        engine = IconMatting(build_tiny_backend(), decoder)
    assert "runs in fp32" in caplog.text
    floats = [t for t in engine.decoder.state_dict().values() if t.is_floating_point()]
    assert floats and all(t.dtype == torch.float32 for t in floats)


def test_decode_alpha_is_fp32_inside_a_callers_autocast(golden):
    decoder = _golden_decoder(golden)
    from icm_core.types import UNetFeatures

    features = UNetFeatures(golden["tgt_ft_matting_24"].half(), golden["tgt_ft_matting_48"].half(),
                            golden["tgt_attn_24"], golden["tgt_attn_48"])
    tokens = select_reference_tokens(golden["ref_feature"][0], pool_token_mask(golden["ref_mask"][0, 0], 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        alpha = decode_alpha(decoder, tokens, features, golden["tgt_images"], CPU)
    assert alpha.dtype == torch.float32
    # Only the fp16 rounding of the stored features remains.
    assert float((alpha - golden["alpha"]).abs().max()) < 2e-3


def test_ensemble_averages_are_taken_in_fp32():
    """Features and attention maps computed in fp16 (ComfyUI's UNet on GPUs) are summed in fp32."""
    generator = torch.Generator().manual_seed(0)
    accumulator = AttentionAccumulator(num_images=1, ensemble_size=4)
    probabilities = torch.rand(4, 4, 4, generator=generator).half()  # [n * E, N, N], fp16 as a GPU UNet gives
    for _ in range(5):  # five layers per level
        accumulator.add("low", probabilities)
        accumulator.add("high", torch.full((4, 16, 16), 1 / 16).half())
    maps = accumulator.maps()
    assert maps["low"].dtype == torch.float32
    torch.testing.assert_close(maps["low"], probabilities.float().mean(0).view(1, 2, 2, 4), atol=0, rtol=1e-6)
    rows = torch.full((4, 8, 2, 2), 1000.0, dtype=torch.float16) + torch.arange(4).view(4, 1, 1, 1).half()
    features = ensemble_features({"low": rows, "high": rows}, accumulator, record_attention=False)
    assert features.low.dtype == torch.float32
    torch.testing.assert_close(features.low, torch.full((1, 8, 2, 2), 1001.5), atol=0, rtol=0)


@pytest.mark.parametrize("value", ["fp32", "auto", "fp16", "bf16"])
def test_node_precision_values_including_old_ones_mean_fp32(pack_module, value):
    spec = pack_module("nodes.spec")
    port = next(p for p in spec.LOAD_SPEC.inputs if p.name == "precision")
    assert port.options == ("fp32", "auto") and port.default == "fp32"
    dtype, note = spec.decoder_precision(value)
    assert dtype == "fp32"
    assert (note is None) == (value in port.options)
    if note:
        assert f"decoder precision '{value}' is no longer offered and runs in fp32" in note


def test_node_precision_unknown_value_is_refused(pack_module):
    spec = pack_module("nodes.spec")
    with pytest.raises(ValueError, match=r"precision must be one of \('fp32', 'auto'\) .* got 'fp8'"):
        spec.decoder_precision("fp8")
