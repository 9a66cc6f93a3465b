"""Node pack tests that need no ComfyUI: frozen interface, type conversions, model checks, entry point."""

from __future__ import annotations

import asyncio
import inspect
import sys

import pytest
import torch


@pytest.fixture(scope="module")
def spec(pack_module):
    return pack_module("nodes.spec")


@pytest.fixture(scope="module")
def convert(pack_module):
    return pack_module("nodes.convert")


@pytest.fixture(scope="module")
def model_check(pack_module):
    return pack_module("nodes.model_check")


FROZEN = {
    "ICM_LoadIconMatting": (
        "Load IconMatting",
        [("model", "MODEL"), ("vae", "VAE"), ("clip", "CLIP"), ("decoder_name", "COMBO"), ("timestep", "INT"),
         ("ensemble_size", "INT"), ("precision", "COMBO")],
        [("icm_model", "ICM_MODEL")],
    ),
    "ICM_EncodeReferenceContext": (
        "Encode Reference Context",
        [("icm_model", "ICM_MODEL"), ("reference", "IMAGE"), ("mask", "MASK"), ("invert_mask", "BOOLEAN"),
         ("seed", "INT"), ("min_coverage", "FLOAT"), ("fit", "COMBO")],
        [("context", "ICM_CONTEXT"), ("preview", "IMAGE")],
    ),
    "ICM_ExpandPointPrompt": (
        "Expand Point Prompt",
        [("icm_model", "ICM_MODEL"), ("reference", "IMAGE"), ("positive_points", "STRING"),
         ("negative_points", "STRING"), ("top_m", "INT"), ("relative_threshold", "FLOAT"), ("seed", "INT"),
         ("fit", "COMBO"), ("scribble", "MASK")],
        [("mask", "MASK"), ("preview", "IMAGE")],
    ),
    "ICM_CombineReferenceContexts": (
        "Combine Reference Contexts",
        [("context_1", "ICM_CONTEXT"), ("context_2", "ICM_CONTEXT"), ("context_3", "ICM_CONTEXT"),
         ("context_4", "ICM_CONTEXT")],
        [("context", "ICM_CONTEXT")],
    ),
    "ICM_SaveReferenceContext": (
        "Save Reference Context", [("context", "ICM_CONTEXT"), ("filename_prefix", "STRING")], [],
    ),
    "ICM_LoadReferenceContext": (
        "Load Reference Context", [("context_name", "COMBO")], [("context", "ICM_CONTEXT")],
    ),
    "ICM_ApplyInContextMatte": (
        "Apply In-Context Matte",
        [("icm_model", "ICM_MODEL"), ("context", "ICM_CONTEXT"), ("images", "IMAGE"), ("batch_size", "INT"),
         ("seed", "INT"), ("fit", "COMBO"), ("refine_edges", "BOOLEAN"), ("estimate_colours", "BOOLEAN"),
         ("background_color", "STRING"), ("refine_radius", "INT"), ("refine_eps", "FLOAT"), ("background", "IMAGE")],
        [("alpha", "MASK"), ("rgba", "IMAGE"), ("foreground", "IMAGE"), ("composite", "IMAGE")],
    ),
}


def test_node_interface_is_frozen(spec):
    assert {s.node_id for s in spec.NODE_SPECS} == set(FROZEN)
    for node in spec.NODE_SPECS:
        display, inputs, outputs = FROZEN[node.node_id]
        assert node.display_name == display
        assert [(p.name, p.kind) for p in node.inputs] == inputs
        assert [(p.name, p.kind) for p in node.outputs] == outputs


def test_every_port_has_a_tooltip_and_expert_knobs_are_advanced(spec):
    for node in spec.NODE_SPECS:
        for port in (*node.inputs, *node.outputs):
            assert len(port.tooltip) > 10, (node.node_id, port.name)
    advanced = {(n.node_id, p.name) for n in spec.NODE_SPECS for p in n.inputs if p.advanced}
    assert advanced == {
        ("ICM_LoadIconMatting", "timestep"), ("ICM_LoadIconMatting", "ensemble_size"),
        ("ICM_LoadIconMatting", "precision"), ("ICM_ApplyInContextMatte", "batch_size"),
        ("ICM_EncodeReferenceContext", "min_coverage"), ("ICM_ExpandPointPrompt", "relative_threshold"),
        ("ICM_EncodeReferenceContext", "fit"), ("ICM_ExpandPointPrompt", "fit"),
        ("ICM_ApplyInContextMatte", "refine_radius"), ("ICM_ApplyInContextMatte", "refine_eps"),
    }
    load = {p.name: p for p in spec.LOAD_SPEC.inputs}
    assert (load["timestep"].default, load["ensemble_size"].default) == (200, 4)
    assert load["decoder_name"].options_from == "icm"


