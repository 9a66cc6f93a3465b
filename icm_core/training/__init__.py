"""Decoder fine-tuning on reference/target pairs of an ICM-57-layout folder (the SD backend stays frozen).

>>> result = train_decoder(engine, "datasets/train", "runs/ft", TrainingConfig(steps=2000))  # doctest: +SKIP
>>> decoder = load_decoder(result.checkpoint)                                                # doctest: +SKIP
"""

from __future__ import annotations

from .data import CropBox, PairSampler, StepPlan
from .feature_cache import FeatureCache, feature_fingerprint
from .losses import (
    LossWeights,
    gradient_loss,
    is_binary_alpha,
    l1_loss,
    laplacian_loss,
    laplacian_pyramid,
    segmentation_loss,
    uncertain_band,
)
from .state import TrainingStateError, load_training_state, save_training_state
from .trainer import StepLog, TrainingConfig, TrainingResult, cooldown_factor, train_decoder, warmup_factor

__all__ = [
    "CropBox", "FeatureCache", "LossWeights", "PairSampler", "StepLog", "StepPlan", "TrainingConfig",
    "TrainingResult", "TrainingStateError", "feature_fingerprint", "gradient_loss", "is_binary_alpha", "l1_loss",
    "laplacian_loss", "laplacian_pyramid", "load_training_state", "save_training_state", "segmentation_loss",
    "train_decoder", "uncertain_band", "warmup_factor", "cooldown_factor",
]
