"""How far batching can speed up training the small encoder: per review, forward + backward of all-MiniLM-L6-v2
made a 4096-token Longformer (ours), with dropout, at one length per row and batches of 1, 8 and 32.

    python -m bench.batch_sizes        # writes bench/results/DATE-CPU-minilm-batch-sizes.json

Where a larger batch is no faster per review, the step is down to its work per token, which no batch size
removes. Synthetic token ids (only the lengths matter for speed); glibc keeps freed memory, as the train stage
sets it; each figure is the best of two timings of 32 reviews, after a warm-up.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from longformer import HeadConfig, LongformerClassifier
from longformer.pipeline.allocator import keep_freed_memory
from longformer.pipeline.download import minilm_directory

from bench.harness import cpu_kind, cpu_label, results_path, write_results

REVIEWS = 32  # per timing, at every batch size


def forward_backward(model: torch.nn.Module, batch: int, tokens: int) -> None:
    input_ids = torch.randint(1000, 30000, (batch, tokens))
    logits = model(input_ids, torch.ones_like(input_ids))
    F.cross_entropy(logits, torch.zeros(batch, dtype=torch.long)).backward()


def ms_per_review(model: torch.nn.Module, batch: int, tokens: int) -> float:
    forward_backward(model, batch, tokens)
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        for _ in range(REVIEWS // batch):
            forward_backward(model, batch, tokens)
        best = min(best, (time.perf_counter() - start) / REVIEWS)
    model.zero_grad(set_to_none=True)
    return 1000 * best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    out = args.out or results_path(cpu_label(cpu_kind()), "minilm-batch-sizes")

    keep_freed_memory()
    torch.manual_seed(0)
    model = LongformerClassifier.from_hf(minilm_directory(), HeadConfig(dim=384), max_length=4096).train()
    rows = []
    for tokens in args.lengths:
        times = {f"batch {b} ms per review": ms_per_review(model, b, tokens) for b in args.batch_sizes}
        rows.append({"tokens": tokens} | times)
        print(f"{tokens:5d} tokens  " + "  ".join(f"{key} {ms:6.1f}" for key, ms in times.items()), flush=True)
    write_results(out, args, dict(rows=rows))


if __name__ == "__main__":
    main()
