"""The V3 nodes: thin adapters from ComfyUI types to ``icm_core`` (schemas come from ``spec.py``)."""

from __future__ import annotations

import logging
import os
import secrets

import comfy.model_management as model_management
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import ComfyExtension, io, ui

from ..icm_core.config import ExtractionConfig
from ..icm_core.context_io import load_context, save_context
from ..icm_core.outputs import OUTPUT_KINDS, make_outputs, parse_colour
from ..icm_core.pipeline import IconMatting, ReferenceContext, RefinementConfig, combine_contexts
from ..icm_core.prompts import ExpansionConfig, parse_points
from ..icm_core.visualize import prompt_overlay, token_overlay
from ..icm_core.weights.decoder import load_decoder
from .comfy_backend import ComfyFeatureBackend
from .convert import (
    background_for,
    check_backgrounds,
    core_image_to_comfy,
    image_batch_to_core,
    mask_list_for_images,
)
from .points_editor import CELLS_UI_KEY, REFERENCE_UI_KEY, expansion_ui
from .spec import (
    APPLY_SPEC,
    CATEGORY,
    COMBINE_SPEC,
    CONTEXT_FOLDER,
    ENCODE_SPEC,
    EXPAND_SPEC,
    LOAD_CONTEXT_SPEC,
    LOAD_SPEC,
    SAVE_CONTEXT_SPEC,
    SAVED_CONTEXT_UI_KEY,
    NodeSpec,
    Port,
    decoder_precision,
)

logger = logging.getLogger(__name__)

_SOCKETS = {
    "IMAGE": io.Image,
    "MASK": io.Mask,
    "MODEL": io.Model,
    "VAE": io.Vae,
    "CLIP": io.Clip,
}


def _socket(kind: str):
    return _SOCKETS[kind] if kind in _SOCKETS else io.Custom(kind)


def _input(port: Port):
    common = {"tooltip": port.tooltip, "optional": port.optional}
    if port.advanced:
        common["extra_dict"] = {"advanced": True}
    if port.kind == "INT":
        return io.Int.Input(
            port.name, default=port.default, min=port.minimum, max=port.maximum, step=port.step,
            control_after_generate=True if port.name == "seed" else None, **common,
        )
    if port.kind == "FLOAT":
        return io.Float.Input(port.name, default=port.default, min=port.minimum, max=port.maximum, step=port.step, **common)
    if port.kind == "BOOLEAN":
        return io.Boolean.Input(port.name, default=port.default, **common)
    if port.kind == "STRING":
        return io.String.Input(port.name, default=port.default, multiline=False, **common)
    if port.kind == "COMBO":
        options = folder_paths.get_filename_list(port.options_from) if port.options_from else list(port.options)
        return io.Combo.Input(port.name, options=options, default=port.default, **common)
    return _socket(port.kind).Input(port.name, **common)


def build_schema(spec: NodeSpec) -> io.Schema:
    """The V3 schema of a node spec."""
    return io.Schema(
        node_id=spec.node_id,
        display_name=spec.display_name,
        category=CATEGORY,
        description=spec.description,
        inputs=[_input(port) for port in spec.inputs],
        outputs=[_socket(port.kind).Output(port.name, tooltip=port.tooltip) for port in spec.outputs],
        is_output_node=spec.is_output_node,
    )


def empty_prompt_embedding(clip) -> torch.Tensor:
    """CLIP embedding of the empty prompt, ``[1, 77, D]``."""
    return clip.encode_from_tokens(clip.tokenize(""))


