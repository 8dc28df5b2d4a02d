"""The benches end to end: bench/bench.py at one short length (both models timed, memory measured, batched training
steps over given review lengths, JSON written), bench/small_encoder.py on a batch of real reviews,
bench/batch_sizes.py at two lengths, bench/cpu_profile.py on a short step, bench/deploy.py on a few real reviews,
bench/paired_accuracy.py on made-up predictions for the sample's test reviews."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import ROOT, SHARED_IMDB


@pytest.mark.slow  # two models of base-shaped layers
def test_bench_runs_and_writes_its_summary(tmp_path):
    out = tmp_path / "bench.json"
    lengths = tmp_path / "lengths.json"
    lengths.write_text(json.dumps([17, 40, 23, 31, 9]))  # two batches of 2 and one of 1, as the pipeline batches
    result = subprocess.run([sys.executable, "-m", "bench.bench", "--layers", "2", "--lengths", "64", "--imdb-lengths",
                             str(lengths), "--imdb-batch-size", "2", "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    rows = {(row["model"], row["tokens"]): row for row in report["lengths"]}
    assert set(rows) == {("transformers", 64), ("ours", 64)}
    ratios = report["summary"]["ratios"]["64"]
    hf, ours = rows["transformers", 64], rows["ours", 64]
    assert ratios["forward_backward_speedup"] == pytest.approx(hf["forward_backward_s"] / ours["forward_backward_s"])
    assert ratios["forward_backward_memory_ratio"] == pytest.approx(
        ours["forward_backward_peak_mb"] / hf["forward_backward_peak_mb"])
    # the table shows what the JSON holds
    assert f"| 64 | ours | {ours['forward_s']:.3f} | {ours['forward_backward_s']:.3f} |" in result.stdout
    # the reviews as the pipeline batches them: length-bucketed, 5 reviews of 120 tokens in batches of 2
    assert [(r["model"], r["reviews"], r["tokens"], r["batch_size"]) for r in report["imdb"]] == [
        ("transformers", 5, 120, 2), ("ours", 5, 120, 2)]
    assert report["summary"]["imdb_reviews_per_s_speedup"] == pytest.approx(
        report["imdb"][1]["reviews_per_s"] / report["imdb"][0]["reviews_per_s"])
    assert report["setup"]["cpu_kind"]["family"] and "flags" in report["setup"]["cpu_kind"]


@pytest.mark.slow  # four models, two batch sizes
@pytest.mark.skipif(not SHARED_IMDB.is_dir(), reason="needs the real IMDb reviews in ../shared/imdb")
def test_small_encoder_bench_on_real_reviews(tmp_path):
    out = tmp_path / "minilm.json"
    result = subprocess.run([sys.executable, "-m", "bench.small_encoder", "--reviews", "2", "--batch-sizes", "1", "2",
                             "--profile", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    models = ["ours", "transformers Longformer", "transformers BERT, 512 tokens", "ours, 512 tokens"]
    assert [(r["model"], r["batch_size"], r["reviews"]) for r in report["rows"]] == [
        (model, batch, 2) for batch in (1, 2) for model in models]
    speed = {(r["model"], r["batch_size"]): r["reviews_per_s"] for r in report["rows"]}
    assert report["summary"]["batch 2 / batch 1"]["ours"] == pytest.approx(speed["ours", 2] / speed["ours", 1])
    # one pipeline batch of 2 reviews; truncated at 512 the same reviews have no more tokens than at 4096
    long, short = report["rows"][0], report["rows"][3]
    assert short["tokens"] <= long["tokens"] <= 2 * 4096
    # --profile: ours' pass at each batch size by kind of op, the linear layers' products among them
    assert list(report["profiles"]) == ["batch 1", "batch 2"]
    assert all(profile["kinds_s"]["products"] > 0 for profile in report["profiles"].values())


@pytest.mark.slow  # a bench in a subprocess
def test_batch_sizes_bench_writes_a_row_per_length(tmp_path):
    out = tmp_path / "batch-sizes.json"
    result = subprocess.run([sys.executable, "-m", "bench.batch_sizes", "--lengths", "9", "16", "--batch-sizes", "1", "8",
                             "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [row["tokens"] for row in rows] == [9, 16]
    assert all(row["batch 1 ms per review"] > 0 and row["batch 8 ms per review"] > 0 for row in rows)


@pytest.mark.slow  # a bench in a subprocess
def test_cpu_profile_splits_a_step_by_kind_and_logs_onednn(tmp_path):
    out = tmp_path / "profile.json"
    result = subprocess.run([sys.executable, "-m", "bench.cpu_profile", "--layers", "2", "--tokens", "64", "--out",
                             str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert report["step_s"] > 0 and report["profiled_kinds_s"]["products"] > 0
    assert report["linear_flops"] == 3 * 2 * 64 * (4 * 768**2 + 2 * 768 * 3072)  # one full layer, the last <s> only
    assert all(row["calls"] > 0 and row["seconds"] >= 0 for row in report["onednn_log"])


@pytest.mark.slow  # an ONNX export, then each runtime in a process of its own
@pytest.mark.skipif(not SHARED_IMDB.is_dir(), reason="needs the real IMDb reviews in ../shared/imdb")
def test_deploy_bench_runs_each_runtime_in_its_own_process(tmp_path):
    out = tmp_path / "deploy.json"
    result = subprocess.run([sys.executable, "-m", "bench.deploy", "--runtimes", "ours", "onnxruntime", "--reviews",
                             "4", "--batch-sizes", "1", "--repeats", "1", "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert [(row["runtime"], row["reviews"]) for row in report["rows"]] == [("ours", 4), ("onnxruntime", 4)]
    assert report["summary"]["batch 1"]["largest logit difference from ours"]["onnxruntime"] < 1e-4


@pytest.mark.slow  # a bench in a subprocess
def test_paired_accuracy_splits_the_test_reviews_by_length(tmp_path):
    from longformer.pipeline.data import load_raw
    from longformer.pipeline.download import minilm_directory

    labels = np.asarray(load_raw("sample")["test"]["label"])
    wrong_every = {"a": 3, "b": 5}  # A is wrong on every third review, B on every fifth
    for name, every in wrong_every.items():
        predicted = labels.copy()
        predicted[::every] = 1 - predicted[::every]
        np.savetxt(tmp_path / f"{name}.csv", np.stack([labels, predicted], 1), fmt="%d", delimiter=",",
                   header="actual,predicted", comments="")
    result = subprocess.run([sys.executable, "-m", "bench.paired_accuracy", str(tmp_path / "a.csv"),
                             str(tmp_path / "b.csv"), "--dataset", "sample", "--tokenizer", str(minilm_directory()),
                             "--longer-than", "256"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    counts = dict(re.findall(r"^(all|over 256 tokens|256 tokens or fewer) (\d+) reviews", result.stdout, re.M))
    assert int(counts["all"]) == len(labels)
    assert int(counts["over 256 tokens"]) + int(counts["256 tokens or fewer"]) == len(labels)
    assert 0 < int(counts["over 256 tokens"]) < len(labels)
    n = len(labels)
    a_acc, b_acc = 1 - len(range(0, n, 3)) / n, 1 - len(range(0, n, 5)) / n
    assert f"all {n} reviews: {a_acc:.4f} against {b_acc:.4f}" in result.stdout
