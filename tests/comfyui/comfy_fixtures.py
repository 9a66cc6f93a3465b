"""Session fixtures for the ComfyUI tests: test models, one shared ComfyUI server, the core engine on the same weights.

Environment:
    COMFYUI_PATH   a runnable ComfyUI tree (``setup_comfy.sh`` makes one). Without it the ComfyUI tests skip, except
                   when ``CI`` is set: there a missing ComfyUI fails them.
    COMFY_PYTHON   its Python (default: ``<COMFYUI_PATH>/../venv/bin/python``).
    COMFY_E2E      the headless toolkit (default: ``<repo>/../shared/comfy_e2e``).
    ICM_TEST_SD2_CHECKPOINT  a random narrow SD2 checkpoint with a KL VAE (default: made by the toolkit's
                   ``make_random_sd2_checkpoint.py --unet narrow --vae kl`` with ComfyUI's Python).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
PACK_NAME = "comfyui-in-context-matting"
TEST_DECODER = "icm_test_narrow320_256.safetensors"
TEST_CHECKPOINT = "sd2_rand_narrow_kl.safetensors"
SD1_UNET = "sd1_shaped_unet.safetensors"
INPUTS = REPO / "workflows" / "inputs"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_comfyui() -> None:
    """Skip without a ComfyUI tree; in CI a missing ComfyUI is a failure, never a skip."""
    if COMFYUI_PATH:
        return
    message = "COMFYUI_PATH is not set: no ComfyUI tree to test the nodes in"
    if in_ci():
        pytest.fail(message + " (CI must run the ComfyUI tests; see the README's Tests section)")
    pytest.skip(message)


def comfy_python() -> str:
    return os.environ.get("COMFY_PYTHON", str(Path(COMFYUI_PATH).resolve().parent / "venv" / "bin" / "python"))


def toolkit() -> Path:
    return Path(os.environ.get("COMFY_E2E", REPO.parent / "shared" / "comfy_e2e"))


def toolkit_env(models: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"COMFY_DIR": str(Path(COMFYUI_PATH).resolve()), "COMFY_PYTHON": comfy_python(),
                "COMFY_MODELS": str(models)})
    return env


def narrow_sd2_config_dir(root: Path) -> Path:
    """The shipped SD 2.1 configs, with the narrow test UNet's widths (every level 320 channels, 64-dim heads)."""
    target = root / "narrow_sd2_configs"
    if not target.exists():
        shutil.copytree(REPO / "icm_core" / "weights" / "sd21_configs", target)
        path = target / "unet" / "config.json"
        config = json.loads(path.read_text())
        config.update(block_out_channels=[320, 320, 320, 320], attention_head_dim=[5, 5, 5, 5])
        path.write_text(json.dumps(config))
    return target


@pytest.fixture(scope="session")
def comfy_models(tmp_path_factory) -> Path:
    """A models folder: the random narrow SD2 checkpoint, a matching random decoder, an SD1-shaped UNet."""
    require_comfyui()
    from icm_core.config import DecoderConfig
    from icm_core.modeling.decoder import InContextDecoder
    from icm_core.weights.decoder import save_decoder

    root = tmp_path_factory.mktemp("models")
    for folder in ("checkpoints", "icm", "diffusion_models", "icm_contexts"):
        (root / folder).mkdir()
    checkpoint = root / "checkpoints" / TEST_CHECKPOINT
    given = os.environ.get("ICM_TEST_SD2_CHECKPOINT")
    if given:
        checkpoint.symlink_to(Path(given).resolve())
    else:
        subprocess.run(
            [comfy_python(), str(toolkit() / "make_random_sd2_checkpoint.py"), "--unet", "narrow", "--vae", "kl",
             "--clip-dtype", "fp8", "--dtype", "fp32", "--out", str(checkpoint)],
            check=True, env=toolkit_env(root), capture_output=True,
        )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        decoder = InContextDecoder(
            DecoderConfig(feature_channels=320, image_size=256, attention_channels=32, projected_channels=32,
                          fusion_channels=(32, 16, 16, 8))
        )
        with torch.no_grad():  # random weights give alphas near 0.5 everywhere: add contrast so comparisons bite
            decoder.matting_head.out.weight.mul_(40.0)
            decoder.matting_head.out.bias.zero_()
    save_decoder(decoder, root / "icm" / TEST_DECODER)
    _write_sd1_shaped_unet(checkpoint, root / "diffusion_models" / SD1_UNET)
    return root


