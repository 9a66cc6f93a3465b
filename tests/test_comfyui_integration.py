"""The pack inside a real, headless ComfyUI (CPU). Skipped unless ``COMFYUI_PATH`` points at a ComfyUI tree.

Environment:
    COMFYUI_PATH   a runnable ComfyUI tree (e.g. made by ../shared/comfy_e2e/setup_comfy.sh).
    COMFY_PYTHON   its Python (default: ``<COMFYUI_PATH>/../venv/bin/python``).
    COMFY_E2E      the headless toolkit (default: ``<repo>/../shared/comfy_e2e``).
    ICM_TEST_SD2_CHECKPOINT  a random narrow SD2 checkpoint with a KL VAE (default: made by the toolkit's
                   ``make_random_sd2_checkpoint.py --unet narrow --vae kl`` into the test's models folder).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
COMFYUI_PATH = os.environ.get("COMFYUI_PATH")

pytestmark = [
    pytest.mark.comfyui,
    pytest.mark.skipif(not COMFYUI_PATH, reason="COMFYUI_PATH is not set: no ComfyUI tree to test the nodes in"),
]

TEST_DECODER = "icm_test_narrow320_256.safetensors"
TEST_CHECKPOINT = "sd2_rand_narrow_kl.safetensors"
SD1_UNET = "sd1_shaped_unet.safetensors"


def _comfy_python() -> str:
    return os.environ.get("COMFY_PYTHON", str(Path(COMFYUI_PATH).resolve().parent / "venv" / "bin" / "python"))


def _toolkit() -> Path:
    return Path(os.environ.get("COMFY_E2E", REPO.parent / "shared" / "comfy_e2e"))


def _toolkit_env(models: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"COMFY_DIR": str(Path(COMFYUI_PATH).resolve()), "COMFY_PYTHON": _comfy_python(), "COMFY_MODELS": str(models)})
    return env


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """A models folder: the random narrow SD2 checkpoint, a matching random decoder, an SD1-shaped UNet."""
    from icm_core.config import DecoderConfig
    from icm_core.modeling.decoder import InContextDecoder
    from icm_core.weights.decoder import save_decoder

    root = tmp_path_factory.mktemp("models")
    for folder in ("checkpoints", "icm", "diffusion_models"):
        (root / folder).mkdir()
    checkpoint = root / "checkpoints" / TEST_CHECKPOINT
    given = os.environ.get("ICM_TEST_SD2_CHECKPOINT")
    if given:
        checkpoint.symlink_to(Path(given).resolve())
    else:
        subprocess.run(
            [sys.executable, str(_toolkit() / "make_random_sd2_checkpoint.py"), "--unet", "narrow", "--vae", "kl",
             "--clip-dtype", "fp8", "--dtype", "fp32", "--out", str(checkpoint)],
            check=True, env=_toolkit_env(root), capture_output=True,
        )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        decoder = InContextDecoder(
            DecoderConfig(feature_channels=320, image_size=256, attention_channels=32, projected_channels=32,
                          fusion_channels=(32, 16, 16, 8))
        )
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
            name = key[len(prefix) :]
            if name.endswith(("attn2.to_k.weight", "attn2.to_v.weight")):
                value = value[:, :768].contiguous()
            elif name.endswith(("proj_in.weight", "proj_out.weight")) and value.ndim == 2:
                value = value[:, :, None, None].contiguous()
            tensors[name] = value
    save_file(tensors, str(target))


VIDEO_FRAMES, VIDEO_SIZE = 6, (192, 160)  # frames, (width, height) of the test video icm_video.mp4

# Run with the ComfyUI venv's Python: PyAV is a ComfyUI requirement, the test Python may not have it.
_VIDEO_SCRIPT = """
import sys
import av
import numpy as np

path, frames, width, height = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = np.random.default_rng(1)
with av.open(path, mode="w") as container:
    stream = container.add_stream("mpeg4", rate=12)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    for index in range(frames):
        frame = (rng.random((height, width, 3)) * 255).astype(np.uint8)
        x, y = 72 + 8 * index, 56 + 2 * index  # a moving orange square; frame 0 covers the example clicks
        frame[y:y + 48, x:x + 48] = (240, 140, 40)
        for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)