class LoadIconMatting(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return build_schema(LOAD_SPEC)

    @classmethod
    def validate_inputs(cls, precision) -> bool | str:
        """Accepts the precision values of older workflows too (they run in fp32)."""
        try:
            decoder_precision(precision)
        except ValueError as error:
            return str(error)
        return True

    @classmethod
    def execute(cls, model, vae, clip, decoder_name, timestep, ensemble_size, precision) -> io.NodeOutput:
        _, note = decoder_precision(precision)
        if note:
            logger.warning(note)
        decoder = load_decoder(folder_paths.get_full_path_or_raise("icm", decoder_name))
        backend = ComfyFeatureBackend(model, vae, empty_prompt_embedding(clip))
        extraction = ExtractionConfig(timestep=timestep, ensemble_size=ensemble_size, image_size=decoder.config.image_size)
        engine = IconMatting(backend, decoder, extraction)  # the decoder runs in fp32
        return io.NodeOutput(engine)


class EncodeReferenceContext(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return build_schema(ENCODE_SPEC)

    @classmethod
    def execute(cls, icm_model: IconMatting, reference, mask, invert_mask, seed, min_coverage, fit) -> io.NodeOutput:
        images = image_batch_to_core(reference, "reference")
        masks = mask_list_for_images(mask, images.shape[0], tuple(images.shape[2:]), invert=invert_mask)
        context = icm_model.encode_reference(list(images), masks, seed=seed, min_coverage=min_coverage, fit=fit)
        preview = torch.stack([token_overlay(image[:3], cells) for image, cells in zip(images, context.token_masks)])
        return io.NodeOutput(context, core_image_to_comfy(preview).to(model_management.intermediate_device()))


class ApplyInContextMatte(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return build_schema(APPLY_SPEC)

    @classmethod
    def execute(
        cls, icm_model: IconMatting, context: ReferenceContext, images, batch_size, seed, fit, refine_edges,
        estimate_colours, background_color, refine_radius, refine_eps, background=None,
    ) -> io.NodeOutput:
        colour = parse_colour(background_color)  # user errors first, before any model work
        targets = image_batch_to_core(images, "images")
        check_backgrounds(background, targets.shape[0])
        refinement = RefinementConfig(radius=refine_radius or None, eps=refine_eps) if refine_edges else None
        bar = comfy.utils.ProgressBar(targets.shape[0])
        device, keep = icm_model.backend.device, model_management.intermediate_device()
        results = []
        for index, alpha in icm_model.iter_matte(
            context, targets, seed, batch_size, _check_interrupt, fit, refinement
        ):
            image = targets[index].to(device)
            backdrop = colour if background is None else background_for(background, index, tuple(image.shape[1:]))
            outputs = make_outputs(image, alpha.to(device), OUTPUT_KINDS, backdrop, estimate_colours)
            results.append([o.to(keep) for o in (outputs.alpha, outputs.rgba, outputs.foreground, outputs.composite)])
            bar.update_absolute(index + 1, targets.shape[0])
            model_management.throw_exception_if_processing_interrupted()
        alpha, rgba, foreground, composite = (torch.stack([r[i] for r in results]) for i in range(4))
        return io.NodeOutput(
            alpha, core_image_to_comfy(rgba), core_image_to_comfy(foreground), core_image_to_comfy(composite)
        )


def _check_interrupt(done: int, total: int) -> None:
    """Progress callback of the core between micro-batches: stop at once when the user interrupts."""
    model_management.throw_exception_if_processing_interrupted()


class ExpandPointPrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return build_schema(EXPAND_SPEC)

    @classmethod
    def execute(
        cls, icm_model: IconMatting, reference, positive_points, negative_points, top_m, relative_threshold, seed, fit,
        scribble=None,
    ) -> io.NodeOutput:
        images = image_batch_to_core(reference, "reference")
        if images.shape[0] != 1:
            raise ValueError(f"Expand Point Prompt takes one reference image, got a batch of {images.shape[0]}.")
        size = tuple(images.shape[2:])
        scribble_mask = None if scribble is None else mask_list_for_images(scribble, 1, size)[0]
        positive = parse_points(positive_points, "positive_points")
        negative = parse_points(negative_points, "negative_points")
        expansion = icm_model.expand_prompt(
            images[0], positive=positive, negative=negative, scribble=scribble_mask,
            config=ExpansionConfig(top_m=top_m, relative_threshold=relative_threshold or None), seed=seed, fit=fit,
        )
        preview = prompt_overlay(images[0, :3], expansion.token_mask, expansion.prompt_cells)
        cells = expansion_ui(expansion.token_mask, expansion.prompt_cells, size, icm_model.extraction.image_size,
                             fit, positive, negative)
        shown = {REFERENCE_UI_KEY: _save_temp_preview(core_image_to_comfy(images[:, :3]), cls), CELLS_UI_KEY: [cells]}
        device = model_management.intermediate_device()
        return io.NodeOutput(expansion.mask[None].to(device), core_image_to_comfy(preview[None]).to(device), ui=shown)


def _save_temp_preview(image: torch.Tensor, cls) -> list[dict]:
    """Save ``[1, H, W, 3]`` in 0..1 to ComfyUI's temp folder as PreviewImage does -> its ``/view`` file records.

    The points editor shows this image, so it works whatever node feeds the reference.
    """
    prefix = "icm_points_" + secrets.token_hex(4)
    saved = ui.ImageSaveHelper.save_images(image, prefix, io.FolderType.temp, cls, compress_level=1)
    return [dict(record) for record in saved]


class CombineReferenceContexts(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return build_schema(COMBINE_SPEC)

    @classmethod
    def execute(cls, context_1, context_2, context_3=None, context_4=None) -> io.NodeOutput:
        contexts = [c for c in (context_1, context_2, context_3, context_4) if c is not None]
        return io.NodeOutput(combine_contexts(*contexts))


class SaveReferenceContext(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return build_schema(SAVE_CONTEXT_SPEC)

    @classmethod
    def execute(cls, context: ReferenceContext, filename_prefix) -> io.NodeOutput:
        root = os.path.join(folder_paths.get_output_directory(), CONTEXT_FOLDER)
        folder, name, counter, _, _ = folder_paths.get_save_image_path(filename_prefix, root)
        path = save_context(context, os.path.join(folder, f"{name}_{counter:05}_.safetensors"))
        listed_as = os.path.relpath(path, root).replace(os.sep, "/")  # the name Load Reference Context lists
        logger.info("saved reference context to %s", path)
        return io.NodeOutput(ui={SAVED_CONTEXT_UI_KEY: [listed_as]})


class LoadReferenceContext(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return build_schema(LOAD_CONTEXT_SPEC)

    @classmethod
    def execute(cls, context_name) -> io.NodeOutput:
        return io.NodeOutput(load_context(folder_paths.get_full_path_or_raise(CONTEXT_FOLDER, context_name)))


class InContextMattingExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [
            LoadIconMatting, EncodeReferenceContext, ExpandPointPrompt, ApplyInContextMatte,
            CombineReferenceContexts, SaveReferenceContext, LoadReferenceContext,
        ]
