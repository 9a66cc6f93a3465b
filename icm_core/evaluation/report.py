"""Evaluation reports: per-image CSV, per-group + overall tables as Markdown and JSON, all written atomically.

Files written into the output folder:

* ``per_image.csv`` -- one row per target: group, image, references (``;``-joined), sad, mse, grad, conn,
  seconds, plus metric_height / metric_width (the size the metrics were computed at).
* ``summary.md`` -- the protocol in words, then a table with one row per group (mean over its images) and two
  overall rows: **mean over images** (every target weighs the same) and **mean over groups** (the mean of the
  group rows; every group weighs the same).
* ``summary.json`` -- the same numbers, machine readable; its ``protocol`` holds every protocol field (prompt,
  references, fit, refinement, ...), the engine's ``image_size`` / ``ensemble_size`` / ``timestep`` and the
  protocol in words; each group also gives its number of reference tokens and, for simulated prompts, the clicks
  per reference (``prompt_points``, ``[x, y]`` pixels of the reference as given to the engine).

Targets that could not be evaluated are listed with the reason in both summaries (``failed`` in the JSON). While
the run goes, ``per_image.csv`` grows by one flushed row per evaluated target, so a crash keeps the finished rows;
at the end it is rewritten atomically with the same rows.

Units: SAD, Grad and Conn are divided by 1000 (standard); MSE is the raw mean squared error of alphas in [0, 1]
(papers often print MSE x 10^3).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from pathlib import Path

from ..config import ExtractionConfig
from ..io.file_safety import write_text_atomic
from ..metrics import MattingErrors
from .results import METRIC_NAMES, EvaluationProtocol, EvaluationSummary, ImageResult

CSV_NAME = "per_image.csv"
MARKDOWN_NAME = "summary.md"
JSON_NAME = "summary.json"
CSV_COLUMNS = ("group", "image", "references", *METRIC_NAMES, "seconds", "metric_height", "metric_width")

RESOLUTION_TEXT = {
    "official": (
        "official: image, alpha, trimap and reference centre-cropped to a min(H, W) square (as the official "
        "evaluation), resized to the model size by the pipeline and the alpha resized back; metrics on the square crop"
    ),
    "original": (
        "original: whole image stretched to the model size by the pipeline and the alpha resized back; metrics at "
        "the original image size"
    ),
}
REGION_TEXT = {
    "whole": "whole: all pixels",
    "unknown": "unknown: trimap pixels equal to 128 only",
}


PROMPT_TEXT = {
    "mask": "mask: the reference's ground-truth alpha, binarised at 0.5",
    "points": "points: {n} simulated click(s) per reference from its ground-truth alpha (deepest pixel inside "
    "alpha > 0.5, then farthest-point sampling over pixels at least half as deep), expanded by self-attention "
    "with top_m={m}",
    "scribble": "scribble: a simulated stroke (width max(3, min(H, W) // 100) px) through {n} simulated click(s), "
    "ordered along the object's principal axis and clipped to alpha > 0.5, expanded by self-attention with "
    "top_m={m}",
}
FIT_TEXT = {
    "stretch": "stretch: resized to the model's square ignoring the aspect ratio",
    "pad": "pad: longer side to the model size, the rest padded with the image's mean colour",
    "crop": "crop: shorter side to the model size, centre-cropped; alpha outside the crop is 0",
}


def protocol_description(protocol: EvaluationProtocol, extraction: ExtractionConfig | None = None) -> dict[str, str]:
    """The protocol in words (written into both the Markdown and the JSON report); ``extraction``: the engine's."""
    described = {
        "resolution": RESOLUTION_TEXT[protocol.resolution],
        "region": REGION_TEXT[protocol.region],
        "references": _references_text(protocol),
        "reference_roi": PROMPT_TEXT[protocol.prompt].format(n=protocol.num_points, m=protocol.top_m),
        "fit": FIT_TEXT[protocol.fit]
        + ("; the official square crops make every fit the same" if protocol.resolution == "official" else ""),
        "refinement": "guided filter at full resolution (RefinementConfig())" if protocol.refine else "none",
        "seed": str(protocol.seed),
        "batch_size": str(protocol.batch_size),
    }
    if extraction is not None:
        described["engine"] = (
            f"image size {extraction.image_size} px, ensemble of {extraction.ensemble_size}, "
            f"timestep {extraction.timestep}"
        )
    described["seconds"] = (
        "matting wall time per image (micro-batch time split evenly), without reading, reference encoding or metrics"
    )
    described["units"] = "SAD, Grad, Conn divided by 1000; MSE raw (alphas in [0, 1])"
    return described


def _references_text(protocol: EvaluationProtocol) -> str:
    if protocol.references_file:
        chosen = f"from {protocol.references_file} (groups it does not name: first image by name)"
    elif protocol.num_references > 1:
        chosen = f"first {protocol.num_references} images of each group by name (one context from all of them)"
    else:
        chosen = "first image of each group by name"
    return chosen + "; references are not evaluated as targets; several references = concatenated tokens"


def protocol_to_json(protocol: EvaluationProtocol, extraction: ExtractionConfig | None) -> dict:
    """Every protocol field, the engine's extraction settings and the protocol in words."""
    return {
        "resolution": protocol.resolution,
        "region": protocol.region,
        "references_file": None if protocol.references_file is None else str(protocol.references_file),
        "groups_file": None if protocol.groups_file is None else str(protocol.groups_file),
        "seed": protocol.seed,
        "batch_size": protocol.batch_size,
        "prompt": protocol.prompt,
        "num_points": protocol.num_points,
        "top_m": protocol.top_m,
        "num_references": protocol.num_references,
        "fit": protocol.fit,
        "refine": protocol.refine,
        "engine": None if extraction is None else dataclasses.asdict(extraction),
        "description": protocol_description(protocol, extraction),
    }


