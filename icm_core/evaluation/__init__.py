"""Dataset evaluation: grouped in-context matting on an ICM-57-layout folder, with a written protocol.

>>> summary = evaluate_dataset(engine, "datasets/ICM57", "eval_out", EvaluationProtocol())  # doctest: +SKIP
>>> summary.overall_over_images.sad                                                          # doctest: +SKIP
"""

from __future__ import annotations

from ..io.datasets import (
    DatasetError,
    DatasetGroup,
    DatasetItem,
    MattingDataset,
    load_dataset,
    load_reference_choice,
    split_group,
)
from ..fit import center_square
from .evaluate import (
    EvaluationProtocol,
    EvaluationSummary,
    GroupResult,
    ImageResult,
    evaluate_dataset,
    mean_errors,
)
from .simulated_prompts import simulated_clicks, simulated_scribble

__all__ = [
    "DatasetError", "DatasetGroup", "DatasetItem", "EvaluationProtocol", "EvaluationSummary", "GroupResult",
    "ImageResult", "MattingDataset", "center_square", "evaluate_dataset", "load_dataset", "load_reference_choice",
    "mean_errors", "simulated_clicks", "simulated_scribble", "split_group",
]
