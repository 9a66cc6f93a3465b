"""Check a ComfyUI run of the pack's nodes against the core Python API on the same weights, inputs and seeds.

``instrument(workflow)`` adds test probes (``ICMTest_SaveTensor``) to an API-format workflow: one on every IMAGE /
MASK that flows from a ComfyUI node into one of ours (the exact inputs our nodes saw), and one on every IMAGE /
MASK output of ours that feeds the graph (what ComfyUI computed). ``replay(workflow, inputs, ...)`` then evaluates
our nodes again with ``icm_core``'s public API and the diffusers feature backend, from those recorded inputs, and
returns what each probed output should be.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

PROBE = "ICMTest_SaveTensor"
PREFIX = "ICM_"


@dataclass(frozen=True)
class Probe:
    """A recorded tensor: ``name`` is its file name; ``node``/``port`` where it was taken."""

    name: str
    node: str
    port: str | int
    kind: str  # "IMAGE" or "MASK"
    role: str  # "input" (into one of our nodes) or "output" (one of our outputs)


def _spec_by_id(spec_module) -> dict:
    return {spec.node_id: spec for spec in spec_module.NODE_SPECS}


def instrument(workflow: dict, spec_module) -> tuple[dict, list[Probe]]:
    """Copy of ``workflow`` with probes on our nodes' IMAGE/MASK inputs from core nodes and on our outputs."""
    specs = _spec_by_id(spec_module)
    graph = json.loads(json.dumps(workflow))
    probes: list[Probe] = []
    next_id = max(int(k) for k in graph) + 1
    for node_id, node in workflow.items():
        spec = specs.get(node["class_type"])
        if spec is None:
            continue
        kinds = {port.name: port.kind for port in spec.inputs}
        for name, value in node["inputs"].items():
            if isinstance(value, list) and kinds.get(name) in ("IMAGE", "MASK") and \
                    not workflow[value[0]]["class_type"].startswith(PREFIX):
                probes.append(Probe(f"in_{node_id}_{name}", node_id, name, kinds[name], "input"))
        for slot, port in enumerate(spec.outputs):
            if port.kind in ("IMAGE", "MASK"):
                probes.append(Probe(f"out_{node_id}_{slot}", node_id, slot, port.kind, "output"))
    for probe in probes:
        source = workflow[probe.node]["inputs"][probe.port] if probe.role == "input" else [probe.node, probe.port]
        graph[str(next_id)] = {"class_type": PROBE, "inputs": {"name": probe.name, probe.kind.lower(): source}}
        next_id += 1
    return graph, probes


