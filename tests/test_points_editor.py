"""The points editor of Expand Point Prompt: clicks in ComfyUI's real frontend become image-pixel JSON, and a run's
expanded cells come back to the editor.

The browser tests drive headless system Chromium with real mouse events (see ``tests/comfyui/comfy_frontend.py``)
against the session's ComfyUI server; the geometry they click at is computed here, independently of the editor:
the reference is drawn "contain"-fitted and centred in the editor's canvas element. ``ICM_UPDATE_DOCS=1`` rewrites
``docs/points_editor.png`` from the run test.
"""

from __future__ import annotations

import io
import json
import os
import time

import pytest
import torch

from comfy_fixtures import REPO, TEST_CHECKPOINT, TEST_DECODER
from comfy_frontend import Frontend

WORKFLOW = REPO / "workflows" / "points_reference_matte.json"
EXPAND_NODE = 5  # Expand Point Prompt in the workflow
REFERENCE_SIZE = (320, 320)  # workflows/inputs/icm_reference.png, W x H
DOCS_IMAGE = REPO / "docs" / "points_editor.png"
EDITOR = "window.app.graph.getNodeById(%d).icmPointsEditor" % EXPAND_NODE


# ---------------------------------------------------------------------------------------------- without a browser
def test_cell_spans_cover_each_axis_once(pack_module):
    editor = pack_module("nodes.points_editor")
    fit = pack_module("icm_core.fit")
    stretch = editor.cell_spans(fit.placement(320, 200, 256, "stretch").cell_rows(16), 16)
    assert stretch[0] == [0, 20] and stretch[15] == [300, 320]
    assert all(a[1] == b[0] for a, b in zip(stretch, stretch[1:]))  # contiguous, no gaps, in order
    padded = editor.cell_spans(fit.placement(320, 160, 256, "pad").cell_cols(16), 16)
    assert padded[:4] == [None] * 4 and padded[-4:] == [None] * 4  # letterbox cells hold no image pixel
    assert padded[4][0] == 0 and padded[11][1] == 160
    cropped = editor.cell_spans(fit.placement(160, 320, 256, "crop").cell_cols(16), 16)
    assert cropped[0][0] == 80 and cropped[15][1] == 240  # only the centre crop's columns have cells


@pytest.mark.parametrize("fit_name", ["stretch", "pad", "crop"])
def test_expansion_ui_boxes_are_exactly_the_mask(pack_module, fit_name):
    editor = pack_module("nodes.points_editor")
    fit = pack_module("icm_core.fit")
    similarity = pack_module("icm_core.modeling.similarity")
    prompts = pack_module("icm_core.prompts")
    height, width, grid, side = 150, 230, 16, 256
    token_mask = torch.rand(grid, grid, generator=torch.Generator().manual_seed(3)) > 0.6
    prompt_cells = torch.zeros(grid, grid, dtype=torch.bool)
    prompt_cells[7, 8] = True
    where = fit.placement(height, width, side, fit_name)
    expected = similarity.token_mask_to_image(token_mask, (height, width), where.cell_rows(grid), where.cell_cols(grid))
    payload = editor.expansion_ui(token_mask, prompt_cells, (height, width), side, fit_name,
                                  (prompts.Point(3.0, 4.5),), ())
    json.dumps(payload)  # JSON-ready for the UI output
    drawn = torch.zeros(height, width)
    for row, col in payload["cells"]:
        ys, xs = payload["rows"][row], payload["cols"][col]
        if ys and xs:
            drawn[ys[0]:ys[1], xs[0]:xs[1]] = 1.0
    assert torch.equal(drawn, expected)
    assert payload["prompt_cells"] == [[7, 8]]
    assert (payload["width"], payload["height"], payload["grid"]) == (width, height, grid)
    assert payload["positive"] == [{"x": 3.0, "y": 4.5}] and payload["negative"] == []


# ---------------------------------------------------------------------------------------------- in the browser


def _workflow(positive: str = "[]", negative: str = "[]") -> dict:
    """The shipped points workflow on the test models, with the given points."""
    workflow = json.loads(WORKFLOW.read_text())
    for node in workflow["nodes"]:
        if node["type"] == "CheckpointLoaderSimple":
            node["widgets_values"][0] = TEST_CHECKPOINT
        elif node["type"] == "ICM_LoadIconMatting":
            node["widgets_values"][0:3] = [TEST_DECODER, 200, 2]
        elif node["id"] == EXPAND_NODE:
            node["widgets_values"][0:2] = [positive, negative]
    return workflow


