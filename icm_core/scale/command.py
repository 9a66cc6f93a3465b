"""``python -m icm_core matte-dataset``: the local ``matte`` job on Ray Data (a local cluster or ``--address``).

Every option and file is checked before Ray starts or a model loads (the checks of ``matte``: prompts, output
names and collisions, output-folder safety, existing outputs); a mistake is one ``error:`` line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..commands import checks
from ..commands import matte as local
from ..commands.options import add_extraction_options, add_precision_options
from ..commands.checks import CommandError
from ..image_io import set_max_image_pixels
from ..commands.matte_job import JobSettings, check_output_folder, existing_outputs, output_folder
from ..outputs import parse_color
from ..pipeline import RefinementConfig
from .inputs import collect_sources, input_folders
from .manifest import MANIFEST_NAME

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding icm_core/


def add_dataset_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "matte-dataset",
        help="matte a dataset on Ray Data (many processes/GPUs/machines); needs pip install .[scale]",
        description="Outputs and names as 'matte' (OUT/<kind>/<relative path>), plus OUT/manifest.parquet with one "
        "row per input. Inputs: folders, globs, list files (.txt, one path a line) or fsspec URIs.",
    )
    parser.add_argument("inputs", nargs="+", help="folders, image files, globs ('data/**/*.jpg'), list files, URIs")
    parser.add_argument("--sd", required=True, type=Path, help="SD 2.1: diffusers folder or single .safetensors/.ckpt")
    parser.add_argument("--decoder", required=True, type=Path, help="IconMatting decoder (.pth/.ckpt/.safetensors)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (shared by all workers)")
    local.add_reference_options(parser)
    local.add_output_options(parser)
    model = parser.add_argument_group("model")
    model.add_argument("--seed", type=checks.seed, default=0, help="noise seed in 0..2**64-1 (default 0)")
    add_extraction_options(model, ensemble_default=4)
    model.add_argument("--batch-size", type=checks.int_range(1), default=4, help="targets per UNet pass (default 4)")
    add_precision_options(model)
    cluster = parser.add_argument_group("cluster")
    cluster.add_argument("--address", default=None, help="an existing Ray cluster (ray://host:10001 or host:6379); "
                         "default: start a local one on this machine")
    cluster.add_argument("--actors", type=checks.int_range(1), default=None,
                         help="matting actors (default: one per GPU of the cluster, else 1)")
    cluster.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                         help="actor device: cuda = one GPU per actor (default auto: cuda when the cluster has GPUs)")
    cluster.add_argument("--cpus-per-actor", type=checks.positive_float, default=1.0, help="CPUs each actor holds")
    cluster.add_argument("--threads-per-actor", type=checks.int_range(1), default=1,
                         help="torch threads per actor (CPU matting; the same count as a local run gives the same bits)")
    cluster.add_argument("--decode-cpus", type=checks.positive_float, default=1.0, help="CPUs per decode task")
    cluster.add_argument("--retries", type=checks.int_range(0), default=3,
                         help="attempts after the first for a micro-batch whose actor dies (then listed as failed)")
    cluster.add_argument("--num-cpus", type=checks.int_range(1), default=None, help="CPUs of a local cluster")
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    parser.set_defaults(handler=run_dataset_command)


def _check_files(args: argparse.Namespace, kinds: tuple[str, ...]) -> list:
    """The output-safety checks of ``matte`` on the dataset's inputs; returns the sources."""
    sources = collect_sources(args.inputs)
    content = [*input_folders(args.inputs, sources), *(p for p in (args.reference, args.reference_mask) if p)]
    check_output_folder(args.out, content)
    weights = [p for p in (args.sd, args.decoder, args.context) if p is not None]
    for item in weights:
        if not item.exists():
            raise CommandError(f"{item} does not exist; expected the weights/context file or folder named there.")
    local.check_weights_outside(weights, args.out)
    existing = existing_outputs(args.out, sources, kinds)
    if (args.out / MANIFEST_NAME).exists():
        existing.append(args.out / MANIFEST_NAME)
    local.check_replacements(existing, args, [*content, *weights])
    return sources


def _settings(args: argparse.Namespace, kinds: tuple[str, ...]) -> JobSettings:
    return JobSettings(
        kinds=kinds, resume=args.resume, seed=args.seed, batch_size=args.batch_size, fit=args.fit,
        refinement=RefinementConfig() if args.refine else None,
        background=local._value(parse_color, args.background_color, "--background-color"),
        estimate_colors=not args.no_color_estimation,
    )  # fmt: skip


def run_dataset_command(args: argparse.Namespace) -> int:
    from . import ScaleDependencyError, require_ray
    from .cluster import connect, prepare_context, resources_for
    from .dataset import EngineSpec
    from .job import run_dataset

    try:
        ray = require_ray()  # first: a missing extra is the first thing a user hears about
    except ScaleDependencyError as error:
        raise CommandError(str(error)) from None
    kinds = local._kinds(args.save)
    settings = _settings(args, kinds)
    if args.max_image_pixels is not None:
        set_max_image_pixels(args.max_image_pixels)
    reference, mask, positive, negative, context = local._prompt(args)
    sources = _check_files(args, kinds)
    plan = local.MattePlan(kinds, (), settings, reference, mask, positive, negative, context)
    with output_folder(args.out), connect(ray, args.address, args.num_cpus, PACKAGE_ROOT):
        resources = resources_for(ray, args)
        spec = EngineSpec(
            str(args.sd), str(args.decoder), "cuda" if resources.gpus_per_actor else "cpu", args.dtype,
            args.timestep, args.ensemble, args.autocast, args.channels_last,
        )  # fmt: skip
        context = prepare_context(ray, spec, plan, args, resources)
        if args.save_context is not None:
            local._save_context(context, args.save_context, args.overwrite)
        from tqdm import tqdm

        with tqdm(total=len(sources), unit="image", desc="matting", dynamic_ncols=True) as bar:
            report = run_dataset(sources, context, spec, args.out, settings, resources, args.max_image_pixels,
                                 progress=bar.update)  # fmt: skip
    print(f"wrote {report.written}, skipped {report.skipped} (already done), failed {len(report.failed)}; "
          f"manifest: {report.manifest}")  # fmt: skip
    for location, reason in report.failed:
        print(f"  failed: {location}: {checks.one_line(reason)}", file=sys.stderr)
    return 1 if report.failed else 0
