"""Markdown report of a benchmark run; written between markers so the hand-written analysis around it stays."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from .timing import STAGES

BEGIN, END = "<!-- benchmark-results:begin -->", "<!-- benchmark-results:end -->"
MIB = 1024**2


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    parts = [f"{model}, {os.cpu_count()} logical cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"]
    try:
        import diffusers

        parts.append(f"diffusers {diffusers.__version__}")
    except ImportError:
        pass
    if torch.cuda.is_available():
        parts.append(torch.cuda.get_device_name(0))
    parts.append(f"Python {platform.python_version()}")
    return ", ".join(parts)


def _targets_verdicts(result: dict) -> list[str]:
    args, rows = result["args"], result["rows"]
    by_count = {row.targets: row for row in rows}
    lines = []
    if 8 in by_count and args.dtype == "fp32":
        ratio = by_count[8].ours_tps() / by_count[8].baseline_tps()
        verdict = "met" if ratio >= 3.0 else "NOT met"
        lines.append(f"- >= 3x the baseline's targets/s, fp32, 8 targets: **{verdict}** (x{ratio:.2f}, {args.device}).")
    else:
        lines.append("- >= 3x at 8 targets in fp32: not measured in this run (needs `--dtype fp32` and 8 targets).")
    if 1 in by_count and 64 in by_count:
        one, many = by_count[1].peak("ours"), by_count[64].peak("ours")
        growth = many[0] / one[0] - 1
        growth_working = many[1] / max(one[1], 1) - 1
        verdict = "met" if growth_working <= 0.10 else "NOT met"
        line = (
            f"- working memory (peak minus what the process held before the call) of 64 targets within 10% of 1 "
            f"target: **{verdict}** ({many[1] / MIB:,.0f} vs {one[1] / MIB:,.0f} MiB, {growth_working:+.1%}); the "
            f"peak {_memory_name(args)}, which also counts the weights and inputs, {many[0] / MIB:,.0f} vs "
            f"{one[0] / MIB:,.0f} MiB ({growth:+.1%})."
        )
        if 8 in by_count:
            eight = by_count[8].peak("ours")
            if args.micro_batch > 1:
                line += f" icm_core runs micro-batches of {args.micro_batch} targets, which 1 target does not fill;"
            line += (
                f" 64 vs 8 targets: working {many[1] / MIB:,.0f} vs {eight[1] / MIB:,.0f} MiB "
                f"({many[1] / max(eight[1], 1) - 1:+.1%}), peak {many[0] / MIB:,.0f} vs {eight[0] / MIB:,.0f} MiB."
            )
        lines.append(line)
    else:
        lines.append("- peak memory 64 vs 1 target: not measured in this run.")
    if args.device == "cuda" and args.dtype != "fp32" and 8 in by_count:
        ratio = by_count[8].ours_tps() / by_count[8].baseline_tps()
        lines.append(f"- >= 6x on GPU with {args.dtype} (8 targets): **{'met' if ratio >= 6 else 'NOT met'}** "
                     f"(x{ratio:.2f} against the fp32 baseline).")
    else:
        lines.append("- >= 6x on GPU with bf16/fp16: not measured in this run (no CUDA device / fp32).")
    return lines


def _precision_split(rows: list, dtype: str) -> list[str]:
    """The speed-up split into what precision gives (baseline at ``dtype`` vs fp32) and what the algorithm gives
    (icm_core vs the baseline at the same ``dtype``)."""
    lines = [
        f"The same official-style baseline at {dtype} (bf16 runs as fp16) separates the two gains:",
        "",
        f"| targets | baseline fp32 targets/s | baseline {dtype} targets/s | icm_core {dtype} targets/s | "
        f"precision (baseline {dtype} / fp32) | algorithm (icm_core / baseline {dtype}) | total |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        base, reduced, ours = row.baseline_tps(), row.baseline_reduced_tps(), row.ours_tps()
        lines.append(
            f"| {row.targets} | {base:.4f} | {reduced:.4f} | {ours:.4f} | x{reduced / base:.2f} | "
            f"x{ours / reduced:.2f} | x{ours / base:.2f} |"
        )
    return lines


def _memory_name(args) -> str:
    return "CUDA memory allocated" if args.device == "cuda" else "resident set size (RSS)"


def render(result: dict) -> str:
    args, rows = result["args"], result["rows"]
    unet, vae = result["unet_config"], result["vae_config"]
    stats = result["alpha_stats"]
    out = [
        f"Machine: {machine()}.",
        "",
        f"Settings: `--device {args.device} --dtype {args.dtype} "
        f"{'--smoke' if args.smoke else f'--width-multiplier {args.width_multiplier:g}'}"
        f"{' --keep-heads' if args.keep_heads else ''}`; image {args.image_size} px (inputs {args.input_size[0]}x"
        f"{args.input_size[1]} px, stretched to the square and restored), ensemble E = {args.ensemble}, t = 200, "
        f"icm_core micro-batch {args.micro_batch}, seed {args.seed}. UNet `block_out_channels` "
        f"{unet['block_out_channels']}, heads {unet['attention_head_dim']}, GroupNorm groups "
        f"{unet['norm_num_groups']}, cross-attention dim {unet['cross_attention_dim']}; VAE `block_out_channels` "
        f"{vae['block_out_channels']} (groups {vae['norm_num_groups']}). Random weights; the decoder's BatchNorm "
        f"statistics are calibrated on one target so alpha is not saturated (alpha mean {stats['mean']:.3f}, std "
        f"{stats['std']:.3f}, {stats['soft_fraction']:.0%} of pixels in (0.01, 0.99)). Total wall time "
        f"{result['wall_seconds'] / 60:.1f} min.",
        "",
        "| targets | baseline targets/s | icm_core targets/s | speed-up | speed-up in CPU time | baseline peak "
        f"{'GPU' if args.device == 'cuda' else 'RSS'} (working) | icm_core peak (working) | max abs alpha diff |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        base_peak, ours_peak = row.peak("baseline"), row.peak("ours")
        capped = "*" if row.baseline_targets != row.targets else ""
        repeats = f" (median of {len(row.ours)})" if len(row.ours) > 1 else ""
        out.append(
            f"| {row.targets}{repeats} | {row.baseline_tps():.4f}{capped} | {row.ours_tps():.4f} | "
            f"**x{row.ours_tps() / row.baseline_tps():.2f}** | x{row.cpu_ratio():.2f} | {base_peak[0] / MIB:,.0f} MiB "
            f"({base_peak[1] / MIB:,.0f}){capped} | {ours_peak[0] / MIB:,.0f} MiB ({ours_peak[1] / MIB:,.0f}) | "
            f"{row.max_abs_diff:.1e} |"
        )
    if rows and rows[0].baseline_reduced:
        out += ["", *_precision_split(rows, args.dtype)]
    if any(row.baseline_targets != row.targets for row in rows):
        out.append("")
        out.append(
            f"\\* baseline measured on the first {args.baseline_max_targets} targets (`--baseline-max-targets`): "
            "it mattes targets one at a time and keeps nothing between them, so its targets/s and peak memory do "
            "not depend on the count; icm_core is measured on every target."
        )
    out += [
        "",
        "Seconds per target by stage (medians; `unet` excludes `attention`, which is the core of the captured "
        "self-attention layers incl. recording the maps):",
        "",
        "| targets | pipeline | " + " | ".join(STAGES) + " | total |",
        "|---:|---|" + "---:|" * (len(STAGES) + 1),
    ]
    for row in rows:
        for which in ("baseline", "ours"):
            stages = row.stages_per_target(which)
            name = "baseline" if which == "baseline" else "icm_core"
            out.append(
                f"| {row.targets} | {name} | " + " | ".join(f"{stages[s]:.3f}" for s in STAGES)
                + f" | {sum(stages.values()):.3f} |"
            )
    worst = max(row.max_abs_diff for row in rows)
    if args.dtype == "fp32":
        check = f"max abs alpha difference <= {result['tolerance']:g} required (fp32); passed, worst {worst:.1e}."
    else:
        verdict = "within" if worst <= result["tolerance"] else "OUTSIDE"
        check = (f"{args.dtype} icm_core vs fp32 baseline, worst max abs alpha difference {worst:.1e} ({verdict} "
                 f"the loose bound {result['tolerance']:g}; only fp32 is checked strictly).")
    out += ["", f"Equality check: {check}", ""]
    out += ["Speed and memory targets, in this run:", ""] + _targets_verdicts(result)
    return "\n".join(out)


def replace_block(path: Path, begin: str, end: str, text: str) -> None:
    """Put ``text`` between the ``begin``/``end`` markers of ``path`` (appending the block if they are missing)."""
    block = f"{begin}\n{text}\n{end}"
    existing = path.read_text() if path.exists() else "# Benchmarks\n"
    if begin in existing and end in existing:
        before, rest = existing.split(begin, 1)
        path.write_text(before + block + rest.split(end, 1)[1])
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(existing.rstrip("\n") + "\n\n" + block + "\n")


def write_report(result: dict, path: Path | None) -> str:
    """Render; if ``path`` is given, put the text between the result markers (creating the file if needed)."""
    text = render(result)
    if path is not None:
        replace_block(Path(path), BEGIN, END, text)
    return text