def read_probes(folder: Path, probes: list[Probe]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {probe.name: load_file(str(folder / f"{probe.name}.safetensors"))["value"] for probe in probes}


def replay(
    workflow: dict,
    recorded: dict[str, torch.Tensor],
    make_engine: Callable[[dict], object],
    find_context: Callable[[str], Path],
) -> dict[str, torch.Tensor]:
    """Evaluate our nodes of ``workflow`` with the core API; returns ``{probe name: expected tensor}`` of outputs.

    ``make_engine(inputs of Load IconMatting)`` builds the core engine; ``find_context(name)`` resolves a saved
    context name as Load Reference Context lists it.
    """
    from icm_core.context_io import load_context
    from icm_core.outputs import OUTPUT_KINDS, make_outputs, parse_colour
    from icm_core.pipeline import RefinementConfig, combine_contexts
    from icm_core.prompts import ExpansionConfig, parse_points

    cache: dict[str, tuple] = {}

    def value(node_id: str, name: str):
        given = workflow[node_id]["inputs"].get(name)
        if not isinstance(given, list):
            return given
        source, slot = given
        if workflow[source]["class_type"].startswith(PREFIX):
            return evaluate(source)[slot]
        return recorded[f"in_{node_id}_{name}"]

    def images(tensor: torch.Tensor) -> torch.Tensor:  # ComfyUI IMAGE [B, H, W, C] -> core [B, C, H, W]
        return tensor.permute(0, 3, 1, 2).float()

    def masks(tensor: torch.Tensor, count: int, invert: bool = False) -> list[torch.Tensor]:
        tensor = tensor if tensor.ndim == 3 else tensor[None]
        tensor = 1.0 - tensor if invert else tensor
        return [tensor[min(i, tensor.shape[0] - 1)] for i in range(count)]

    def evaluate(node_id: str) -> tuple:
        if node_id in cache:
            return cache[node_id]
        kind = workflow[node_id]["class_type"]
        get = lambda name: value(node_id, name)  # noqa: E731
        if kind == "ICM_LoadIconMatting":
            widgets = {k: v for k, v in workflow[node_id]["inputs"].items() if not isinstance(v, list)}
            result = (make_engine(widgets),)  # MODEL / VAE / CLIP: the same checkpoint, loaded by the core
        elif kind == "ICM_EncodeReferenceContext":
            engine, refs = get("icm_model"), images(get("reference"))
            context = engine.encode_reference(list(refs), masks(get("mask"), refs.shape[0], get("invert_mask")),
                                              seed=get("seed"), min_coverage=get("min_coverage"), fit=get("fit"))
            result = (context, None)
        elif kind == "ICM_ExpandPointPrompt":
            engine, ref = get("icm_model"), images(get("reference"))[0]
            scribble = get("scribble")
            expansion = engine.expand_prompt(
                ref, positive=parse_points(get("positive_points"), "positive_points"),
                negative=parse_points(get("negative_points"), "negative_points"),
                scribble=None if scribble is None else masks(scribble, 1)[0],
                config=ExpansionConfig(top_m=get("top_m"), relative_threshold=get("relative_threshold") or None),
                seed=get("seed"), fit=get("fit"))
            result = (expansion.mask[None], None)
        elif kind == "ICM_ApplyInContextMatte":
            engine, targets = get("icm_model"), images(get("images"))
            refinement = (RefinementConfig(radius=get("refine_radius") or None, eps=get("refine_eps"))
                          if get("refine_edges") else None)
            alphas = engine.matte(get("context"), list(targets), seed=get("seed"), batch_size=get("batch_size"),
                                  fit=get("fit"), refinement=refinement)
            background = get("background")
            colour = parse_colour(get("background_color"))
            made = []
            for index, (image, alpha) in enumerate(zip(targets, alphas)):
                backdrop = colour
                if background is not None:
                    picked = images(background)[min(index, background.shape[0] - 1)][:3]
                    backdrop = torch.nn.functional.interpolate(picked[None], size=image.shape[1:], mode="bilinear",
                                                               align_corners=False)[0]
                made.append(make_outputs(image, alpha, OUTPUT_KINDS, backdrop, get("estimate_colours")))
            to_comfy = lambda items: torch.stack(items).permute(0, 2, 3, 1)  # noqa: E731
            result = (torch.stack([m.alpha for m in made]), to_comfy([m.rgba for m in made]),
                      to_comfy([m.foreground for m in made]), to_comfy([m.composite for m in made]))
        elif kind == "ICM_CombineReferenceContexts":
            contexts = [get(f"context_{i}") for i in range(1, 5) if workflow[node_id]["inputs"].get(f"context_{i}")]
            result = (combine_contexts(*contexts),)
        elif kind == "ICM_LoadReferenceContext":
            result = (load_context(find_context(get("context_name"))),)
        elif kind == "ICM_SaveReferenceContext":
            result = ()
        else:
            raise AssertionError(f"replay does not know {kind}: add it here")
        cache[node_id] = result
        return result

    expected = {}
    for node_id, node in workflow.items():
        if node["class_type"].startswith(PREFIX):
            for slot, tensor in enumerate(evaluate(node_id)):
                if isinstance(tensor, torch.Tensor):
                    expected[f"out_{node_id}_{slot}"] = tensor
    return expected
