"""Decoder parity with the official model on the tiny golden (tolerances from golden/README.md §3)."""

from __future__ import annotations

import pytest
import torch

from icm_core.modeling.decoder import InContextDecoder
from icm_core.modeling.key_table import infer_decoder_config, our_key
from icm_core.modeling.similarity import pool_token_mask, select_reference_tokens
from icm_core.types import UNetFeatures


def _decoder_from_golden(golden: dict[str, torch.Tensor]) -> InContextDecoder:
    official = {k: v for k, v in golden.items() if k.startswith("in_context_decoder.")}
    decoder = InContextDecoder(infer_decoder_config(official))
    decoder.load_state_dict({our_key(k): v for k, v in official.items()}, strict=True)
    return decoder.eval()


@pytest.fixture(scope="module")
def decoded(golden):
    decoder = _decoder_from_golden(golden)
    token_mask = pool_token_mask(golden["ref_mask"][0, 0], grid=8)
    tokens = select_reference_tokens(golden["ref_feature"][0], token_mask)
    features = UNetFeatures(
        low=golden["tgt_ft_matting_24"],
        high=golden["tgt_ft_matting_48"],
        attention_low=golden["tgt_attn_24"],
        attention_high=golden["tgt_attn_48"],
    )
    with torch.no_grad():
        output = decoder(tokens, features, golden["tgt_images"], return_intermediates=True)
    return token_mask, tokens, output


def test_reference_token_mask_matches(golden, decoded):
    token_mask, tokens, _ = decoded
    assert torch.equal(token_mask.float(), golden["dec_ref_token_mask"][0, 0])
    assert tokens.shape == (int(golden["dec_num_ref_tokens"][0]), 48)


def test_guidance_map_matches(golden, decoded):
    output = decoded[2]
    torch.testing.assert_close(output.guidance_map, golden["guidance_map"], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("ours", "theirs", "atol"),
    [
        ("attention_feature_low", "dec_attn_feat_24", 1e-4),
        ("attention_feature_high", "dec_attn_feat_48", 1e-4),
        ("projected_feature_low", "dec_ft_proj_24", 1e-4),
        ("projected_feature_high", "dec_ft_proj_48", 1e-4),
        ("fused_feature_low", "dec_ft_attn_24", 1e-4),
        ("fused_feature_high", "dec_ft_attn_48", 1e-4),
        ("scale_fused_feature", "dec_fused_feature", 1e-4),
    ],
)
def test_intermediates_match(golden, decoded, ours, theirs, atol):
    torch.testing.assert_close(decoded[2].intermediates[ours], golden[theirs], atol=atol, rtol=0)


def test_alpha_and_logits_match(golden, decoded):
    output = decoded[2]
    torch.testing.assert_close(output.logits, golden["dec_alpha_logits"], atol=1e-3, rtol=0)
    torch.testing.assert_close(output.alpha, golden["alpha"], atol=1e-4, rtol=0)