def write_reports(summary: EvaluationSummary, out_dir: Path) -> dict[str, Path]:
    """Write the CSV, Markdown and JSON reports; returns ``{"csv", "markdown", "json"}`` paths."""
    return {
        "csv": write_text_atomic(render_csv(summary), out_dir / CSV_NAME),
        "markdown": write_text_atomic(render_markdown(summary), out_dir / MARKDOWN_NAME),
        "json": write_text_atomic(json.dumps(summary_to_json(summary), indent=2) + "\n", out_dir / JSON_NAME),
    }


def csv_line(row: list[object] | tuple[object, ...]) -> str:
    """One CSV line (``\n``-terminated) of a header or a row."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(row)
    return buffer.getvalue()


def csv_row(result: ImageResult) -> list[object]:
    errors = result.errors
    return (
        [result.group, result.image, ";".join(result.references)]
        + [repr(getattr(errors, name)) for name in METRIC_NAMES]
        + [f"{result.seconds:.6f}", result.metric_size[0], result.metric_size[1]]
    )


def render_csv(summary: EvaluationSummary) -> str:
    return csv_line(CSV_COLUMNS) + "".join(csv_line(csv_row(result)) for result in summary.images)


class RowWriter:
    """``per_image.csv`` written as the run goes: the header at once, then each row in one write, flushed and
    synced, so a crash keeps every finished row (whole lines only)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stream = None

    def __enter__(self) -> "RowWriter":
        self._stream = self.path.open("w", encoding="utf-8", newline="")
        self._append(csv_line(CSV_COLUMNS))
        return self

    def write(self, result: ImageResult) -> None:
        self._append(csv_line(csv_row(result)))

    def _append(self, line: str) -> None:
        self._stream.write(line)
        self._stream.flush()
        os.fsync(self._stream.fileno())

    def __exit__(self, *exc_info: object) -> None:
        self._stream.close()


def render_markdown(summary: EvaluationSummary) -> str:
    lines = [
        "# IconMatting evaluation",
        "",
        f"- dataset: `{summary.dataset_root}`",
        f"- engine fingerprint: `{summary.engine_fingerprint}`",
    ]
    lines += [f"- {key}: {value}" for key, value in protocol_description(summary.protocol, summary.extraction).items()]
    if summary.skipped_groups:
        lines.append(f"- skipped groups ({skipped_reason(summary.protocol)}): {', '.join(summary.skipped_groups)}")
    if summary.failures:
        lines.append(f"- **not evaluated: {len(summary.failures)} target(s)** (listed below)")
    lines += [
        "",
        "| group | references | images | SAD | MSE | Grad | Conn | s/image |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for group in summary.groups:
        lines.append(_row(group.name, ", ".join(group.references), group.num_images, group.mean, group.seconds))
    if summary.overall_over_images is not None:
        seconds = sum(r.seconds for r in summary.images) / len(summary.images)
        lines.append(
            _row("**overall (mean over images)**", "", len(summary.images), summary.overall_over_images, seconds)
        )
    if summary.overall_over_groups is not None:
        group_seconds = sum(g.seconds for g in summary.groups) / len(summary.groups)
        lines.append(
            _row("**overall (mean over groups)**", "", len(summary.groups), summary.overall_over_groups, group_seconds)
        )
    lines += [
        "",
        "Overall rows: *mean over images* averages the per-image metrics of all targets; *mean over groups* averages "
        "the group rows (its `images` column counts groups).",
        "",
    ]
    if summary.failures:
        lines += ["## Not evaluated", "", "| group | image | reason |", "|---|---|---|"]
        lines += [f"| {f.group} | {f.image} | {_cell(f.reason)} |" for f in summary.failures]
        lines.append("")
    return "\n".join(lines)


def skipped_reason(protocol: EvaluationProtocol) -> str:
    """Why a group was skipped (it kept no target once its references were taken)."""
    if protocol.num_references > 1:
        return f"{protocol.num_references} images or fewer, all taken as references"
    return "no target besides the reference(s)"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def summary_to_json(summary: EvaluationSummary) -> dict:
    return {
        "dataset_root": str(summary.dataset_root),
        "engine_fingerprint": summary.engine_fingerprint,
        "protocol": protocol_to_json(summary.protocol, summary.extraction),
        "groups": [
            {
                "name": group.name,
                "references": list(group.references),
                "images": group.num_images,
                **group.mean.as_dict(),
                "seconds_per_image": group.seconds,
                "reference_seconds": group.reference_seconds,
                "reference_tokens": group.reference_tokens,
                "prompt_points": [[list(point) for point in points] for points in group.prompt_points],
            }
            for group in summary.groups
        ],
        "overall_mean_over_images": _overall("images", len(summary.images), summary.overall_over_images),
        "overall_mean_over_groups": _overall("groups", len(summary.groups), summary.overall_over_groups),
        "skipped_groups": list(summary.skipped_groups),
        "skipped_groups_reason": skipped_reason(summary.protocol),
        "failed": [{"group": f.group, "image": f.image, "reason": f.reason} for f in summary.failures],
    }


def _overall(label: str, count: int, errors: MattingErrors | None) -> dict | None:
    return None if errors is None else {label: count, **errors.as_dict()}


def _row(name: str, references: str, count: int, errors: MattingErrors, seconds: float) -> str:
    return (
        f"| {name} | {references} | {count} | {errors.sad:.4f} | {errors.mse:.6f} | {errors.grad:.4f} | "
        f"{errors.conn:.4f} | {seconds:.3f} |"
    )
