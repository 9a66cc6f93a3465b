"""Runs inside a ComfyUI Python environment: compares the ComfyUI feature backend with the diffusers backend.

Usage: python agreement_probe.py COMFYUI_PATH PACK_DIR CHECKPOINT OUT_JSON

Both backends read the same SD 2.x checkpoint (ComfyUI's loader on one side, diffusers' ldm key conversion on the
other) and get the same noisy latents; the script writes the max abs differences as JSON.
"""

from __future__ import annotations

import importlib.util
import json
import sys


def _import_diffusers_first():
    # The headless test environment ships an import-only torchvision stand-in; transformers would take it for
    # the real package. Import the diffusers pieces before it is on the path so they see no torchvision.
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if "comfy_e2e_shims" not in p]
    import diffusers  # noqa: F401
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    sys.path[:] = saved
    return AutoencoderKL, UNet2DConditionModel, convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint


def _import_pack(pack_dir: str):
    spec = importlib.util.spec_from_file_location(
        "icm_pack", f"{pack_dir}/__init__.py", submodule_search_locations=[pack_dir]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["icm_pack"] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    comfy_path, pack_dir, checkpoint, out_json = sys.argv[1:5]
    AutoencoderKL, UNet2DConditionModel, convert_unet, convert_vae = _import_diffusers_first()
    sys.path.insert(0, comfy_path)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # before comfy.model_management is imported: no GPU here
    import comfy.sd
    import comfy.utils
    import torch

    _import_pack(pack_dir)
    from icm_pack.icm_core.features.diffusers_backend import DiffusersFeatureBackend
    from icm_pack.nodes.comfy_backend import ComfyFeatureBackend

    torch.manual_seed(0)
    model, clip, vae = comfy.sd.load_checkpoint_guess_config(checkpoint, output_vae=True, output_clip=True)[:3]
    prompt = clip.encode_from_tokens(clip.tokenize(""))
    comfy_backend = ComfyFeatureBackend(model, vae, prompt)

    state = comfy.utils.load_torch_file(checkpoint)
    unet_config = dict(
        UNet2DConditionModel.load_config(f"{pack_dir}/icm_core/weights/sd21_configs/unet/config.json"),
        block_out_channels=[320, 320, 320, 320],
        attention_head_dim=[5, 5, 5, 5],
    )
    unet = UNet2DConditionModel.from_config(unet_config)
    unet.load_state_dict(convert_unet(state, unet_config), strict=True)
    vae_config = AutoencoderKL.load_config(f"{pack_dir}/icm_core/weights/sd21_configs/vae/config.json")
    diffusers_vae = AutoencoderKL.from_config(vae_config)
    diffusers_vae.load_state_dict(convert_vae(state, vae_config), strict=True)
    diffusers_backend = DiffusersFeatureBackend(unet.float(), diffusers_vae.float(), prompt.float())

    generator = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 256, 256, generator=generator) * 2 - 1
    latents = torch.randn(4, 4, 32, 32, generator=generator)
    results = {"feature_channels": [comfy_backend.feature_channels, diffusers_backend.feature_channels],
               "fingerprints": [comfy_backend.fingerprint(), diffusers_backend.fingerprint()]}
    with torch.no_grad():
        ours, theirs = comfy_backend.latent_distribution(images), diffusers_backend.latent_distribution(images)
        results["posterior_mean"] = float((ours.mean - theirs.mean).abs().max())
        results["posterior_std"] = float((ours.std - theirs.std).abs().max())
        results["alpha_bar"] = abs(comfy_backend.alpha_bar(200) - diffusers_backend.alpha_bar(200))
        a = comfy_backend.unet_features(latents, 200, ensemble_size=2, record_attention=True)
        b = diffusers_backend.unet_features(latents, 200, ensemble_size=2, record_attention=True)
        for name in ("low", "high", "attention_low", "attention_high"):
            results[name] = float((getattr(a, name).float() - getattr(b, name).float()).abs().max())
        results["feature_scale"] = float(b.high.abs().max())
        reference = comfy_backend.unet_features(latents, 200, ensemble_size=2, record_attention=False)
        results["reference_high"] = float((reference.high - b.high).abs().max())
    with open(out_json, "w") as handle:
        json.dump(results, handle)


if __name__ == "__main__":
    main()
