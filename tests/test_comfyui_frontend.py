"""The pack in ComfyUI's real web frontend (headless system Chromium + playwright), against the session's server.

Needs COMFYUI_PATH (see ``tests/comfyui/comfy_fixtures.py``), Chromium (``apt-get install chromium``) and playwright
(``pip install playwright``; no browser download). In CI a missing piece fails these tests instead of skipping them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from comfy_fixtures import REPO, TEST_CHECKPOINT, TEST_DECODER, require_browser, toolkit

pytestmark = [pytest.mark.comfyui]
SCREENSHOTS = os.environ.get("ICM_TEST_SCREENSHOTS")  # keep the browser check's screenshots and summary here




def test_every_ui_workflow_opens_cleanly(comfy, tmp_path):
    require_browser()
    out = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path / "browser_check"
    workflows = sorted(str(p) for p in (REPO / "workflows").glob("*.json"))
    check = subprocess.run(
        [sys.executable, str(toolkit() / "browser_check" / "check_ui_workflows.py"), "--url", comfy.url,
         "--out", str(out), *workflows],
        capture_output=True, text=True, timeout=600,
    )
    summary = json.loads((out / "summary.json").read_text())
    problems = {w["workflow"]: w["problems"] for w in summary["workflows"]}
    assert summary["ok"] and check.returncode == 0, json.dumps(problems, indent=1) + check.stderr[-2000:]
    assert len(summary["workflows"]) == len(workflows)
    assert all(not p for p in problems.values()), problems
    print(f"browser check: {len(workflows)} workflows, 0 problems, "
          f"{sum(len(w['warnings']) for w in summary['workflows'])} warnings, {summary['timings']}")


def test_fresh_nodes_start_with_a_fixed_seed(frontend, pack_module):
    with_seed = [s.node_id for s in pack_module("nodes.spec").NODE_SPECS if any(p.name == "seed" for p in s.inputs)]
    assert len(with_seed) == 3
    controls = frontend.evaluate("""(types) => types.map((type) => {
        const node = LiteGraph.createNode(type);
        window.app.graph.add(node);
        const control = node.widgets.find((w) => w.name === "control_after_generate");
        const value = control ? control.value : null;
        window.app.graph.remove(node);
        return [type, value];
    })""", with_seed)
    assert controls == [[node_id, "fixed"] for node_id in with_seed], controls
    core = frontend.evaluate("""() => {
        const node = LiteGraph.createNode("KSampler");
        const value = node.widgets.find((w) => w.name === "control_after_generate").value;
        return value;
    }""")
    assert core == "randomize"  # only our nodes change: core nodes keep ComfyUI's default


def test_a_saved_seed_control_is_kept_on_load(frontend):
    workflow = json.loads((REPO / "workflows" / "matte_loaded_images.json").read_text())
    encode = next(n for n in workflow["nodes"] if n["type"] == "ICM_EncodeReferenceContext")
    encode["widgets_values"][encode["widgets_values"].index("fixed")] = "increment"
    frontend.load_workflow(workflow, "seed_control")
    value = frontend.evaluate("""(id) => window.app.graph.getNodeById(id).widgets
        .find((w) => w.name === "control_after_generate").value""", encode["id"])
    assert value == "increment"


def test_point_inputs_are_labelled(frontend):
    widgets = frontend.evaluate("""() => {
        const node = LiteGraph.createNode("ICM_ExpandPointPrompt");
        return node.widgets.filter((w) => w.name.endsWith("_points")).map((w) => [w.name, w.type, w.label ?? w.name]);
    }""")
    # canvas text widgets draw their label beside the value (multiline text areas show no label)
    assert widgets == [["positive_points", "text", "positive_points"], ["negative_points", "text", "negative_points"]]


def test_saving_a_context_shows_the_file_and_offers_it_for_loading(frontend, comfy):
    result = frontend.evaluate("""async ([checkpoint, decoder]) => {
        const graph = window.app.graph;
        graph.clear();
        let column = 0;
        const add = (type, values) => {
            const node = LiteGraph.createNode(type);
            node.pos = [40 + 300 * column, 80 + 60 * (column++ % 2)];
            graph.add(node);
            for (const [name, value] of Object.entries(values || {})) node.widgets.find((w) => w.name === name).value = value;
            return node;
        };
        const ckpt = add("CheckpointLoaderSimple", {ckpt_name: checkpoint});
        const load = add("ICM_LoadIconMatting", {decoder_name: decoder, ensemble_size: 2});
        ckpt.connect(0, load, 0); ckpt.connect(2, load, 1); ckpt.connect(1, load, 2);
        const image = add("LoadImage", {image: "icm_reference.png"});
        const encode = add("ICM_EncodeReferenceContext", {seed: 61});
        load.connect(0, encode, 0); image.connect(0, encode, 1); image.connect(1, encode, 2);
        const save = add("ICM_SaveReferenceContext", {filename_prefix: "from_browser"});
        encode.connect(0, save, 0);
        const loader = add("ICM_LoadReferenceContext");
        await window.app.queuePrompt(0, 1);
        const shown = () => save.widgets.find((w) => w.name === "icm_saved_context")?.value;
        for (let i = 0; i < 1200 && !shown(); i++) await new Promise((r) => setTimeout(r, 250));
        const name = (shown() || "").replace(/^saved: /, "");
        for (let i = 0; i < 120 && !loader.widgets[0].options.values.includes(name); i++)
            await new Promise((r) => setTimeout(r, 250));
        return {shown: shown() ?? null, options: loader.widgets[0].options.values};
    }""", [TEST_CHECKPOINT, TEST_DECODER])
    assert result["shown"] and result["shown"].startswith("saved: from_browser_"), result
    name = result["shown"][len("saved: "):]
    assert name in result["options"], result
    assert (comfy.base_dir / "output" / "icm_contexts" / name).is_file()
    if SCREENSHOTS:
        frontend.evaluate("() => window.app.extensionManager.command.execute('Comfy.Canvas.FitView')")
        frontend.page.wait_for_timeout(500)
        frontend.screenshot(Path(SCREENSHOTS) / "save_reference_context.png")