def _open(frontend: Frontend, workflow: dict, scale: float = 1.0) -> None:
    """Load ``workflow``, put the editor's node in view at ``scale`` and wait until the reference is drawn."""
    frontend.load_workflow(workflow, "points_editor")
    frontend.evaluate("""([id, scale]) => {
        const canvas = window.app.canvas, node = window.app.graph.getNodeById(id);
        canvas.ds.scale = scale;
        canvas.ds.offset = [-node.pos[0] + 60 / scale, -node.pos[1] + 80 / scale];
        canvas.setDirty(true, true);
    }""", [EXPAND_NODE, scale])
    frontend.page.wait_for_function(f"""() => {{
        const e = {EDITOR};
        return e && e.image && e.image.complete && e.canvas.getBoundingClientRect().width > 50
            && e.drawnKey === e.frameKey();
    }}""", timeout=60_000)
    _settle(frontend)
    _scroll_editor_to_top(frontend)


def _scroll_editor_to_top(frontend: Frontend) -> None:
    """Pan the graph so that the editor's canvas starts 150 px below the top of the page (below the menu bars)."""
    frontend.evaluate(f"""() => {{
        const ds = window.app.canvas.ds, top = {EDITOR}.canvas.getBoundingClientRect().top;
        ds.offset = [ds.offset[0], ds.offset[1] - (top - 150) / ds.scale];
        window.app.canvas.setDirty(true, true);
    }}""")
    _settle(frontend)


def _settle(frontend: Frontend) -> None:
    """Wait until the graph canvas has drawn a few frames (DOM widgets follow their node on the next frame) and the
    editor has drawn what it shows."""
    frontend.evaluate("""async () => {
        for (let i = 0; i < 3; i++) {
            window.app.canvas.setDirty(true, true);
            await new Promise((resolve) => requestAnimationFrame(() => resolve()));
        }
    }""")
    frontend.page.wait_for_function(f"() => {EDITOR} && {EDITOR}.drawnKey === {EDITOR}.frameKey()")


def _geometry(frontend: Frontend) -> dict:
    return frontend.evaluate(f"""() => {{
        const c = {EDITOR}.canvas, r = c.getBoundingClientRect();
        return {{left: r.left, top: r.top, width: r.width, height: r.height,
                 layoutWidth: c.clientWidth, layoutHeight: c.clientHeight}};
    }}""")


def _screen(geometry: dict, x: float, y: float) -> tuple[float, float]:
    """Screen position of the centre of reference pixel (x, y): contain fit, centred, in the canvas element."""
    width, height = REFERENCE_SIZE
    lw, lh = geometry["layoutWidth"], geometry["layoutHeight"]
    s = min(lw / width, lh / height)
    ox, oy = (lw - width * s) / 2, (lh - height * s) / 2
    zoom_x, zoom_y = geometry["width"] / lw, geometry["height"] / lh
    return geometry["left"] + (ox + (x + 0.5) * s) * zoom_x, geometry["top"] + (oy + (y + 0.5) * s) * zoom_y


def _points(frontend: Frontend) -> dict[str, list[dict]]:
    values = frontend.evaluate("""(id) => Object.fromEntries(window.app.graph.getNodeById(id).widgets
        .filter((w) => w.name.endsWith("_points")).map((w) => [w.name, w.value]))""", EXPAND_NODE)
    return {name.split("_")[0]: json.loads(text) for name, text in values.items()}


def _near(points: list[dict], expected: list[tuple[int, int]], tolerance: float = 1.0) -> bool:
    return len(points) == len(expected) and all(
        abs(p["x"] - x) <= tolerance and abs(p["y"] - y) <= tolerance for p, (x, y) in zip(points, expected)
    )


def _click(frontend: Frontend, geometry: dict, x: int, y: int, button: str = "left", modifier: str | None = None):
    sx, sy = _screen(geometry, x, y)
    width, height = frontend.viewport
    assert 0 <= sx < width and 0 <= sy < height, f"pixel ({x}, {y}) is off the page at ({sx:.0f}, {sy:.0f})"
    if modifier:
        frontend.page.keyboard.down(modifier)
    frontend.page.mouse.click(sx, sy, button=button)
    if modifier:
        frontend.page.keyboard.up(modifier)


def _pixel(png: bytes, x: float, y: float) -> tuple[int, int, int]:
    from PIL import Image

    return Image.open(io.BytesIO(png)).convert("RGB").getpixel((round(x), round(y)))


def _is_green(rgb) -> bool:
    return rgb[1] > 150 and rgb[0] < 90 and rgb[2] < 120


def _is_red(rgb) -> bool:
    return rgb[0] > 180 and rgb[1] < 90 and rgb[2] < 90


