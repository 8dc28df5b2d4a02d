"""bench/bench.py end to end at one short length: both models timed, memory measured, batched training steps over
given review lengths, JSON written."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # stages as subprocesses, trainings

ROOT = Path(__file__).resolve().parents[1]


def test_bench_runs_and_writes_its_summary(tmp_path):
    out = tmp_path / "bench.json"
    lengths = tmp_path / "lengths.json"
    lengths.write_text(json.dumps([17, 40, 23, 31, 9]))  # two batches of 2 and one of 1, as the pipeline batches
    result = subprocess.run([sys.executable, "bench/bench.py", "--lengths", "64", "--imdb-lengths", str(lengths),
                             "--imdb-batch-size", "2", "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert {(row["model"], row["tokens"]) for row in report["lengths"]} == {("transformers", 64), ("ours", 64)}
    for row in report["lengths"]:
        assert row["forward_s"] > 0 and row["forward_backward_s"] > 0
        assert row["forward_backward_peak_mb"] > 0  # at least the parameters' gradients
    ratios = report["summary"]["ratios"]["64"]
    assert ratios["forward_backward_speedup"] > 0 and 0 < ratios["forward_backward_memory_ratio"]
    assert ratios["matmul_fraction_needed_for_3x"] > 0
    assert report["summary"]["forward_backward_speedup_freed_memory_kept"]["64"] > 0
    assert "| 64 | ours |" in result.stdout
    for row in report["imdb"]:
        assert (row["reviews"], row["tokens"], row["batch_size"]) == (5, 120, 2) and row["reviews_per_s"] > 0
    assert report["summary"]["imdb_reviews_per_s_speedup"] > 0
    assert report["setup"]["cpu_kind"]["family"] and "flags" in report["setup"]["cpu_kind"]
