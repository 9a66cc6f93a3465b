"""The shipped workflows, without ComfyUI: each UI workflow (``workflows/X.json``) and its API twin
(``workflows/api/X_api.json``) describe the same graph, and our nodes in them match ``nodes/spec.py``.

The workflows are checked-in data (edited by hand, verified in a real ComfyUI and browser by ``tests/comfyui``);
this test keeps the two formats from drifting apart:

* the same nodes (ids and types) — Note nodes exist only in the UI format;
* the same links — UI ``links`` rows ``[id, from_node, from_slot, to_node, to_slot, type]`` against API inputs
  ``[from_node_id, from_slot]``, by input name (BatchImagesNode's autogrow inputs are named ``images.image0`` ...);
* the same widget values — in the UI's ``widgets_values`` order, where ComfyUI stores a ``control_after_generate``
  entry ("fixed", "randomize", ...) right after a seed widget, and upload buttons keep a value the API lacks;
* for our nodes: widget names and order as in the spec, values of the spec default's type, combo values offered.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
UI_ONLY_TYPES = frozenset({"Note", "MarkdownNote"})
CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize"})
SEED_WIDGETS = {"KSampler": ("seed",)}  # core nodes whose widget is followed by a control_after_generate entry
UPLOAD_WIDGETS = {"LoadImage": 1, "LoadVideo": 1}  # index of the upload button's UI-only value
SOCKET_FREE_KINDS = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
NAMES = sorted(path.stem for path in WORKFLOWS.glob("*.json"))


def _load(name: str) -> tuple[dict, dict]:
    ui = json.loads((WORKFLOWS / f"{name}.json").read_text())
    api = json.loads((WORKFLOWS / "api" / f"{name}_api.json").read_text())
    return ui, api


def _is_link(value) -> bool:  # noqa: ANN001 - any API input value
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def _node_spec(spec, node_type: str):  # noqa: ANN001, ANN202 - the nodes.spec module -> NodeSpec or None
    return next((node for node in spec.NODE_SPECS if node.node_id == node_type), None)


def twin_problems(ui: dict, api: dict, spec) -> list[str]:  # noqa: ANN001 - the nodes.spec module
    """Every disagreement between a UI workflow, its API twin and the spec (empty: they agree)."""
    problems: list[str] = []
    nodes = {str(node["id"]): node for node in ui["nodes"] if node["type"] not in UI_ONLY_TYPES}
    if set(nodes) != set(api):
        problems.append(f"node ids differ: UI only {sorted(set(nodes) - set(api))}, API only {sorted(set(api) - set(nodes))}")
    links = {row[0]: row for row in ui["links"]}
    for node_id in sorted(set(nodes) & set(api), key=int):
        node, twin = nodes[node_id], api[node_id]
        where = f"node {node_id} ({node['type']})"
        if node["type"] != twin["class_type"]:
            problems.append(f"{where}: API class_type {twin['class_type']}")
            continue
        problems += _link_problems(where, node, twin, links)
        problems += _widget_problems(where, node, twin, spec)
    return problems


def _link_problems(where: str, node: dict, twin: dict, links: dict) -> list[str]:
    problems = []
    linked = {}
    for socket in node.get("inputs", []):
        if socket.get("link") is None:
            continue
        row = links.get(socket["link"])
        if row is None or str(row[3]) != str(node["id"]):
            problems.append(f"{where}: input {socket['name']} names link {socket['link']}, which does not end here")
            continue
        linked[socket["name"]] = [str(row[1]), row[2]]
    api_links = {name: value for name, value in twin["inputs"].items() if _is_link(value)}
    if linked != api_links:
        problems.append(f"{where}: links differ: UI {linked}, API {api_links}")
    return problems


def _ui_values(node: dict, seed_positions: set[int]) -> list:
    """The UI widget values without the UI-only entries: upload buttons, and the control_after_generate entry
    after each seed widget (``seed_positions``: indices among the kept values); a missing entry is marked."""
    values = list(node.get("widgets_values") or [])
    upload = UPLOAD_WIDGETS.get(node["type"])
    if upload is not None and len(values) > upload:
        del values[upload]
    kept: list = []
    entries = iter(values)
    for value in entries:
        kept.append(value)
        if len(kept) - 1 in seed_positions:
            control = next(entries, None)
            if control not in CONTROL_VALUES:
                kept.append(f"<missing control_after_generate, found {control!r}>")
    return kept


def _widget_problems(where: str, node: dict, twin: dict, spec) -> list[str]:  # noqa: ANN001
    node_spec = _node_spec(spec, node["type"])
    if node_spec is None:  # a core node: its API widget values in order (links aside)
        seeds = {index for index, _ in enumerate(SEED_WIDGETS.get(node["type"], ()))}
        ui_values = _ui_values(node, seeds)
        converted = {socket["name"] for socket in node.get("inputs", []) if socket.get("widget")}
        api_values = [value for name, value in twin["inputs"].items() if not _is_link(value) or name in converted]
        same = len(ui_values) == len(api_values) and all(_is_link(b) or a == b for a, b in zip(ui_values, api_values))
        return [] if same else [f"{where}: widget values differ: UI {ui_values}, API {api_values}"]
    widgets = [port for port in node_spec.inputs if port.kind in SOCKET_FREE_KINDS]
    ui_values = _ui_values(node, {index for index, port in enumerate(widgets) if port.name == "seed"})
    if len(ui_values) != len(widgets):
        return [f"{where}: UI widget values {ui_values} for the spec's {[port.name for port in widgets]}"]
    problems = [f"{where}: API input {name} is not in the spec"
                for name in sorted(set(twin["inputs"]) - {port.name for port in node_spec.inputs})]
    for port, value in zip(widgets, ui_values):
        api_value = twin["inputs"].get(port.name)
        if api_value is None:
            problems.append(f"{where}: API lacks widget {port.name}")
        elif not _is_link(api_value):  # a widget fed by a link: its UI value is not used
            if api_value != value:
                problems.append(f"{where}: {port.name} is {value!r} in the UI, {api_value!r} in the API")
            problems += _type_problems(where, port, api_value)
    return problems


def _type_problems(where: str, port, value) -> list[str]:  # noqa: ANN001 - a spec Port, a JSON value
    if port.kind == "COMBO":
        if not isinstance(value, str):
            return [f"{where}: {port.name} = {value!r}; expected one of the combo's strings"]
        if port.options and value not in port.options:
            return [f"{where}: {port.name} = {value!r}; offered: {port.options}"]
        return []
    expected = {"INT": (int,), "FLOAT": (int, float), "BOOLEAN": (bool,), "STRING": (str,)}[port.kind]
    if isinstance(value, bool) != (port.kind == "BOOLEAN") or not isinstance(value, expected):
        return [f"{where}: {port.name} = {value!r}; expected {port.kind} like the default {port.default!r}"]
    if port.default is not None and not isinstance(port.default, expected):
        return [f"{where}: the spec default of {port.name} ({port.default!r}) is not {port.kind}"]
    return []


@pytest.fixture(scope="module")
def spec(pack_module):
    return pack_module("nodes.spec")


def test_every_workflow_has_an_api_twin():
    assert NAMES, f"no workflow found in {WORKFLOWS}"
    assert sorted(path.name for path in (WORKFLOWS / "api").glob("*.json")) == [f"{name}_api.json" for name in NAMES]


@pytest.mark.parametrize("name", NAMES)
def test_ui_and_api_twins_agree_with_each_other_and_the_spec(name, spec):
    ui, api = _load(name)
    assert twin_problems(ui, api, spec) == []


def _first(ui: dict, node_type: str) -> dict:
    return next(node for node in ui["nodes"] if node["type"] == node_type)


@pytest.mark.parametrize(
    "break_it, expected",
    [
        (lambda ui, api: _first(ui, "ICM_ApplyInContextMatte")["widgets_values"].__setitem__(0, 3), "batch_size is 3"),
        (lambda ui, api: api.pop(str(_first(ui, "SaveImage")["id"])), "node ids differ"),
        (lambda ui, api: ui["links"][0].__setitem__(2, 1), "links differ"),
        (lambda ui, api: _first(ui, "ICM_EncodeReferenceContext")["widgets_values"].__setitem__(2, 0), "control_after_generate"),
        (lambda ui, api: _first(ui, "LoadImage")["widgets_values"].__setitem__(0, "other.png"), "widget values differ"),
        (lambda ui, api: [api[key]["inputs"].__setitem__("fit", "zoom") for key in api
                          if api[key]["class_type"] == "ICM_ApplyInContextMatte"], "offered"),
    ],
    ids=["widget value", "missing node", "link slot", "control entry", "core widget", "combo value"],
)
def test_a_broken_twin_is_caught(spec, break_it, expected):
    ui, api = _load("matte_loaded_images")
    ui, api = copy.deepcopy(ui), copy.deepcopy(api)
    if expected == "offered":  # the UI must carry the same wrong value, or the pair differs first
        _first(ui, "ICM_ApplyInContextMatte")["widgets_values"][3] = "zoom"
    break_it(ui, api)
    problems = twin_problems(ui, api, spec)
    assert any(expected in problem for problem in problems), problems
