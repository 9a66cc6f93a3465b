"""The V3 nodes: thin adapters from ComfyUI types to ``icm_core`` (schemas come from ``spec.py``)."""

from __future__ import annotations

import logging

import comfy.model_management as model_management
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import ComfyExtension, io

from ..icm_core.config import ExtractionConfig
from ..icm_core.pipeline import IconMatting, ReferenceContext
from ..icm_core.visualize import token_overlay
from ..icm_core.weights.decoder import load_decoder
from .comfy_backend import ComfyFeatureBackend
from .convert import alphas_to_mask, core_image_to_comfy, image_batch_to_core, mask_list_for_images, rgba_images
from .spec import APPLY_SPEC, CATEGORY, ENCODE_SPEC, LOAD_SPEC, NodeSpec, Port

logger = logging.getLogger(__name__)

_SOCKETS = {
    "IMAGE": io.Image,
    "MASK": io.Mask,
    "MODEL": io.Model,
    "VAE": io.Vae,
    "CLIP": io.Clip,
}
_PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


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
        return io.String.Input(port.name, default=port.default, multiline=True, **common)
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
    )


def _decoder_dtype(precision: str) -> torch.dtype:
    if precision == "auto":
        device = model_management.get_torch_device()
        return torch.float16 if model_management.should_use_fp16(device) else torch.float32
    return _PRECISIONS[precision]


def empty_prompt_embedding(clip) -> torch.Tensor:
    """CLIP embedding of the empty prompt, ``[1, 77, D]``."""
    return clip.encode_from_tokens(clip.tokenize(""))


class LoadIconMatting(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return build_schema(LOAD_SPEC)

    @classmethod
    def execute(cls, model, vae, clip, decoder_name, timestep, ensemble_size, precision) -> io.NodeOutput:
        decoder = load_decoder(folder_paths.get_full_path_or_raise("icm", decoder_name))
        backend = ComfyFeatureBackend(model, vae, empty_prompt_embedding(clip))
        extraction = ExtractionConfig(timestep=timestep, ensemble_size=ensemble_size, image_size=decoder.config.image_size)
        engine = IconMatting(backend, decoder.to(_decoder_dtype(precision)), extraction)
        return io.NodeOutput(engine)


class EncodeReferenceContext(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return build_schema(ENCODE_SPEC)

    @classmethod
    def execute(cls, icm_model: IconMatting, reference, mask, invert_mask, seed) -> io.NodeOutput:
        images = image_batch_to_core(reference, "reference")
        masks = mask_list_for_images(mask, images.shape[0], tuple(images.shape[2:]), invert=invert_mask)
        context = icm_model.encode_reference(list(images), masks, seed=seed)
        preview = torch.stack([token_overlay(image[:3], cells) for image, cells in zip(images, context.token_masks)])
        return io.NodeOutput(context, core_image_to_comfy(preview).to(model_management.intermediate_device()))


class ApplyInContextMatte(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return build_schema(APPLY_SPEC)

    @classmethod
    def execute(cls, icm_model: IconMatting, context: ReferenceContext, images, batch_size, seed) -> io.NodeOutput:
        targets = image_batch_to_core(images, "images")
        bar = comfy.utils.ProgressBar(targets.shape[0])

        def progress(done: int, total: int) -> None:
            bar.update_absolute(done, total)
            model_management.throw_exception_if_processing_interrupted()

        alphas = icm_model.matte(context, targets, seed=seed, batch_size=batch_size, progress=progress)
        alpha = alphas_to_mask(alphas).to(model_management.intermediate_device())
        return io.NodeOutput(alpha, rgba_images(images, alpha))


class InContextMattingExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [LoadIconMatting, EncodeReferenceContext, ApplyInContextMatte]
