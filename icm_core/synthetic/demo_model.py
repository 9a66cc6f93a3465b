"""The small demo model: the tiny constructed feature extractor + a decoder trained on procedural scenes.

No real weights can ship with the package, so the demo (``python -m icm_core demo``) runs this model when the real
SD 2.1 + IconMatting weights are absent. It mattes the synthetic scenes of :mod:`.scenes` in context: the
reference's category, not the distractors of other categories next to it (measured in ``docs/quality.md``: a
reference of the wrong category makes it several times worse). It knows nothing about photographs and its quality
says nothing about IconMatting's.

* Feature extractor: :func:`icm_core.synthetic.demo_extractor.build_demo_backend` (seed 0; the tiny SD 2.1 block
  layout with constructed weights that keep colour and texture per token), rebuilt on every load;
  :data:`BACKEND_FINGERPRINT` pins it, so a torch or diffusers release that builds it differently gives a clear
  error instead of meaningless mattes.
* Decoder: ``icm_core/assets/demo_decoder.safetensors`` (~1.6 MB), trained by the project's own ``train`` command
  (:data:`RECIPE`): ``python -m icm_core.synthetic.demo_model --work DIR`` renders the training scenes, trains and
  writes ``DIR/demo_decoder.safetensors`` (``--install`` replaces the shipped file).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import ExtractionConfig
from ..pipeline import IconMatting
from ..weights.decoder import load_decoder
from .datasets import SyntheticSplit, write_synthetic_dataset

logger = logging.getLogger(__name__)

DEMO_DECODER = Path(__file__).resolve().parents[1] / "assets" / "demo_decoder.safetensors"
DEMO_NOTICE = (
    "No real weights found in {models_dir}: running the SMALL DEMO MODEL trained on synthetic scenes (a tiny "
    "SD-layout feature extractor + a decoder trained on procedural shapes). It mattes the demo scenes only and "
    "says nothing about IconMatting's quality; install the real weights for photos (README, 'Weights')."
)
# feature_fingerprint of build_demo_backend(seed=0) at 128 px, ensemble 2 (what the shipped decoder was trained on)
BACKEND_FINGERPRINT = "9d7f8acec74250c1"


@dataclass(frozen=True)
class DemoRecipe:
    """How the shipped demo decoder is made (the arguments of ``python -m icm_core train``).

    Attributes:
        split: the training scenes (160 per category at 128 px, seeds 0..159; held-out sets use seeds >= 10000).
        steps, batch_size, learning_rate, warmup_steps, cooldown_steps, seed: training settings (constant rate
            after the warm-up, then falling linearly to ~0 over the last ``cooldown_steps``).
        threads: torch CPU threads while training: one thread gives the same sums on every machine, and these
            tiny models gain little from more (on a busy machine, spinning threads make it several times slower).
    """

    split: SyntheticSplit = SyntheticSplit(160, size=128, first_seed=0, references=0, reference_every=3)
    steps: int = 3000
    batch_size: int = 4
    learning_rate: float = 1e-3
    warmup_steps: int = 30
    cooldown_steps: int = 1500
    seed: int = 0
    threads: int = 1

    def train_arguments(self, dataset: Path, run: Path, cache: Path) -> list[str]:
        """``python -m icm_core`` arguments that train the decoder (demo extractor, fixed crops, feature cache)."""
        return [
            "train", str(dataset), "--tiny", "--tiny-extractor", "demo", "--out", str(run), "--steps", str(self.steps),
            "--batch-size", str(self.batch_size), "--lr", str(self.learning_rate),
            "--warmup-steps", str(self.warmup_steps),
            "--cooldown-steps", str(self.cooldown_steps), "--seed", str(self.seed),
            "--fixed-crops", "--cache-dir", str(cache), "--checkpoint-every", str(self.steps),
        ]  # fmt: skip


RECIPE = DemoRecipe()


class DemoModelError(RuntimeError):
    """The shipped demo decoder is missing or does not belong to this feature extractor."""


def load_demo_engine(device: str | torch.device = "cpu", decoder_path: Path = DEMO_DECODER) -> IconMatting:
    """The demo engine: the constructed demo extractor (128 px, ensemble 2) + the trained demo decoder.

    Raises:
        DemoModelError: the decoder file is missing, or the rebuilt backend is not the one it was trained on.
    """
    from ..training.feature_cache import feature_fingerprint
    from .demo_extractor import build_demo_backend

    if not decoder_path.is_file():
        raise DemoModelError(
            f"the demo decoder {decoder_path} is missing; reinstall the package or regenerate it with "
            "`python -m icm_core.synthetic.demo_model --work DIR --install`."
        )
    decoder = load_decoder(decoder_path)
    backend = build_demo_backend(seed=0, device=device)
    extraction = ExtractionConfig(ensemble_size=2, image_size=decoder.config.image_size)
    found = feature_fingerprint(backend, extraction)
    if found != BACKEND_FINGERPRINT:
        raise DemoModelError(
            f"this torch/diffusers version builds the tiny demo feature extractor differently (fingerprint {found},"
            f" the demo decoder was trained on {BACKEND_FINGERPRINT}); its mattes would be meaningless. Regenerate "
            "the demo decoder: `python -m icm_core.synthetic.demo_model --work DIR --install`."
        )
    return IconMatting(backend, decoder, extraction)


def regenerate(work: Path, recipe: DemoRecipe = RECIPE) -> Path:
    """Render the training scenes, train with the ``train`` command and return ``work/demo_decoder.safetensors``.

    ``work`` must not exist yet (nothing of the user's is touched); it keeps the dataset, feature cache and run.
    """
    from ..commands.cli import main

    work = Path(work)
    if work.exists():
        raise FileExistsError(f"{work} already exists; choose a new folder for the demo model's training run.")
    dataset, run = work / "scenes", work / "run"
    write_synthetic_dataset(dataset, recipe.split)
    threads = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    try:
        code = main(recipe.train_arguments(dataset, run, work / "feature_cache"))
    finally:
        torch.set_num_threads(threads)
    if code != 0:
        raise RuntimeError(f"training the demo decoder failed (exit code {code}); see the messages above.")
    result = work / DEMO_DECODER.name
    shutil.copyfile(run / "decoder.safetensors", result)
    return result


def weights_digest(path: Path) -> str:
    """SHA-256 of a ``.safetensors`` file's tensors (sorted names, dtypes, shapes, bytes), header metadata excluded.

    Two regenerations give bit-identical tensors, but the safetensors writer may order the header's metadata
    differently from one process to the next, so compare this digest, not the file's.
    """
    from ..weights.checkpoint_io import read_checkpoint

    digest = hashlib.sha256()
    for name, tensor in sorted(read_checkpoint(path).tensors.items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _shipped_digest() -> str:
    """The shipped decoder's :func:`weights_digest`, or why there is none (a damaged file is a reason to regenerate)."""
    from ..weights.checkpoint_io import CheckpointError

    try:
        return weights_digest(DEMO_DECODER)
    except CheckpointError as error:
        return f"unreadable ({error})"


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m icm_core.synthetic.demo_model",
        description="Regenerate the shipped demo decoder: render the training scenes and train with `train`.",
    )
    parser.add_argument("--work", type=Path, required=True, help="new folder for scenes, feature cache and run")
    parser.add_argument("--install", action="store_true", help=f"then replace the shipped {DEMO_DECODER.name}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = regenerate(args.work, RECIPE)
    logger.info("wrote %s (weights digest %s; shipped decoder: %s)", result, weights_digest(result), _shipped_digest())
    if args.install:  # copy next to the shipped file, then rename: never a half-written decoder
        staged = DEMO_DECODER.with_name(f".{DEMO_DECODER.name}.installing")
        shutil.copyfile(result, staged)
        staged.replace(DEMO_DECODER)
        logger.info("installed it as %s", DEMO_DECODER)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
