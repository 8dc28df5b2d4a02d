"""The exported classifier where users deploy it: reviews/s and peak memory of inference on real IMDb test reviews,
at batch 1 and 8 (length-bucketed), in three runtimes that read the export stage's output:

* onnxruntime on `model.onnx`;
* ours, `LongformerClassifier.from_hf(hf/)` (the evaluate stage's path: our CPU kernels, glibc keeping freed memory);
* transformers' `LongformerForSequenceClassification.from_pretrained(hf/)`.

    python -m bench.deploy --reviews 64     # needs ../shared/imdb; writes bench/results/DATE-CPU-deploy.json
    python -m bench.deploy --export data/export   # a trained classifier (the export stage's data/export)

Without --export, all-MiniLM-L6-v2 made a 4096-token Longformer with the pipeline's default head (hidden size,
tanh) on random head weights, exported as the export stage exports: speed does not depend on the weights. Each
runtime and batch size runs in a process of its own, one after another: its time is the fastest of --repeats
passes over all the reviews after a warm-up batch; its memory, the resident memory once the model is loaded and
the peak above that while predicting (Linux VmRSS and VmHWM).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.harness import ROOT, PeakMemory, cpu_kind, cpu_label, results_path, write_results
from bench.imdb_sample import IMDB

RUNTIMES = ("onnxruntime", "ours", "transformers")
LONG = 4096


def make_export(directory: Path) -> None:
    """minilm made long with the default head, written as the export stage writes it (hf/ and model.onnx)."""
    from longformer import HeadConfig, LongformerClassifier
    from longformer.onnx import export_onnx
    from longformer.pipeline.download import minilm_directory

    torch.manual_seed(0)
    classifier = LongformerClassifier.from_hf(minilm_directory(), HeadConfig(dim=0), max_length=LONG).eval()
    classifier.save_hf(directory / "hf", tokenizer=minilm_directory(), labels=["negative", "positive"])
    export_onnx(classifier, directory / "model.onnx")


def test_reviews(export: Path, count: int, seed: int = 0) -> list[list[int]]:
    """Token ids of `count` random IMDb test reviews, tokenized by the export's tokenizer as predict does."""
    from longformer.hf import load_tokenizer
    from longformer.pipeline.data import load_raw, tokenize_reviews

    test = load_raw(str(IMDB))["test"]
    texts = test.select(random.Random(seed).sample(range(len(test)), count))["text"]
    tokenizer = load_tokenizer(export / "hf")
    return tokenize_reviews(tokenizer, texts, tokenizer.model_max_length)


def load_runtime(name: str, export: Path):
    """(input_ids, attention_mask) -> logits, for one runtime."""
    if name == "onnxruntime":
        from longformer.onnx import OnnxClassifier

        session = OnnxClassifier(export / "model.onnx")
        return lambda ids, mask: session.logits(ids.numpy(), mask.numpy())
    if name == "ours":
        from longformer import LongformerClassifier
        from longformer.pipeline.allocator import keep_freed_memory

        keep_freed_memory()  # as the evaluate stage runs
        model = LongformerClassifier.from_hf(export / "hf").eval()
        return lambda ids, mask: model(ids, mask).numpy()
    from transformers import LongformerForSequenceClassification

    hf = LongformerForSequenceClassification.from_pretrained(export / "hf").eval()
    return lambda ids, mask: hf(input_ids=ids, attention_mask=mask).logits.numpy()