def test_clicks_drag_and_removal_edit_the_point_widgets(frontend):
    _open(frontend, _workflow())
    geometry = _geometry(frontend)
    _click(frontend, geometry, 100, 120)
    assert _near(_points(frontend)["positive"], [(100, 120)]), _points(frontend)
    _click(frontend, geometry, 250, 60, button="right")
    _click(frontend, geometry, 40, 280, modifier="Shift")
    points = _points(frontend)
    assert _near(points["positive"], [(100, 120)]) and _near(points["negative"], [(250, 60), (40, 280)]), points

    start, end = _screen(geometry, 100, 120), _screen(geometry, 170, 205)
    frontend.page.mouse.move(*start)
    frontend.page.mouse.down()
    frontend.page.mouse.move(*end, steps=6)
    frontend.page.mouse.up()
    points = _points(frontend)
    assert _near(points["positive"], [(170, 205)]) and len(points["negative"]) == 2, points

    _click(frontend, geometry, 40, 280, modifier="Control")
    points = _points(frontend)
    assert _near(points["positive"], [(170, 205)]) and _near(points["negative"], [(250, 60)]), points
    assert frontend.evaluate("() => !document.querySelector('.litecontextmenu')")  # right click: no graph menu

    frontend.evaluate("() => window.app.extensionManager.workflow.activeWorkflow.changeTracker.undo()")
    _settle(frontend)
    points = _points(frontend)  # undo brings the removed point back, on the node the undo rebuilt
    assert _near(points["negative"], [(250, 60), (40, 280)]) and _near(points["positive"], [(170, 205)]), points

    frontend.page.locator(".icm-points-clear").click()
    assert _points(frontend) == {"positive": [], "negative": []}


def test_points_stay_in_image_pixels_under_zoom_and_resize(frontend):
    _open(frontend, _workflow(), scale=1.7)
    frontend.evaluate("""(id) => { const node = window.app.graph.getNodeById(id);
        node.setSize([node.size[0] + 140, node.size[1] + 160]); window.app.canvas.setDirty(true, true); }""",
                      EXPAND_NODE)
    _settle(frontend)
    _scroll_editor_to_top(frontend)
    zoomed = _geometry(frontend)
    assert zoomed["width"] / zoomed["layoutWidth"] == pytest.approx(1.7, rel=0.02)
    _click(frontend, zoomed, 200, 210)
    _click(frontend, zoomed, 30, 300, button="right")
    points = _points(frontend)
    assert _near(points["positive"], [(200, 210)]) and _near(points["negative"], [(30, 300)]), points

    frontend.evaluate("() => { window.app.canvas.ds.scale = 0.8; window.app.canvas.setDirty(true, true); }")
    _settle(frontend)
    small = _geometry(frontend)
    assert small["width"] < zoomed["width"] * 0.6
    _click(frontend, small, 60, 70)
    points = _points(frontend)
    assert _near(points["positive"], [(200, 210), (60, 70)], tolerance=2.0), points  # a screen pixel is 1.6 image px


def test_saved_points_are_drawn_where_they_are(frontend):
    positive, negative = [(150, 160), (80, 250)], [(260, 40)]
    _open(frontend, _workflow(json.dumps([{"x": x, "y": y} for x, y in positive]),
                              json.dumps([{"x": x, "y": y} for x, y in negative])))
    geometry = _geometry(frontend)
    drawn = frontend.evaluate(f"() => {EDITOR}.drawnPositions()")
    png = frontend.page.screenshot()
    for kind, expected, colour in (("positive", positive, _is_green), ("negative", negative, _is_red)):
        for at, (x, y) in zip(drawn[kind], expected):
            sx, sy = _screen(geometry, x, y)
            assert abs(at["x"] - sx) < 1 and abs(at["y"] - sy) < 1, (kind, at, (sx, sy))
            assert colour(_pixel(png, sx, sy)), (kind, (x, y), _pixel(png, sx, sy))
    sx, sy = _screen(geometry, 20, 20)  # far from every point: the reference itself, not a marker
    assert not _is_green(_pixel(png, sx, sy)) and not _is_red(_pixel(png, sx, sy))