def _write_sd1_shaped_unet(checkpoint: Path, target: Path) -> None:
    """The narrow SD2 UNet reshaped to what ComfyUI detects as SD 1.x: 768-wide context, conv projections."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    prefix = "model.diffusion_model."
    tensors = {}
    with safe_open(str(checkpoint), framework="pt") as handle:
        for key in handle.keys():
            if not key.startswith(prefix):
                continue
            value = handle.get_tensor(key)
            name = key[len(prefix):]
            if name.endswith(("attn2.to_k.weight", "attn2.to_v.weight")):
                value = value[:, :768].contiguous()
            elif name.endswith(("proj_in.weight", "proj_out.weight")) and value.ndim == 2:
                value = value[:, :, None, None].contiguous()
            tensors[name] = value
    save_file(tensors, str(target))


@pytest.fixture(scope="session")
def comfy(comfy_models, tmp_path_factory):
    """One ComfyUI server for the whole session, with this pack, the test-probe pack and the shipped inputs."""
    from comfy_server import ComfyServer

    server = ComfyServer(
        Path(COMFYUI_PATH), comfy_python(),
        {PACK_NAME: REPO, "icm_test_probe": REPO / "tests" / "comfyui" / "tensor_probe"},
        comfy_models, tmp_path_factory.mktemp("comfy_base"), toolkit() / "shims",
    )
    server.copy_inputs(INPUTS)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def require_browser() -> str:
    """The system Chromium with playwright installed; skip without them, fail in CI."""
    from comfy_frontend import find_chromium

    require_comfyui()
    chromium = find_chromium()
    problem = None
    if chromium is None:
        problem = "no Chromium on PATH (apt-get install -y chromium)"
    else:
        try:
            import playwright  # noqa: F401
        except ImportError:
            problem = "playwright is not installed (pip install playwright; never `playwright install`)"
    if problem:
        if in_ci():
            pytest.fail(problem + "; CI must run the browser tests")
        pytest.skip(problem)
    return chromium


@pytest.fixture(scope="module")
def frontend(comfy):
    """ComfyUI's web frontend on the session server, in one headless Chromium page per test module."""
    from comfy_frontend import Frontend

    with Frontend(comfy.url, require_browser()) as page:
        yield page


@pytest.fixture(scope="session")
def core_engines(comfy_models, tmp_path_factory):
    """``make(inputs of Load IconMatting)`` -> the core engine (diffusers backend) on the server's weights."""
    from icm_core.config import ExtractionConfig
    from icm_core.features.diffusers_backend import DiffusersFeatureBackend
    from icm_core.pipeline import IconMatting
    from icm_core.weights.decoder import load_decoder
    from icm_core.weights.stable_diffusion import load_stable_diffusion

    parts = load_stable_diffusion(comfy_models / "checkpoints" / TEST_CHECKPOINT,
                                  config_dir=narrow_sd2_config_dir(tmp_path_factory.mktemp("configs")))
    backend = DiffusersFeatureBackend(parts.unet, parts.vae, parts.empty_prompt_embedding)
    engines = {}

    def make(inputs: dict) -> IconMatting:
        key = (inputs["decoder_name"], inputs["timestep"], inputs["ensemble_size"])
        if key not in engines:
            decoder = load_decoder(comfy_models / "icm" / inputs["decoder_name"])
            extraction = ExtractionConfig(timestep=inputs["timestep"], ensemble_size=inputs["ensemble_size"],
                                          image_size=decoder.config.image_size)
            engines[key] = IconMatting(backend, decoder, extraction)
        return engines[key]

    return make