def measure(name: str, export: Path, reviews: list[list[int]], batch_size: int, repeats: int) -> dict:
    """In this process: seconds for all the reviews (the fastest of `repeats` passes), and memory: the process's
    resident memory once the model is loaded, and its peak above that while predicting (all passes)."""
    from longformer.pipeline.batching import collate, length_bucketed_batches

    run = load_runtime(name, export)
    order = length_bucketed_batches([len(r) for r in reviews], batch_size, shuffle=False)
    batches = [collate([reviews[i] for i in batch], [0] * len(batch), 1) for batch in order]
    logits = np.zeros((len(reviews), 2), dtype=np.float32)
    best = float("inf")
    with PeakMemory(torch.device("cpu")) as loaded, torch.no_grad():  # RSS now; the peak counts from here
        run(batches[-1]["input_ids"], batches[-1]["attention_mask"])  # warm-up on the longest batch
        for _ in range(repeats):
            start = time.perf_counter()
            for batch_idx, batch in zip(order, batches):
                logits[batch_idx] = run(batch["input_ids"], batch["attention_mask"])
            best = min(best, time.perf_counter() - start)
    return dict(runtime=name, batch_size=batch_size, reviews=len(reviews), seconds=best,
                reviews_per_s=len(reviews) / best, loaded_mib=loaded.start / 2**10,
                peak_above_loaded_mib=loaded.bytes / 2**20, logits=logits.tolist())


def run_in_own_process(name: str, args: argparse.Namespace, export: Path, batch_size: int) -> dict:
    command = [sys.executable, "-m", "bench.deploy", "--worker", name, "--export", str(export), "--reviews",
               str(args.reviews), "--batch-sizes", str(batch_size), "--repeats", str(args.repeats)]
    out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)  # as a module: bench/ is a package
    if out.returncode:
        raise RuntimeError(f"{name} at batch {batch_size} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarize(rows: list[dict], batch_sizes: list[int]) -> dict:
    """Per batch size: the speed ratios of the runtimes that ran, and how far each one's logits are from ours."""
    speed = {(r["runtime"], r["batch_size"]): r["reviews_per_s"] for r in rows}
    logits = {(r["runtime"], r["batch_size"]): np.array(r.pop("logits")) for r in rows}
    summary = {}
    for b in batch_sizes:
        ratios = {f"{one} / {other}": speed[one, b] / speed[other, b] for one, other in
                  (("onnxruntime", "ours"), ("ours", "transformers"), ("onnxruntime", "transformers"))
                  if (one, b) in speed and (other, b) in speed}
        differences = {name: float(np.abs(logits[name, b] - logits["ours", b]).max())
                       for name in RUNTIMES if name != "ours" and (name, b) in logits and ("ours", b) in logits}
        summary[f"batch {b}"] = ratios | {"largest logit difference from ours": differences}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", type=Path, help="an export stage's output (default: minilm made long)")
    parser.add_argument("--reviews", type=int, default=64)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=list(RUNTIMES))
    parser.add_argument("--worker", choices=RUNTIMES, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.worker:
        reviews = test_reviews(args.export, args.reviews)
        print(json.dumps(measure(args.worker, args.export, reviews, args.batch_sizes[0], args.repeats)))
        return

    with tempfile.TemporaryDirectory() as scratch:
        export = args.export or Path(scratch)
        if args.export is None:
            make_export(export)
        lengths = [len(r) for r in test_reviews(export, args.reviews)]
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu_label(cpu_kind())}; "
              f"{len(lengths)} IMDb test reviews, {sum(lengths)} tokens, longest {max(lengths)}, "
              f"{sum(n > 512 for n in lengths)} over 512", flush=True)
        rows = []
        for batch_size in args.batch_sizes:
            for name in args.runtimes:
                rows.append(run_in_own_process(name, args, export, batch_size))
                print(f"  batch {batch_size}  {name:14s} {rows[-1]['reviews_per_s']:7.2f} reviews/s  loaded "
                      f"{rows[-1]['loaded_mib']:5.0f} MiB, peak {rows[-1]['peak_above_loaded_mib']:5.0f} MiB above",
                      flush=True)
    summary = summarize(rows, args.batch_sizes)
    out = args.out or results_path(cpu_label(cpu_kind()), "deploy")
    write_results(out, args, dict(rows=rows, summary=summary), tokens=sum(lengths), longest=max(lengths))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