def test_a_run_sends_the_expanded_cells_back_to_the_editor(frontend, comfy):
    from safetensors.torch import load_file

    _open(frontend, _workflow())
    geometry = _geometry(frontend)
    positive, negative = [(150, 160), (60, 250)], [(290, 30)]
    for x, y in positive:
        _click(frontend, geometry, x, y)
    _click(frontend, geometry, *negative[0], button="right")
    clicked = _points(frontend)
    assert _near(clicked["positive"], positive) and _near(clicked["negative"], negative), clicked

    before = set(comfy.get("/history"))
    frontend.evaluate("""async (id) => {
        const graph = window.app.graph, expand = graph.getNodeById(id);
        for (const other of [7, 8, 14, 15, 16, 17]) graph.getNodeById(other).mode = 2;  // only the expansion runs
        const probe = LiteGraph.createNode("ICMTest_SaveTensor");
        probe.pos = [expand.pos[0], expand.pos[1] + expand.size[1] + 60];
        graph.add(probe);
        probe.widgets.find((w) => w.name === "name").value = "points_editor_mask";
        expand.connect(0, probe, probe.inputs.findIndex((i) => i.name === "mask"));
        await window.app.queuePrompt(0, 1);
    }""", EXPAND_NODE)
    cells = _wait_for_cells(frontend, comfy, before)
    history = json.dumps(comfy.get("/history"))[-3000:]
    assert cells, f"the run sent no cells to the editor: {history}\n{comfy.log_tail()}"
    grid = cells["grid"]
    assert grid == 16 and (cells["width"], cells["height"]) == REFERENCE_SIZE  # 256 px test decoder: 16 x 16 cells
    cell_of = lambda x, y: [y * grid // REFERENCE_SIZE[1], x * grid // REFERENCE_SIZE[0]]  # stretch fit
    chosen = cells["cells"]
    assert all(cell_of(x, y) in chosen for x, y in positive), (chosen, positive)
    assert all(cell_of(x, y) not in chosen for x, y in negative), (chosen, negative)
    assert sorted(cells["prompt_cells"]) == sorted(cell_of(x, y) for x, y in positive)
    assert cells["positive"] == clicked["positive"] and cells["negative"] == clicked["negative"]  # what ran

    mask = load_file(str(comfy.base_dir / "output" / "icm_test_tensors" / "points_editor_mask.safetensors"))["value"]
    assert mask.shape == (1, REFERENCE_SIZE[1], REFERENCE_SIZE[0])
    drawn = torch.zeros_like(mask[0])
    for row, col in chosen:
        (y0, y1), (x0, x1) = cells["rows"][row], cells["cols"][col]
        drawn[y0:y1, x0:x1] = 1.0
    assert torch.equal(mask[0], drawn)  # the editor draws exactly the mask the node output
    assert all(mask[0, y, x] == 1.0 for x, y in positive) and all(mask[0, y, x] == 0.0 for x, y in negative)

    _settle(frontend)
    png = frontend.page.screenshot()
    from PIL import Image

    reference = Image.open(REPO / "workflows" / "inputs" / "icm_reference.png").convert("RGB")
    tinted = [(row, col) for row, col in chosen if [row, col] not in cells["prompt_cells"]]
    row, col = tinted[0]
    x, y = (cells["cols"][col][0] + cells["cols"][col][1]) // 2, (cells["rows"][row][0] + cells["rows"][row][1]) // 2
    shown = _pixel(png, *_screen(geometry, x, y))
    original = reference.getpixel((x, y))
    assert shown[1] - original[1] > 20 or shown[1] > 200, (shown, original)  # the chosen cell is tinted green

    assert not [e for e in frontend.console_errors if "icm_points" in e or "points_editor" in e], frontend.console_errors
    if os.environ.get("ICM_UPDATE_DOCS") == "1":
        _save_docs_screenshot(frontend)


def _wait_for_cells(frontend: Frontend, comfy, before: set, timeout: float = 300.0) -> dict | None:
    """The cells the editor got from the prompt queued after ``before`` (the history's ids); None if it ended
    without sending any."""
    deadline, finished_at = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        cells = frontend.evaluate(f"() => {EDITOR}.cells")
        if cells:
            return cells
        runs = [entry for key, entry in comfy.get("/history").items() if key not in before]
        if finished_at is None and runs and all(entry.get("status", {}).get("completed") is not None
                                                for entry in runs):
            finished_at = time.monotonic()
        if finished_at is not None and time.monotonic() - finished_at > 10:
            return None  # the prompt ended; the UI message would have arrived by now
        time.sleep(0.25)
    return None


def _save_docs_screenshot(frontend: Frontend) -> None:
    """The reference, the editor after a run and the node's preview, for the README (test models: random cells)."""
    frontend.evaluate("""() => {
        const graph = window.app.graph, ds = window.app.canvas.ds;
        for (const node of [...graph.nodes]) if (node.type === "ICMTest_SaveTensor") graph.remove(node);
        ds.scale = 1.1;
        ds.offset = [-440 + 80 / ds.scale, -320 + 150 / ds.scale];
        window.app.canvas.deselectAll?.();
        window.app.canvas.setDirty(true, true);
    }""")
    _settle(frontend)
    box = frontend.evaluate("""() => {
        const canvas = window.app.canvas, rect = canvas.canvas.getBoundingClientRect();
        const [left, top] = canvas.ds.convertOffsetToCanvas([440, 320]);
        const [right, bottom] = canvas.ds.convertOffsetToCanvas([1640, 840]);
        return {x: rect.left + left, y: rect.top + top, width: right - left, height: bottom - top};
    }""")
    target = DOCS_IMAGE.with_suffix(".tmp.png")
    frontend.page.screenshot(path=str(target), clip=box)
    os.replace(target, DOCS_IMAGE)
