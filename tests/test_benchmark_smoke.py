"""The benchmark's official-style baseline must compute exactly what icm_core computes (keeps it honest).

Uses the models of ``python -m benchmarks.run --smoke`` (tiny SD 2.x-layout UNet/VAE, 128 px): a few seconds.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.run import AlphaMismatchError, Bench, parse_args


def _record_batch_sizes(module: torch.nn.Module, calls: list[int]):
    def hook(_module, args, kwargs):
        first = args[0] if args else next(value for value in kwargs.values() if isinstance(value, torch.Tensor))
        calls.append(first.shape[0])

    return module.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.fixture(scope="module")
def runs():
    """Both pipelines on the same 2 targets, with the batch size of every UNet / VAE / last-up-block call."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # steadier than 2 threads on a loaded 2-core machine; restored below
    try:
        bench = Bench(parse_args(["--smoke", "--micro-batch", "4"]))  # both smoke targets in one micro-batch
        models = bench.models
        result = {"bench": bench}
        for name, run in (("baseline", bench.run_baseline), ("ours", bench.run_ours)):
            calls = {"unet": [], "vae": [], "last_up_block": []}
            modules = {"unet": models.unet, "vae": models.vae.encoder, "last_up_block": models.unet.up_blocks[-1]}
            handles = [_record_batch_sizes(module, calls[key]) for key, module in modules.items()]
            try:
                result[name] = run(2)
            finally:
                for handle in handles:
                    handle.remove()
            result[name + "_calls"] = calls
        result["ours_other_seed"] = bench.run_ours(2, seed=1)
        yield result
    finally:
        torch.set_num_threads(threads)


def test_baseline_alphas_equal_icm_core_alphas(runs):
    bench, baseline, ours = runs["bench"], runs["baseline"], runs["ours"]
    assert len(baseline.alphas) == len(ours.alphas) == 2
    assert tuple(ours.alphas[0].shape) == tuple(bench.args.input_size)
    assert bench.compare(baseline, ours) <= 1e-4


def test_equality_check_is_not_blind(runs):
    bench, baseline, ours, other = runs["bench"], runs["baseline"], runs["ours"], runs["ours_other_seed"]
    assert float(ours.alphas[0].std()) > 0.02 and float(ours.alphas[0].min()) > 0.0  # soft, not saturated
    assert max(float((a - b).abs().max()) for a, b in zip(baseline.alphas, other.alphas)) > 1e-3
    with pytest.raises(AlphaMismatchError):
        bench.compare(baseline, other)


def test_baseline_does_the_official_work_and_icm_core_less(runs):
    ensemble = runs["bench"].args.ensemble
    baseline, ours = runs["baseline_calls"], runs["ours_calls"]
    # baseline, per target: the reference again, E identical copies through the VAE, the UNet to its last up block
    assert baseline == {"unet": [ensemble] * 4, "vae": [ensemble] * 4, "last_up_block": [ensemble] * 4}
    # icm_core: the reference once, one VAE pass per image, both targets in one UNet pass that stops early
    assert ours == {"unet": [ensemble, 2 * ensemble], "vae": [1, 2], "last_up_block": []}
