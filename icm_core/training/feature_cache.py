"""On-disk cache of the frozen SD features of training images, so later epochs skip the VAE and UNet.

The features of an image depend on its pixels (image file + crop), the noise seed and the frozen model; the
decoder being trained does not enter. A cache entry is one ``.safetensors`` file in the cache folder named by
``sha256(kind, resolved image path, file size + mtime, crop, feature fingerprint, seed)``, where the feature
fingerprint hashes the SD weights, the extraction config (timestep, ensemble, size) and the UNet dtype
(:func:`feature_fingerprint`).

* ``kind="target"`` entries hold ``low``, ``high``, ``attention_low``, ``attention_high`` of one cropped image.
* ``kind="reference"`` entries hold ``high`` (``[C, g, g]``) of one stretched reference; tokens are selected
  from it with the reference's token mask.

Random crops change every step, so the trainer only caches with fixed crops (the crop and noise seed of an image
are then the same every epoch); see :mod:`.data`. Entries are written atomically; an unreadable entry is
recomputed and rewritten (logged).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from ..config import ExtractionConfig, config_fingerprint
from ..features.backend import FeatureBackend
from ..types import UNetFeatures
from ..weights.checkpoint_io import CheckpointError, read_checkpoint, write_safetensors_atomic

logger = logging.getLogger(__name__)

TARGET_FIELDS = ("low", "high", "attention_low", "attention_high")


def feature_fingerprint(backend: FeatureBackend, extraction: ExtractionConfig) -> str:
    """Identifies everything the frozen features depend on besides the image, crop and seed.

    For a diffusers-style backend (``unet``, ``vae`` modules and a ``prompt`` tensor) it hashes the parameter
    names, shapes and first values of every parameter, which is stable across processes; other backends use
    their own ``fingerprint()``.
    """
    modules = [getattr(backend, name, None) for name in ("unet", "vae")]
    if all(isinstance(module, torch.nn.Module) for module in modules):
        source = [_weights_digest(module) for module in modules]
        prompt = getattr(backend, "prompt", None)
        if isinstance(prompt, torch.Tensor):
            source.append(_tensor_digest(prompt))
    else:
        source = [backend.fingerprint()]
    return config_fingerprint(*source, extraction, str(backend.dtype))


def _tensor_digest(tensor: torch.Tensor, limit: int = 4096) -> str:
    sample = tensor.detach().flatten()[:limit].float().cpu().numpy().tobytes()
    return hashlib.sha256(str(tuple(tensor.shape)).encode() + sample).hexdigest()[:16]


def _weights_digest(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, parameter in sorted(module.named_parameters()):
        digest.update(name.encode())
        digest.update(_tensor_digest(parameter).encode())
    return digest.hexdigest()[:16]


class FeatureCache:
    """Stores and returns per-image frozen features (CPU tensors, in the dtype the backend produced them).

    Args:
        folder: cache folder (created).
        fingerprint: :func:`feature_fingerprint` of the engine the features come from.
    """

    def __init__(self, folder: str | Path, fingerprint: str) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.fingerprint = fingerprint
        self.hits = 0
        self.misses = 0

    def key(self, kind: str, image: Path, crop: str, seed: int) -> str:
        """The entry name of ``(kind, image file, crop, seed)`` under this cache's fingerprint."""
        stat = image.stat()
        payload = [kind, str(image.resolve()), stat.st_size, stat.st_mtime_ns, crop, self.fingerprint, int(seed)]
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:40]

    def load_target(self, key: str) -> UNetFeatures | None:
        """Features ``[1, ...]`` of one target, or None on a miss."""
        tensors = self._read(key, TARGET_FIELDS)
        if tensors is None:
            return None
        return UNetFeatures(**{name: tensors[name][None] for name in TARGET_FIELDS})

    def save_target(self, key: str, features: UNetFeatures, index: int, description: str) -> None:
        """Store image ``index`` of a features batch."""
        tensors = {name: getattr(features, name)[index] for name in TARGET_FIELDS}
        self._write(key, tensors, "target", description)

    def load_reference(self, key: str) -> torch.Tensor | None:
        """``[C, g, g]`` high features of one reference, or None on a miss."""
        tensors = self._read(key, ("high",))
        return None if tensors is None else tensors["high"]

    def save_reference(self, key: str, high: torch.Tensor, description: str) -> None:
        self._write(key, {"high": high}, "reference", description)

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.safetensors"

    def _read(self, key: str, fields: tuple[str, ...]) -> dict[str, torch.Tensor] | None:
        path = self._path(key)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            contents = read_checkpoint(path)
        except CheckpointError as error:
            logger.warning("feature cache entry %s is unreadable (%s); recomputing it", path.name, error)
            self.misses += 1
            return None
        if contents.metadata.get("fingerprint") != self.fingerprint or any(f not in contents.tensors for f in fields):
            logger.warning("feature cache entry %s does not match this model; recomputing it", path.name)
            self.misses += 1
            return None
        self.hits += 1
        return contents.tensors

    def _write(self, key: str, tensors: dict[str, torch.Tensor], kind: str, description: str) -> None:
        metadata = {"kind": kind, "fingerprint": self.fingerprint, "source": description}
        write_safetensors_atomic({k: v.detach().cpu().clone() for k, v in tensors.items()}, self._path(key), metadata)
