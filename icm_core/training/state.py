"""Resumable training state without pickle: tensors in safetensors, scalars in JSON.

``<out>/training_state.safetensors`` holds the decoder's state dict (keys ``decoder/<our key>``, BatchNorm
running statistics included) and every tensor of the optimizer state (``optimizer/<param index>/<name>``, e.g.
AdamW's ``step``, ``exp_avg``, ``exp_avg_sq``). ``<out>/training_state.json`` holds the step, the optimizer's
hyper-parameters per parameter group, non-tensor optimizer state and the training config. The tensors are
written first and the JSON last (each atomically); both carry the step and loading refuses a mismatch.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..io.file_safety import write_text_atomic
from ..weights.checkpoint_io import read_checkpoint, write_safetensors_atomic

logger = logging.getLogger(__name__)

STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"
STATE_FORMAT = "icm-training-state"
STATE_VERSION = 1


class TrainingStateError(ValueError):
    """The saved training state is missing, inconsistent or does not fit this decoder/optimizer."""


@dataclass(frozen=True)
class TrainingState:
    """What :func:`load_training_state` restored besides the modules: the step and the saved JSON fields."""

    step: int
    document: dict[str, Any]


def save_training_state(
    out_dir: Path, step: int, decoder: torch.nn.Module, optimizer: torch.optim.Optimizer, extra: dict[str, Any]
) -> Path:
    """Write the state after ``step`` optimizer steps; returns the JSON path."""
    tensors = {f"decoder/{key}": value for key, value in decoder.state_dict().items()}
    saved = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for index, state in saved["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer/{index}/{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    groups = [
        {**{k: v for k, v in group.items() if k != "params"}, "params": list(group["params"])}
        for group in saved["param_groups"]
    ]
    write_safetensors_atomic(tensors, out_dir / STATE_TENSORS, {"format": STATE_FORMAT, "step": str(step)})
    document = {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "step": step,
        "tensors": STATE_TENSORS,
        "optimizer": {"class": type(optimizer).__name__, "param_groups": groups, "scalar_state": scalars},
        **extra,
    }
    return write_text_atomic(json.dumps(document, indent=2, default=str) + "\n", out_dir / STATE_JSON)


def load_training_state(out_dir: Path, decoder: torch.nn.Module, optimizer: torch.optim.Optimizer) -> TrainingState:
    """Restore the decoder and optimizer from ``out_dir`` in place; returns the saved step and JSON."""
    document = read_state_document(out_dir)
    contents = read_checkpoint(out_dir / document["tensors"])
    step = int(document["step"])
    if contents.metadata.get("step") != str(step):
        raise TrainingStateError(
            f"{out_dir}: {document['tensors']} is from step {contents.metadata.get('step')} but {STATE_JSON} from "
            f"step {step} (an interrupted save?). Restore both files from the same save."
        )
    decoder_state = {k[len("decoder/") :]: v for k, v in contents.tensors.items() if k.startswith("decoder/")}
    try:
        decoder.load_state_dict(decoder_state, strict=True)
    except RuntimeError as error:
        raise TrainingStateError(
            f"{out_dir}: the saved decoder does not fit this decoder ({error}). Resume with the same decoder widths "
            "and image size as the saved run."
        ) from error
    try:
        optimizer.load_state_dict(_optimizer_state(document, contents.tensors, optimizer, out_dir))
    except (ValueError, KeyError, TypeError) as error:  # torch's own checks of the restored optimizer state
        raise TrainingStateError(
            f"{out_dir}: the saved optimizer state does not fit this decoder's optimizer ({error}); {STATE_JSON} is "
            "damaged or from another run."
        ) from error
    logger.info("resumed training state from %s at step %d", out_dir, step)
    return TrainingState(step=step, document=document)


def read_state_document(out_dir: Path) -> dict[str, Any]:
    """Read and check ``training_state.json`` (format, version, step, tensors file, optimizer fields); reads no
    tensors, so the CLI runs it before loading any model.

    Raises:
        TrainingStateError: the file is missing, is not JSON, or lacks or mistypes a field.
    """
    json_path = out_dir / STATE_JSON
    if not json_path.is_file():
        raise TrainingStateError(
            f"cannot resume: expected {json_path} from an earlier run, found none. Point --out at the folder of "
            "that run, or start without --resume."
        )
    damaged = f"{json_path} is damaged"
    fix = "Restore it from a backup, or start a new run in another --out folder without --resume."
    try:
        document = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TrainingStateError(f"{damaged} ({error}); expected the JSON written by a training run. {fix}") from error
    if not isinstance(document, dict):
        raise TrainingStateError(f"{damaged}: expected a JSON object, got {type(document).__name__}. {fix}")
    if document.get("format") != STATE_FORMAT or document.get("version") != STATE_VERSION:
        raise TrainingStateError(
            f"{json_path}: expected format {STATE_FORMAT!r} version {STATE_VERSION}, got "
            f"{document.get('format')!r} version {document.get('version')!r}."
        )
    optimizer = document.get("optimizer")
    problems = []
    if isinstance(document.get("step"), bool) or not isinstance(document.get("step"), int) or document["step"] < 0:
        problems.append(f"'step' must be an integer >= 0, got {document.get('step')!r}")
    if document.get("tensors") != STATE_TENSORS:
        problems.append(f"'tensors' must be {STATE_TENSORS!r}, got {document.get('tensors')!r}")
    if not isinstance(optimizer, dict):
        problems.append(f"'optimizer' must be an object, got {type(optimizer).__name__}")
    else:
        if not isinstance(optimizer.get("class"), str):
            problems.append("'optimizer.class' must be a string")
        groups = optimizer.get("param_groups")
        if not isinstance(groups, list) or not all(isinstance(g, dict) and isinstance(g.get("params"), list)
                                                   for g in groups):
            problems.append("'optimizer.param_groups' must be a list of objects with 'params'")
        scalars = optimizer.get("scalar_state")
        if not isinstance(scalars, dict) or not all(k.isdigit() and isinstance(v, dict) for k, v in scalars.items()):
            problems.append("'optimizer.scalar_state' must map parameter indices to objects")
    if not isinstance(document.get("config", {}), dict):
        problems.append(f"'config' must be an object, got {type(document['config']).__name__}")
    if problems:
        raise TrainingStateError(f"{damaged}: {'; '.join(problems)}. {fix}")
    return document


def _optimizer_state(
    document: dict[str, Any], tensors: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, out_dir: Path
) -> dict[str, Any]:
    saved = document["optimizer"]
    if saved["class"] != type(optimizer).__name__:
        raise TrainingStateError(
            f"{out_dir}: saved optimizer is {saved['class']}, expected {type(optimizer).__name__}."
        )
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer/"):
            _, index, name = (key.split("/", 2) + ["", ""])[:3]
            if not index.isdigit() or not name:
                raise TrainingStateError(f"{out_dir}: {STATE_TENSORS} holds an unexpected tensor {key!r}.")
            state.setdefault(int(index), {})[name] = value
    for index, values in saved["scalar_state"].items():
        state.setdefault(int(index), {}).update(values)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, values in state.items():
        if index >= len(params):
            raise TrainingStateError(
                f"{out_dir}: optimizer state for parameter {index}, but the decoder has {len(params)}."
            )
        for name, value in values.items():
            if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape != params[index].shape:
                raise TrainingStateError(
                    f"{out_dir}: optimizer state {name} of parameter {index} has shape {tuple(value.shape)}, "
                    f"expected {tuple(params[index].shape)}; the saved run used another decoder."
                )
    groups = [
        {k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in group.items()}
        for group in saved["param_groups"]
    ]
    return {"state": state, "param_groups": groups}
