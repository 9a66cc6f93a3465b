"""The pack inside a real, headless ComfyUI (CPU), one server for the session (see ``tests/comfyui``).

Outputs are compared by content: every example workflow is re-evaluated with the core Python API on the diffusers
backend (same weights, inputs and seeds) and ComfyUI's alphas must match. Skipped without ``COMFYUI_PATH``; a failure
in CI (see ``comfy_fixtures.require_comfyui``).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import torch

from comfy_fixtures import (
    COMFYUI_PATH,
    REPO,
    SD1_UNET,
    TEST_CHECKPOINT,
    TEST_DECODER,
    comfy_python,
    require_comfyui,
)
from comfy_replay import instrument, read_probes, replay

pytestmark = [pytest.mark.comfyui]

# Max abs alpha difference between the ComfyUI backend and the diffusers backend on the same weights and inputs.
# Measured: features agree to 1.5e-5 (values up to 18), attention maps to 2e-8; alphas to ~1e-5 (see the README).
ALPHA_TOLERANCE = 1e-4
# The random test decoder must give alphas with some contrast, or the comparison would prove nothing.
MIN_ALPHA_SPREAD = 0.05


@pytest.fixture(autouse=True)
def _needs_comfyui():
    require_comfyui()


def for_test_models(workflow: dict) -> dict:
    """Swap the real model names and sizes of an example workflow for the small CPU fixtures."""
    workflow = json.loads(json.dumps(workflow))
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
    return workflow


def example(name: str) -> dict:
    return for_test_models(json.loads((REPO / "workflows" / "api" / name).read_text()))


def run_and_replay(comfy, core_engines, pack_module, workflow: dict, context_dirs: list[Path] | None = None):
    """Run ``workflow`` with probes in ComfyUI, replay our nodes with the core API; return (run, got, expected)."""
    graph, probes = instrument(workflow, pack_module("nodes.spec"))
    run = comfy.run(graph)
    assert run.status == "success", json.dumps(run.error)[:4000]
    recorded = read_probes(comfy.base_dir / "output" / "icm_test_tensors", probes)
    folders = context_dirs or [comfy.base_dir / "output" / "icm_contexts", comfy.base_dir / "models" / "icm_contexts"]

    def find_context(name: str) -> Path:
        return next(folder / name for folder in folders if (folder / name).is_file())

    expected = replay(workflow, recorded, core_engines, find_context)
    got = {name: recorded[name] for name in expected}
    return run, got, expected


def assert_alphas_match(got: dict, expected: dict, workflow: dict) -> float:
    applies = [k for k, v in workflow.items() if v["class_type"] == "ICM_ApplyInContextMatte"]
    assert applies
    worst = 0.0
    for node in applies:
        ours, theirs = got[f"out_{node}_0"], expected[f"out_{node}_0"]
        assert ours.shape == theirs.shape, (node, ours.shape, theirs.shape)
        assert torch.isfinite(ours).all()
        assert float(ours.max() - ours.min()) > MIN_ALPHA_SPREAD, "flat alphas: the comparison would prove nothing"
        worst = max(worst, float((ours - theirs).abs().max()))
    assert worst < ALPHA_TOLERANCE, worst
    return worst


def test_backends_agree_on_the_same_weights(comfy_models, tmp_path):
    out = tmp_path / "agreement.json"
    subprocess.run(
        [comfy_python(), str(REPO / "tests" / "comfyui" / "agreement_probe.py"), str(Path(COMFYUI_PATH).resolve()),
         str(REPO), str(comfy_models / "checkpoints" / TEST_CHECKPOINT), str(out)],
        check=True, capture_output=True,
    )
    result = json.loads(out.read_text())
    assert result["feature_channels"] == [320, 320]
    assert result["fingerprints"][0] == result["fingerprints"][1], result["fingerprints"]
    assert result["posterior_mean"] < 1e-4 and result["posterior_std"] < 1e-4
    assert result["alpha_bar"] < 1e-5
    for name in ("low", "high", "reference_high"):
        assert result[name] < 1e-4, (name, result)
    for name in ("attention_low", "attention_high"):
        assert result[name] < 1e-5, (name, result)


EXAMPLES = sorted(p.name for p in (REPO / "workflows" / "api").glob("*_api.json"))


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_workflow_alphas_equal_the_core_api(name, comfy, core_engines, pack_module):
    workflow = example(name)
    run, got, expected = run_and_replay(comfy, core_engines, pack_module, workflow)
    worst = assert_alphas_match(got, expected, workflow)
    for probe, tensor in expected.items():  # every other output of ours too (masks of Expand, RGBA, composites)
        assert got[probe].shape == tensor.shape, probe
        assert float((got[probe] - tensor).abs().max()) < 10 * ALPHA_TOLERANCE, probe
    print(f"{name}: max |alpha(ComfyUI) - alpha(core)| = {worst:.2e}")
    if any(n["class_type"] == "SaveVideo" for n in workflow.values()):
        videos = [f for node in run.outputs.values() for f in node.get("images", []) if f["filename"].endswith(".mp4")]
        assert len(videos) == sum(n["class_type"] == "SaveVideo" for n in workflow.values()), run.outputs


def test_context_saved_by_the_core_api_loads_in_comfyui(comfy, comfy_models, core_engines, pack_module):
    from icm_core.context_io import save_context
    from icm_core.image_io import read_image, read_mask

    load = example("matte_loaded_images_api.json")["3"]["inputs"]
    engine = core_engines(load)
    reference = read_image(REPO / "icm_core" / "assets" / "samples" / "reference.png")
    mask = read_mask(REPO / "icm_core" / "assets" / "samples" / "reference_mask.png")
    save_context(engine.encode_reference(reference, mask, seed=3), comfy_models / "icm_contexts" / "from_core.safetensors")
    workflow = example("matte_loaded_images_api.json")
    workflow["20"] = {"class_type": "ICM_LoadReferenceContext", "inputs": {"context_name": "from_core.safetensors"}}
    workflow["12"]["inputs"]["context"] = ["20", 0]
    for unused in ("4", "5", "6"):  # the reference is not needed any more
        del workflow[unused]
    _, got, expected = run_and_replay(comfy, core_engines, pack_module, workflow)
    assert_alphas_match(got, expected, workflow)


def test_context_saved_in_comfyui_loads_in_the_core_api(comfy, core_engines, pack_module):
    from icm_core.context_io import load_context
    from icm_core.image_io import read_image
    from icm_core.pipeline import RefinementConfig

    workflow = example("matte_loaded_images_api.json")
    workflow["20"] = {"class_type": "ICM_SaveReferenceContext", "inputs": {"context": ["5", 0],
                                                                           "filename_prefix": "roundtrip"}}
    run, got, expected = run_and_replay(comfy, core_engines, pack_module, workflow)
    assert_alphas_match(got, expected, workflow)
    saved = run.outputs["20"]["icm_saved_context"]
    assert len(saved) == 1 and saved[0].startswith("roundtrip_") and saved[0].endswith(".safetensors"), saved
    context = load_context(comfy.base_dir / "output" / "icm_contexts" / saved[0])
    engine = core_engines(workflow["3"]["inputs"])
    apply = workflow["12"]["inputs"]
    targets = [read_image(comfy.base_dir / "input" / f"icm_target_{i}.png") for i in (1, 2)]
    refinement = RefinementConfig(radius=apply["refine_radius"] or None, eps=apply["refine_eps"])
    assert apply["refine_edges"]
    alphas = engine.matte(context, targets, seed=apply["seed"], batch_size=1, fit=apply["fit"], refinement=refinement)
    # The same two targets matted in ComfyUI (Batch Images keeps the first target's size: compare target 1 only).
    assert float((alphas[0] - got["out_12_0"][0]).abs().max()) < ALPHA_TOLERANCE
    # ... and the file is offered by Load Reference Context straight away.
    options = comfy.object_info("ICM_LoadReferenceContext")["input"]["required"]["context_name"]
    assert saved[0] in (options[1]["options"] if isinstance(options[0], str) else options[0]), options


def test_requeue_with_new_targets_does_not_encode_again(comfy):
    workflow = example("matte_loaded_images_api.json")
    workflow["12"]["inputs"]["seed"] = 11  # a fresh cache entry for Apply
    first = comfy.run(workflow)
    assert first.status == "success", json.dumps(first.error)[:4000]
    workflow["9"]["inputs"]["image"] = "icm_reference_2.png"  # only a target changes
    second = comfy.run(workflow)
    assert second.status == "success", json.dumps(second.error)[:4000]
    assert {"2", "3", "4", "5"} <= second.cached_nodes, second.cached_nodes
    assert "12" not in second.cached_nodes
    executed = {e["data"]["node"] for e in second.events if e["type"] == "executing" and e["data"].get("node")}
    assert "5" not in executed and "12" in executed, executed


def test_interrupt_during_apply_stops_within_one_target(comfy):
    workflow = example("matte_loaded_images_api.json")
    workflow["30"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["11", 0], "amount": 4}}
    workflow["12"]["inputs"].update(images=["30", 0], batch_size=1, seed=21)  # 12 targets, one per UNet pass
    prompt_id = comfy.queue(workflow)

    def apply_progress(event):
        data = event.get("data", {})
        return event["type"] == "progress" and data.get("prompt_id") == prompt_id and data.get("node") == "12" \
            and data.get("value", 0) >= 1

    comfy.wait_for_event(apply_progress)
    interrupted_at = time.monotonic()
    comfy.interrupt()
    run = comfy.wait(prompt_id)
    assert run.status == "interrupted", run.messages
    progress = [(t, e["data"]["value"]) for t, e in comfy.prompt_events(prompt_id)
                if e["type"] == "progress" and e["data"].get("node") == "12"]
    before = max(v for t, v in progress if t <= interrupted_at)
    after = max(v for _, v in progress)
    assert after <= before + 1, f"{after - before} targets finished after the interrupt ({progress})"
    assert after < 12
    again = comfy.run(workflow)
    assert again.status == "success", json.dumps(again.error)[:4000]


def test_progress_moves_per_target(comfy):
    workflow = example("matte_loaded_images_api.json")
    workflow["12"]["inputs"].update(batch_size=3, seed=31)  # one micro-batch of three targets
    run = comfy.run(workflow)
    assert run.status == "success", json.dumps(run.error)[:4000]
    values = [e["data"]["value"] for e in run.events if e["type"] == "progress" and e["data"].get("node") == "12"]
    assert values == [1, 2, 3], values


def test_no_example_uses_a_deprecated_core_node(comfy):
    info = comfy.object_info()
    deprecated = {name for name, node in info.items() if node.get("deprecated")}
    assert "ImageBatch" in deprecated  # the catalogue carries the flags this test relies on
    for path in sorted((REPO / "workflows").glob("*.json")) + sorted((REPO / "workflows" / "api").glob("*.json")):
        data = json.loads(path.read_text())
        types = {n["type"] for n in data["nodes"]} if "nodes" in data else {n["class_type"] for n in data.values()}
        assert not types & deprecated, (path.name, types & deprecated)
        assert types <= set(info) | {"Note", "MarkdownNote"}, (path.name, types - set(info))


def test_node_specs_match_the_live_catalogue(comfy, pack_module):
    info = comfy.object_info()
    for spec in pack_module("nodes.spec").NODE_SPECS:
        entry = info[spec.node_id]
        assert entry["display_name"] == spec.display_name
        assert entry["input_order"]["required"] == [port.name for port in spec.inputs if not port.optional]
        assert entry["input_order"].get("optional", []) == [port.name for port in spec.inputs if port.optional]
        assert entry["output_name"] == [port.name for port in spec.outputs]
        assert not entry.get("deprecated")


def test_ui_workflows_validate_against_the_live_catalogue(comfy, tmp_path):
    catalogue = tmp_path / "object_info.json"
    catalogue.write_text(json.dumps(comfy.object_info()))
    ui_files = sorted(str(p) for p in (REPO / "workflows").glob("*.json"))
    assert len(ui_files) == len(EXAMPLES)
    from comfy_fixtures import toolkit

    check = subprocess.run(
        ["python3", str(toolkit() / "validate_ui_workflow.py"), "--object-info", str(catalogue), *ui_files],
        capture_output=True, text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_non_sd2_model_is_refused_with_a_clear_message(comfy):
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
    run = comfy.run(workflow)
    assert run.status == "error"
    message = run.error["exception_message"]
    assert "needs an SD 2.x MODEL" in message and "SD 1.x" in message and "context_dim 768" in message, message


def test_bad_background_colour_fails_before_any_model_work(comfy):
    workflow = example("matte_loaded_images_api.json")
    workflow["12"]["inputs"].update(background_color="not-a-colour", seed=41)
    run = comfy.run(workflow)
    assert run.status == "error"
    assert run.error["node_id"] == "12" and "not-a-colour" in run.error["exception_message"], run.error
    assert run.error["exception_type"] in ("ValueError", "builtins.ValueError"), run.error


def test_all_outputs_with_a_background_image(comfy, core_engines, pack_module):
    workflow = example("matte_loaded_images_api.json")
    workflow["12"]["inputs"]["background"] = ["8", 0]
    workflow["12"]["inputs"]["seed"] = 51
    _, got, expected = run_and_replay(comfy, core_engines, pack_module, workflow)
    assert_alphas_match(got, expected, workflow)
    alpha, composite = got["out_12_0"], got["out_12_3"]
    assert composite.shape == (*alpha.shape, 3)
    for slot in (1, 2, 3):
        assert float((got[f"out_12_{slot}"] - expected[f"out_12_{slot}"]).abs().max()) < 10 * ALPHA_TOLERANCE, slot


def test_errors_name_the_problem_not_the_file_system(comfy, comfy_models):
    broken = comfy_models / "icm" / "broken_decoder.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    workflow = example("matte_loaded_images_api.json")
    workflow["3"]["inputs"]["decoder_name"] = broken.name
    run = comfy.run(workflow)
    assert run.status == "error"
    assert run.error["node_id"] == "3"
    kind, message = run.error["exception_type"], run.error["exception_message"]
    assert "/" not in kind and "custom_nodes" not in kind, kind
    assert kind.startswith(("icm_core.", "nodes.")) or "." not in kind, kind
    assert broken.name in message, message


def test_workflow_saved_with_an_old_decoder_precision_still_runs(comfy, core_engines, pack_module):
    """Older versions offered fp16/bf16 decoder precision; such workflows still validate and run, in fp32."""
    workflow = example("matte_loaded_images_api.json")
    workflow["3"]["inputs"]["precision"] = "bf16"
    _, got, expected = run_and_replay(comfy, core_engines, pack_module, workflow)
    assert_alphas_match(got, expected, workflow)  # the core engine decodes in fp32
