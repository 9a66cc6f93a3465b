"""The frozen public interface of the nodes: ids, display names, inputs and outputs.

Node ids are stable forever once released (workflows store them); display names are fixed. The ComfyUI V3
schemas are built from these specs, and tests compare both the specs (without ComfyUI) and the live
``/object_info`` (with ComfyUI) against them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CATEGORY = "image/matting/In-Context Matting"
ICM_MODEL = "ICM_MODEL"
ICM_CONTEXT = "ICM_CONTEXT"
DECODER_FOLDER = "icm"
CONTEXT_FOLDER = "icm_contexts"
SAVED_CONTEXT_UI_KEY = "icm_saved_context"  # Save Reference Context's UI output: the saved file's listed name

LOAD_ID = "ICM_LoadIconMatting"
ENCODE_ID = "ICM_EncodeReferenceContext"
EXPAND_ID = "ICM_ExpandPointPrompt"
APPLY_ID = "ICM_ApplyInContextMatte"
COMBINE_ID = "ICM_CombineReferenceContexts"
SAVE_CONTEXT_ID = "ICM_SaveReferenceContext"
LOAD_CONTEXT_ID = "ICM_LoadReferenceContext"

MAX_SEED = 2**63 - 1
FIT_OPTIONS = ("stretch", "pad", "crop")
FIT_TOOLTIP = ("How images of any size/aspect reach the model's 768x768 square: stretch (default), pad "
               "(letterbox) or crop (official evaluation; alpha 0 outside the centre crop). The result is always "
               "aligned with the input at its exact size.")

PRECISION_OPTIONS = ("fp32", "auto")  # decoder precision: both mean fp32
LEGACY_PRECISIONS = ("fp16", "bf16")  # offered by older versions; workflows saved with them still load, in fp32


def decoder_precision(value: str) -> tuple[str, str | None]:
    """The decoder dtype name for a ``precision`` widget value, and a note when an old value is remapped."""
    if value in PRECISION_OPTIONS:
        return "fp32", None
    if value in LEGACY_PRECISIONS:
        return "fp32", (f"decoder precision {value!r} is no longer offered and runs in fp32 (lower precision moved "
                        "the alpha by up to 0.11); pick fp32 to silence this note.")
    raise ValueError(f"precision must be one of {PRECISION_OPTIONS} (older workflows: {LEGACY_PRECISIONS}), "
                     f"got {value!r}.")


@dataclass(frozen=True)
class Port:
    """One input or output socket / widget.

    ``kind`` is the ComfyUI type name (IMAGE, MASK, MODEL, VAE, CLIP, INT, FLOAT, BOOLEAN, COMBO, ICM_MODEL, ...).
    ``options`` lists COMBO choices; ``options_from`` names a model folder whose files are the choices.
    """

    name: str
    kind: str
    tooltip: str
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    options: tuple[str, ...] = ()
    options_from: str | None = None
    advanced: bool = False
    optional: bool = False


@dataclass(frozen=True)
class NodeSpec:
    node_id: str
    display_name: str
    description: str
    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...] = field(default_factory=tuple)
    is_output_node: bool = False


LOAD_SPEC = NodeSpec(
    node_id=LOAD_ID,
    display_name="Load IconMatting",
    description="Turns the SD 2.x MODEL, VAE and CLIP already loaded in the graph into a matting model, with "
    "the IconMatting decoder from models/icm. Nothing is copied: the graph's model is reused.",
    inputs=(
        Port("model", "MODEL", "The SD 2.1 (768-v) or SD 2.x base MODEL from Load Checkpoint; used frozen."),
        Port("vae", "VAE", "The SD 2.x VAE (a KL VAE: its posterior is sampled, so TAESD does not work)."),
        Port("clip", "CLIP", "The SD 2.x CLIP; only the empty prompt is encoded, once."),
        Port(
            "decoder_name",
            "COMBO",
            "IconMatting decoder checkpoint in models/icm (official: 12-0.00800-mat.pth).",
            options_from=DECODER_FOLDER,
        ),
        Port("timestep", "INT", "Diffusion timestep of the single noisy UNet pass (paper: 200).",
             default=200, minimum=0, maximum=999, step=1, advanced=True),
        Port("ensemble_size", "INT", "Noisy copies per image averaged into the features (paper: 4; fewer is "
             "faster, more is smoother).", default=4, minimum=1, maximum=16, step=1, advanced=True),
        Port("precision", "COMBO", "Precision of the IconMatting decoder: always fp32 (it is ~2% of the time, and "
             "fp16/bf16 visibly change the matte); auto also means fp32. The UNet runs as ComfyUI loaded it, with "
             "features and attention maps averaged in fp32.", default="fp32",
             options=PRECISION_OPTIONS, advanced=True),
    ),
    outputs=(Port("icm_model", ICM_MODEL, "The matting model: connect to Encode Reference Context and Apply "
                  "In-Context Matte."),),
)

ENCODE_SPEC = NodeSpec(
    node_id=ENCODE_ID,
    display_name="Encode Reference Context",
    description="Marks what to matte: the reference image(s) and a mask of the thing. Encoded once; every target "
    "batch is matched against it.",
    inputs=(
        Port("icm_model", ICM_MODEL, "From Load IconMatting."),
        Port("reference", "IMAGE", "Reference image(s) showing the thing to matte. Several images form one "
             "context (their marked tokens are pooled)."),
        Port("mask", "MASK", "Where the thing is in each reference (white = the thing). A mask painted in the "
             "mask editor works as is; one mask per reference image, or one for all."),
        Port("invert_mask", "BOOLEAN", "Invert the mask first. Turn on when the reference is a cut-out PNG "
             "whose alpha marks the thing (Load Image gives 1 - alpha).", default=False),
        Port("seed", "INT", "Seed of the diffusion noise.", default=0, minimum=0, maximum=MAX_SEED, step=1),
        Port("min_coverage", "FLOAT", "A token is used when this fraction of its 16x16 cell (at 768 px) is inside "
             "the mask. 1.0 = the official rule (whole cells); lower keeps thin structures.", default=1.0,
             minimum=0.01, maximum=1.0, step=0.01, advanced=True),
        Port("fit", "COMBO", FIT_TOOLTIP, default="stretch", options=FIT_OPTIONS, advanced=True),
    ),
    outputs=(
        Port("context", ICM_CONTEXT, "The reference context: connect to Apply In-Context Matte."),
        Port("preview", "IMAGE", "The reference with the tokens that were used highlighted (others dimmed)."),
    ),
)

APPLY_SPEC = NodeSpec(
    node_id=APPLY_ID,
    display_name="Apply In-Context Matte",
    description="Mattes every target image like the reference: one soft alpha per image, in order.",
    inputs=(
        Port("icm_model", ICM_MODEL, "From Load IconMatting."),
        Port("context", ICM_CONTEXT, "From Encode Reference Context (made with the same matting model)."),
        Port("images", "IMAGE", "Target images (any size, any batch length)."),
        Port("batch_size", "INT", "Targets per UNet pass; memory grows with it, not with the batch length.",
             default=2, minimum=1, maximum=64, step=1, advanced=True),
        Port("seed", "INT", "Seed of the diffusion noise (the same image and seed always give the same alpha).",
             default=0, minimum=0, maximum=MAX_SEED, step=1),
        Port("fit", "COMBO", FIT_TOOLTIP, default="stretch", options=FIT_OPTIONS),
        Port("refine_edges", "BOOLEAN", "Sharpen the alpha at full resolution with a fast guided filter driven by "
             "the image (hair-level edges on large images).", default=True),
        Port("estimate_colours", "BOOLEAN", "Estimate the true foreground colours in soft edges (blur-fusion "
             "foreground estimation) for the foreground, RGBA and composite outputs; off uses the image's colours "
             "(halos of the old background).", default=True),
        Port("background_color", "STRING", "Composite background as #rrggbb or r,g,b (used when no background "
             "image is connected).", default="#000000"),
        Port("refine_radius", "INT", "Guided-filter window radius in full-resolution pixels; 0 = automatic "
             "(about one model cell).", default=0, minimum=0, maximum=256, step=1, advanced=True),
        Port("refine_eps", "FLOAT", "Guided-filter regularisation: larger = smoother alpha.", default=1e-4,
             minimum=1e-6, maximum=1.0, step=1e-5, advanced=True),
        Port("background", "IMAGE", "Optional background images for the composite (one, or one per target; "
             "resized to each target).", optional=True),
    ),
    outputs=(
        Port("alpha", "MASK", "Soft alpha matte per target, [B, H, W] in 0..1."),
        Port("rgba", "IMAGE", "Each target's foreground colours with its alpha as a fourth channel."),
        Port("foreground", "IMAGE", "Estimated foreground colours (valid where alpha > 0)."),
        Port("composite", "IMAGE", "The foreground over the background colour or image."),
    ),
)

EXPAND_SPEC = NodeSpec(
    node_id=EXPAND_ID,
    display_name="Expand Point Prompt",
    description="Turns a few clicks and/or a scribble on the reference into a region mask: each prompt cell is "
    "extended with the cells the reference's own self-attention links it to (paper §3.6). Feed the mask to "
    "Encode Reference Context.",
    inputs=(
        Port("icm_model", ICM_MODEL, "From Load IconMatting."),
        Port("reference", "IMAGE", "The reference image (one image)."),
        Port("positive_points", "STRING", 'Clicks on the thing, as JSON [{"x": .., "y": ..}, ...] in the '
             "reference's pixels (the Points Editor / SAM3 format). Can be empty when a scribble is given.",
             default="[]"),
        Port("negative_points", "STRING", "Clicks on what is NOT the thing (same JSON); they remove their cells "
             "and what they attend to more than the positive clicks do.", default="[]"),
        Port("top_m", "INT", "Cells added per prompt cell (its strongest self-attention responses).",
             default=16, minimum=0, maximum=512, step=1),
        Port("relative_threshold", "FLOAT", "Also require a response of at least this fraction of the prompt "
             "cell's strongest one; 0 turns it off.", default=0.0, minimum=0.0, maximum=1.0, step=0.01,
             advanced=True),
        Port("seed", "INT", "Seed of the diffusion noise.", default=0, minimum=0, maximum=MAX_SEED, step=1),
        Port("fit", "COMBO", FIT_TOOLTIP + " Use the same fit as in Encode Reference Context.", default="stretch",
             options=FIT_OPTIONS, advanced=True),
        Port("scribble", "MASK", "Optional strokes on the thing (any pixel counts), at the reference's size.",
             optional=True),
    ),
    outputs=(
        Port("mask", "MASK", "The expanded region at the reference's size, ready for Encode Reference Context."),
        Port("preview", "IMAGE", "The reference with the expanded cells highlighted and the prompt cells in red."),
    ),
)

COMBINE_SPEC = NodeSpec(
    node_id=COMBINE_ID,
    display_name="Combine Reference Contexts",
    description="Pools the marked tokens of several reference contexts into one (more references, better "
    "mattes). All must come from the same matting model.",
    inputs=(
        Port("context_1", ICM_CONTEXT, "A reference context."),
        Port("context_2", ICM_CONTEXT, "Another reference context."),
        Port("context_3", ICM_CONTEXT, "Optional third context.", optional=True),
        Port("context_4", ICM_CONTEXT, "Optional fourth context.", optional=True),
    ),
    outputs=(Port("context", ICM_CONTEXT, "The combined context."),),
)

SAVE_CONTEXT_SPEC = NodeSpec(
    node_id=SAVE_CONTEXT_ID,
    display_name="Save Reference Context",
    description="Saves a reference context to output/icm_contexts as .safetensors, to reuse it later without the "
    "reference image (only with the same matting model and settings).",
    inputs=(
        Port("context", ICM_CONTEXT, "The context to save."),
        Port("filename_prefix", "STRING", "File name prefix inside output/icm_contexts.", default="icm_context"),
    ),
    is_output_node=True,
)

LOAD_CONTEXT_SPEC = NodeSpec(
    node_id=LOAD_CONTEXT_ID,
    display_name="Load Reference Context",
    description="Loads a saved reference context (from output/icm_contexts or models/icm_contexts).",
    inputs=(Port("context_name", "COMBO", "A saved .safetensors context.", options_from=CONTEXT_FOLDER),),
    outputs=(Port("context", ICM_CONTEXT, "The saved context: connect to Apply In-Context Matte."),),
)

NODE_SPECS: tuple[NodeSpec, ...] = (
    LOAD_SPEC, ENCODE_SPEC, EXPAND_SPEC, APPLY_SPEC, COMBINE_SPEC, SAVE_CONTEXT_SPEC, LOAD_CONTEXT_SPEC,
)
