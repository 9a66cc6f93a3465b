"""Every benchmark entry point runs end to end with tiny settings and writes what docs/benchmarks.md shows.

``python -m benchmarks.run`` / ``flops`` / ``precision`` / ``output_memory`` are called through their ``main`` with
the smallest settings each offers, so a change in icm_core that breaks a benchmark fails here, not when the
benchmark document is next regenerated.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks import flops, output_memory, precision, report, run


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _document(tmp_path, *blocks):
    path = tmp_path / "benchmarks.md"
    path.write_text("# Benchmarks\n\nhand-written text\n\n" + "\n\n".join(f"{begin}\nold\n{end}" for begin, end in blocks))
    return path


def test_run_fp32_writes_its_block_and_checks_equality(tmp_path, one_thread, capsys):
    document = _document(tmp_path, (report.BEGIN, report.END))
    assert run.main(["--smoke", "--targets", "1", "--out", str(document)]) == 0
    text = document.read_text()
    assert "hand-written text" in text and "\nold\n" not in text
    assert "| 1 (median of 1) |" not in text and "| 1 |" in text
    assert "Equality check: max abs alpha difference <= 0.0001 required (fp32); passed" in text


def test_run_reduced_precision_reports_the_baseline_at_that_precision(one_thread, capsys):
    assert run.main(["--smoke", "--targets", "1", "--dtype", "fp16"]) == 0
    text = capsys.readouterr().out
    assert "The same official-style baseline at fp16 (bf16 runs as fp16) separates the two gains:" in text
    row = next(line for line in text.splitlines() if line.startswith("| 1 | ") and line.count("| x") == 3)
    base, reduced, ours, precision_gain, algorithm_gain, total = (
        float(cell.strip().lstrip("x")) for cell in row.strip("|").split("|")[1:]
    )
    assert precision_gain == pytest.approx(reduced / base, abs=0.01)
    assert algorithm_gain == pytest.approx(ours / reduced, abs=0.01)
    assert total == pytest.approx(ours / base, abs=0.01)


def test_flops_on_the_meta_device(tmp_path):
    document = _document(tmp_path, (flops.BEGIN, flops.END))
    args = ["--width-multiplier", "0.125", "--image-size", "128", "--targets", "1", "2", "--out", str(document)]
    assert flops.main(args) == 0
    lines = [line for line in document.read_text().splitlines() if line.startswith("| icm_core |")]
    assert [line.split("|")[2].strip() for line in lines] == ["1", "2"]
    ratios = [float(line.rstrip(" |").rsplit("x", 1)[1]) for line in lines]
    assert 1.0 < ratios[0] < ratios[1]  # the reference is encoded once: more targets, less work per target


def test_precision_on_the_golden(golden_dir, one_thread, capsys):
    assert precision.main(["--repeats", "1", "--golden", str(golden_dir)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and " x" in line]
    assert [row.split("|")[1].strip() for row in rows] == list(precision.MODES)
    assert rows[0].split("|")[2].strip() == "0.0e+00 / 0.0e+00"  # fp32 against itself


def test_output_memory_at_a_tiny_size(capsys):
    assert output_memory.main(["--sizes", "48x64"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 48x64 64x48 |")]
    assert [row.split("|")[2].strip() for row in rows] == ["foreground", "rgba", "composite", "all four"]
    with pytest.raises(SystemExit):
        output_memory.main(["--sizes", "big"])


def test_quality_refuses_an_existing_work_folder(tmp_path, capsys):
    from benchmarks import quality

    work = tmp_path / "work"
    work.mkdir()
    (work / "reports").mkdir()
    (work / "reports" / "summary.csv").write_text("the user's")
    with pytest.raises(SystemExit) as stopped:
        quality.main(["--work", str(work)])
    assert stopped.value.code == 2
    assert "already exists" in capsys.readouterr().err
    assert [str(p.relative_to(work)) for p in sorted(work.rglob("*"))] == ["reports", "reports/summary.csv"]
    assert (work / "reports" / "summary.csv").read_text() == "the user's"