"""


def _write_inputs(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    image = (rng.random((200, 240, 3)) * 255).astype(np.uint8)
    alpha = np.full((200, 240), 255, np.uint8)
    alpha[40:160, 60:200] = 0  # painted in the mask editor: Load Image's mask is 1 - alpha
    Image.fromarray(np.dstack([image, alpha])).save(folder / "icm_reference.png")
    image = (rng.random((180, 220, 3)) * 255).astype(np.uint8)
    alpha = np.full((180, 220), 255, np.uint8)
    alpha[30:150, 50:170] = 0
    Image.fromarray(np.dstack([image, alpha])).save(folder / "icm_reference_2.png")
    for index, size in enumerate([(180, 260), (256, 192), (230, 230)], start=1):
        Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8)).save(folder / f"icm_target_{index}.png")
    if not (folder / "icm_video.mp4").is_file():
        subprocess.run([_comfy_python(), "-c", _VIDEO_SCRIPT, str(folder / "icm_video.mp4"), str(VIDEO_FRAMES),
                        *map(str, VIDEO_SIZE)], check=True, capture_output=True)
    return folder


def _video_info(path: Path) -> dict:
    """Frame count and size of a video file, read with PyAV in the ComfyUI venv."""
    script = ("import json, sys, av\n"
              "with av.open(sys.argv[1]) as c:\n"
              "    frames = [f.to_ndarray(format='rgb24') for f in c.decode(video=0)]\n"
              "print(json.dumps({'frames': len(frames), 'height': frames[0].shape[0], 'width': frames[0].shape[1]}))")
    out = subprocess.run([_comfy_python(), "-c", script, str(path)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def _run_workflow(workflow: dict, models: Path, inputs: Path, tmp_path: Path, workdir: Path | None = None) -> dict:
    path = tmp_path / "workflow_api.json"
    path.write_text(json.dumps(workflow))
    command = [sys.executable, str(_toolkit() / "run_workflow.py"), "--custom-node", str(REPO), "--workflow", str(path),
               "--input-dir", str(inputs), "--models-dir", str(models), "--timeout", "900"]
    if workdir is not None:
        command += ["--workdir", str(workdir)]
    process = subprocess.run(command, env=_toolkit_env(models), capture_output=True, text=True)
    return json.loads(process.stdout)


def _matting_nodes(reference_mask: list, extra: dict | None = None) -> dict:
    """Checkpoint -> Load IconMatting; targets batched -> Apply; alpha saved. ``reference_mask`` feeds Encode."""
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TEST_CHECKPOINT}},
        "2": {"class_type": "ICM_LoadIconMatting", "inputs": {
            "model": ["1", 0], "vae": ["1", 2], "clip": ["1", 1], "decoder_name": TEST_DECODER,
            "timestep": 200, "ensemble_size": 2, "precision": "fp32"}},
        "3": {"class_type": "LoadImage", "inputs": {"image": "icm_reference.png"}},
        "4": {"class_type": "ICM_EncodeReferenceContext", "inputs": {
            "icm_model": ["2", 0], "reference": ["3", 0], "mask": reference_mask, "invert_mask": False, "seed": 0,
            "min_coverage": 1.0, "fit": "stretch"}},
        "5": {"class_type": "LoadImage", "inputs": {"image": "icm_target_1.png"}},
        "6": {"class_type": "LoadImage", "inputs": {"image": "icm_target_2.png"}},
        "7": {"class_type": "ImageBatch", "inputs": {"image1": ["5", 0], "image2": ["6", 0]}},
        "8": {"class_type": "ICM_ApplyInContextMatte", "inputs": {
            "icm_model": ["2", 0], "context": ["4", 0], "images": ["7", 0], "batch_size": 2, "seed": 0,
            "fit": "pad", "refine_edges": True, "estimate_colours": True, "background_color": "#00ff00",
            "refine_radius": 0, "refine_eps": 1e-4}},
        "9": {"class_type": "MaskToImage", "inputs": {"mask": ["8", 0]}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "alpha"}},
    }
    graph.update(extra or {})
    return graph


def _for_test_models(workflow: dict) -> dict:
    """Swap the real model names and sizes of an example workflow for the small CPU fixtures."""
    for node in workflow.values():
        inputs = node["inputs"]
        if inputs.get("ckpt_name") == "v2-1_768-ema-pruned.safetensors":
            inputs["ckpt_name"] = TEST_CHECKPOINT
        if inputs.get("decoder_name") == "12-0.00800-mat.pth":
            inputs["decoder_name"] = TEST_DECODER
        if node["class_type"] == "ICM_LoadIconMatting":
            inputs["ensemble_size"] = 2
        if node["class_type"] == "EmptyLatentImage":
            inputs.update(width=256, height=256, batch_size=2)
        if node["class_type"] == "KSampler":
            inputs["steps"] = 1
        if node["class_type"] == "ICM_ApplyInContextMatte":
            inputs["batch_size"] = 2
    return workflow


def test_backends_agree_on_the_same_weights(models, tmp_path):
    out = tmp_path / "agreement.json"
    subprocess.run(
        [_comfy_python(), str(REPO / "tests" / "comfyui" / "agreement_probe.py"), str(Path(COMFYUI_PATH).resolve()),
         str(REPO), str(models / "checkpoints" / TEST_CHECKPOINT), str(out)],
        check=True, capture_output=True,
    )
    result = json.loads(out.read_text())
    assert result["feature_channels"] == [320, 320]
    assert result["posterior_mean"] < 1e-4 and result["posterior_std"] < 1e-4
    assert result["alpha_bar"] < 1e-5
    for name in ("low", "high", "reference_high"):
        assert result[name] < 1e-4, (name, result)
    for name in ("attention_low", "attention_high"):
        assert result[name] < 1e-5, (name, result)


# per example: how many alpha mattes (one file each) it saves, or how many videos (all frames in each)
EXPECTED_ALPHAS = {"matte_loaded_images_api.json": 3, "generate_then_matte_api.json": 2,
                   "points_reference_matte_api.json": 3, "several_references_matte_api.json": 3}
EXPECTED_VIDEOS = {"video_first_frame_matte_api.json": 2}


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "workflows" / "api").glob("*_api.json")))
def test_example_api_workflows_run(name, models, tmp_path):
    assert name in EXPECTED_ALPHAS or name in EXPECTED_VIDEOS, f"{name}: add its expected outputs to this test"
    workflow = _for_test_models(json.loads((REPO / "workflows" / "api" / name).read_text()))
    workdir = tmp_path / "comfy_base"
    result = _run_workflow(workflow, models, _write_inputs(tmp_path / "input"), tmp_path, workdir)
    assert result["status"] == "success", json.dumps(result.get("execution_error") or result.get("node_errors"))[:4000]
    assert not result["custom_node_import_failed"]
    alphas = [f for f in result["files"] if "alpha" in Path(f["path"]).name]
    applies = [n for n in workflow.values() if n["class_type"] == "ICM_ApplyInContextMatte"]
    assert applies and alphas
    if name in EXPECTED_ALPHAS:
        assert len(alphas) == EXPECTED_ALPHAS[name]
    if name in EXPECTED_VIDEOS:
        videos = [f for f in result["files"] if f["path"].endswith(".mp4") and f["path"].startswith("output")]
        assert len(videos) == EXPECTED_VIDEOS[name] == sum(n["class_type"] == "SaveVideo" for n in workflow.values())
        assert any("alpha" in Path(f["path"]).name for f in videos), videos
        for video in videos:  # every frame matted, at the input's size
            info = _video_info(workdir / video["path"])
            assert info == {"frames": VIDEO_FRAMES, "width": VIDEO_SIZE[0], "height": VIDEO_SIZE[1]}, (video, info)
    if any(n["class_type"] == "ICM_SaveReferenceContext" for n in workflow.values()):
        assert [f for f in result["files"] if f["path"].startswith("output/icm_contexts/")
                and f["path"].endswith(".safetensors")], result["files"]


def test_ui_workflows_validate_against_the_live_catalogue(models, tmp_path, pack_module):
    catalogue = tmp_path / "object_info.json"
    subprocess.run(
        [sys.executable, str(_toolkit() / "run_workflow.py"), "--custom-node", str(REPO), "--models-dir", str(models),
         "--dump-object-info", str(catalogue)],
        env=_toolkit_env(models), check=True, capture_output=True,
    )
    info = json.loads(catalogue.read_text())
    for spec in pack_module("nodes.spec").NODE_SPECS:
        entry = info[spec.node_id]
        assert entry["display_name"] == spec.display_name
        assert entry["input_order"]["required"] == [port.name for port in spec.inputs if not port.optional]
        assert entry["input_order"].get("optional", []) == [port.name for port in spec.inputs if port.optional]
        assert entry["output_name"] == [port.name for port in spec.outputs]
    ui_files = sorted(str(p) for p in (REPO / "workflows").glob("*.json"))
    assert ui_files
    check = subprocess.run(
        [sys.executable, str(_toolkit() / "validate_ui_workflow.py"), "--object-info", str(catalogue), *ui_files],
        capture_output=True, text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_non_sd2_model_is_refused_with_a_clear_message(models, tmp_path):
    workflow = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TEST_CHECKPOINT}},
        "2": {"class_type": "UNETLoader", "inputs": {"unet_name": SD1_UNET, "weight_dtype": "default"}},
        "3": {"class_type": "ICM_LoadIconMatting", "inputs": {
            "model": ["2", 0], "vae": ["1", 2], "clip": ["1", 1], "decoder_name": TEST_DECODER,
            "timestep": 200, "ensemble_size": 2, "precision": "fp32"}},
        "4": {"class_type": "LoadImage", "inputs": {"image": "icm_reference.png"}},
        "5": {"class_type": "ICM_EncodeReferenceContext", "inputs": {
            "icm_model": ["3", 0], "reference": ["4", 0], "mask": ["4", 1], "invert_mask": False, "seed": 0,
            "min_coverage": 1.0, "fit": "stretch"}},
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["5", 1]}},
    }
    result = _run_workflow(workflow, models, _write_inputs(tmp_path / "input"), tmp_path)
    assert result["status"] == "error"
    message = " ".join(error.get("exception_message", "") for error in result["execution_error"])
    assert "needs an SD 2.x MODEL" in message and "SD 1.x" in message and "context_dim 768" in message, message


def test_all_outputs_with_a_background_image(models, tmp_path):
    workflow = _matting_nodes(["3", 1], {
        "11": {"class_type": "SaveImage", "inputs": {"images": ["8", 3], "filename_prefix": "composite"}},
        "12": {"class_type": "SaveImage", "inputs": {"images": ["8", 2], "filename_prefix": "foreground"}},
        "13": {"class_type": "SaveImage", "inputs": {"images": ["8", 1], "filename_prefix": "rgba"}},
    })
    workflow["8"]["inputs"]["background"] = ["6", 0]
    result = _run_workflow(workflow, models, _write_inputs(tmp_path / "input"), tmp_path)
    assert result["status"] == "success", json.dumps(result.get("execution_error"))[:4000]
    for prefix in ("composite", "foreground", "rgba", "alpha"):
        assert len([f for f in result["files"] if Path(f["path"]).name.startswith(prefix)]) == 2, prefix


def test_points_on_a_reference_matte_a_batch(models, tmp_path):
    points = json.dumps([{"x": 120, "y": 100}, {"x": 150, "y": 90}])
    workflow = _matting_nodes(["11", 0], {
        "11": {"class_type": "ICM_ExpandPointPrompt", "inputs": {
            "icm_model": ["2", 0], "reference": ["3", 0], "positive_points": points,
            "negative_points": json.dumps([{"x": 10, "y": 10}]), "top_m": 16, "relative_threshold": 0.0, "seed": 0,
            "fit": "stretch"}},
        "12": {"class_type": "SaveImage", "inputs": {"images": ["11", 1], "filename_prefix": "expand_preview"}},
    })
    result = _run_workflow(workflow, models, _write_inputs(tmp_path / "input"), tmp_path)
    assert result["status"] == "success", json.dumps(result.get("execution_error"))[:4000]
    assert len([f for f in result["files"] if "alpha" in f["path"]]) == 2
    assert len([f for f in result["files"] if "expand_preview" in f["path"]]) == 1


def test_saved_context_is_reused_by_a_later_run(models, tmp_path):
    inputs = _write_inputs(tmp_path / "input")
    workdir = tmp_path / "comfy_base"
    save = _matting_nodes(["3", 1], {
        "11": {"class_type": "ICM_SaveReferenceContext", "inputs": {"context": ["4", 0], "filename_prefix": "toy"}},
    })
    first = _run_workflow(save, models, inputs, tmp_path, workdir)
    assert first["status"] == "success", json.dumps(first.get("execution_error"))[:4000]
    saved = sorted((workdir / "output" / "icm_contexts").glob("toy_*.safetensors"))
    assert len(saved) == 1
    reuse = _matting_nodes(["3", 1], {
        "11": {"class_type": "ICM_LoadReferenceContext", "inputs": {"context_name": saved[0].name}},
        "12": {"class_type": "ICM_CombineReferenceContexts", "inputs": {"context_1": ["11", 0], "context_2": ["4", 0]}},
    })
    reuse["8"]["inputs"]["context"] = ["12", 0]
    second = _run_workflow(reuse, models, inputs, tmp_path, workdir)
    assert second["status"] == "success", json.dumps(second.get("execution_error"))[:4000]


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_workflow_saved_with_an_old_decoder_precision_still_runs(models, tmp_path, precision):
    """Older versions offered fp16/bf16 decoder precision; such workflows still validate and run (in fp32)."""
    workflow = _matting_nodes(["3", 1])
    workflow["2"]["inputs"]["precision"] = precision
    result = _run_workflow(workflow, models, _write_inputs(tmp_path / "input"), tmp_path)
    assert result["status"] == "success", json.dumps(result.get("execution_error") or result)[:4000]
    assert len([f for f in result["files"] if "alpha" in f["path"]]) == 2
