"""A test-only ComfyUI node pack: saves IMAGE / MASK tensors losslessly, so tests compare exact values.

``ICMTest_SaveTensor`` writes ``output/icm_test_tensors/<name>.safetensors`` holding ``value`` (float32, as the
graph passed it). Only the integration tests load this pack, next to the real one.
"""

import os

import folder_paths
from safetensors.torch import save_file


class SaveTensorForTest:
    CATEGORY = "testing"
    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"name": ("STRING", {"default": "tensor"})},
            "optional": {"image": ("IMAGE",), "mask": ("MASK",)},
        }

    def save(self, name, image=None, mask=None):
        value = image if image is not None else mask
        if value is None:
            raise ValueError("ICMTest_SaveTensor needs an image or a mask input")
        folder = os.path.join(folder_paths.get_output_directory(), "icm_test_tensors")
        os.makedirs(folder, exist_ok=True)
        save_file({"value": value.detach().float().cpu().contiguous()}, os.path.join(folder, f"{name}.safetensors"))
        return {"ui": {"icm_test_tensor": [name]}}


NODE_CLASS_MAPPINGS = {"ICMTest_SaveTensor": SaveTensorForTest}
NODE_DISPLAY_NAME_MAPPINGS = {"ICMTest_SaveTensor": "Save Tensor (ICM tests)"}