def test_image_and_mask_conversions(convert):
    comfy_images = torch.rand(2, 30, 40, 3)
    core = convert.image_batch_to_core(comfy_images)
    assert core.shape == (2, 3, 30, 40)
    torch.testing.assert_close(convert.core_image_to_comfy(core), comfy_images)
    assert convert.image_batch_to_core(torch.rand(30, 40, 4)).shape == (1, 4, 30, 40)
    with pytest.raises(ValueError, match=r"IMAGE \[B, H, W, C\]"):
        convert.image_batch_to_core(torch.rand(2, 3, 30, 40))

    mask = torch.zeros(30, 40)
    mask[5:10, 5:10] = 1
    masks = convert.mask_list_for_images(mask, count=3, size=(30, 40))
    assert len(masks) == 3 and all(torch.equal(m, mask) for m in masks)
    inverted = convert.mask_list_for_images(mask[None], count=1, size=(30, 40), invert=True)[0]
    torch.testing.assert_close(inverted, 1 - mask)
    per_image = convert.mask_list_for_images(torch.stack([mask, 1 - mask]), count=2, size=(30, 40))
    torch.testing.assert_close(per_image[1], 1 - mask)
    with pytest.raises(ValueError, match="64x64 empty mask when the file has no alpha"):
        convert.mask_list_for_images(torch.zeros(1, 64, 64), count=1, size=(30, 40))
    with pytest.raises(ValueError, match="got 2 masks for 3 reference images"):
        convert.mask_list_for_images(torch.zeros(2, 30, 40), count=3, size=(30, 40))


def test_background_images_follow_each_target(convert):
    backgrounds = torch.rand(2, 10, 12, 3)
    first = convert.background_for(backgrounds, 0, (10, 12))
    torch.testing.assert_close(first, backgrounds[0].permute(2, 0, 1))
    assert convert.background_for(backgrounds[:1], 5, (20, 30)).shape == (3, 20, 30)  # one for all, resized
    with pytest.raises(ValueError, match="background has 2 images but target 2 needs one"):
        convert.background_for(backgrounds, 2, (10, 12))


SD2 = {"context_dim": 1024, "model_channels": 320, "use_linear_in_transformer": True, "adm_in_channels": None,
       "in_channels": 4}


def test_sd2_configs_pass(model_check):
    model_check.check_sd2_unet(SD2, "SD20")
    model_check.check_sd2_unet(dict(SD2, channel_mult=[1, 1, 1, 1]), "SD20")  # narrow test fixture


@pytest.mark.parametrize(
    ("config", "model_class", "found"),
    [
        (dict(SD2, context_dim=768, use_linear_in_transformer=False), "SD15", "SD 1.x (context_dim 768, model_channels 320)"),
        (dict(SD2, context_dim=2048, adm_in_channels=2816), "SDXL", "SDXL (context_dim 2048, model_channels 320)"),
        ({"image_model": "flux", "in_channels": 16}, "Flux", "Flux"),
        (dict(SD2, in_channels=9), "SD20", "9 input channels"),
        (dict(SD2, adm_in_channels=1536), "SD21UnclipH", "SD 2.1 unCLIP"),
    ],
)
def test_other_models_are_named(model_check, config, model_class, found):
    with pytest.raises(ValueError) as error:
        model_check.check_sd2_unet(config, model_class)
    message = str(error.value)
    assert "needs an SD 2.x MODEL" in message and found in message and "v2-1_768-ema-pruned" in message


def test_vae_without_posterior_is_named(model_check):
    class TAESD(torch.nn.Module):
        pass

    class KL(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = torch.nn.Identity()
            self.quant_conv = torch.nn.Identity()

    model_check.check_kl_vae(KL())
    with pytest.raises(ValueError, match="this VAE is a TAESD without one"):
        model_check.check_kl_vae(TAESD())


def test_entry_point_is_lazy_and_async(pack):
    assert inspect.iscoroutinefunction(pack.comfy_entrypoint)
    assert not hasattr(pack, "NODE_CLASS_MAPPINGS")  # would make ComfyUI ignore comfy_entrypoint
    assert "comfy" not in sys.modules and "comfy_api" not in sys.modules
    with pytest.raises(ModuleNotFoundError, match="No module named 'comfy"):  # ComfyUI is imported only when called
        asyncio.run(pack.comfy_entrypoint())


def test_exception_types_are_named_inside_the_pack(pack_module):
    import sys
    import types

    tidy = pack_module("nodes.error_names").tidy_exception_names
    package = "/home/user/ComfyUI/custom_nodes/some-pack"  # how ComfyUI names a custom-node module
    module = types.ModuleType(f"{package}.icm_core.errors")
    error = type("ExampleError", (ValueError,), {"__module__": module.__name__})
    module.ExampleError, module.ValueError = error, ValueError
    sys.modules[module.__name__] = module
    try:
        assert tidy(package) == ["icm_core.errors.ExampleError"]
        assert error.__module__ == "icm_core.errors" and ValueError.__module__ == "builtins"
    finally:
        del sys.modules[module.__name__]


def test_background_batches_are_checked_before_any_model_work(pack_module):
    convert = pack_module("nodes.convert")
    convert.check_backgrounds(None, 5)
    convert.check_backgrounds(torch.zeros(1, 8, 8, 3), 5)
    convert.check_backgrounds(torch.zeros(5, 8, 8, 3), 5)
    with pytest.raises(ValueError, match="background has 2 images for 5 targets"):
        convert.check_backgrounds(torch.zeros(2, 8, 8, 3), 5)
    with pytest.raises(ValueError, match=r"expected an IMAGE \[B, H, W, C\]"):
        convert.check_backgrounds(torch.zeros(8, 8, 3), 5)
