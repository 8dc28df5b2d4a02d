"""The small pretrained encoder on real IMDb reviews: training steps of all-MiniLM-L6-v2 (6 layers, hidden 384,
heads of 32) made a 4096-token Longformer, in three models, at batch 1 and batch 8 (length-bucketed):

* ours (`LongformerClassifier.from_hf("minilm", max_length=4096)`);
* transformers' `LongformerForSequenceClassification` on the same weights (exported with `save_hf`);
* transformers' `BertForSequenceClassification` on the original weights, the same reviews truncated at 512;
* ours on the reviews truncated at 512 (the pipeline's `data.max_length=512`).

    python bench/small_encoder.py --reviews 64        # needs ../shared/imdb; writes bench/results/...-minilm.json

Dropout as the checkpoint has it (0.1), the pipeline's optimizer step (cross-entropy, fused AdamW). Each model's
time is the fastest of --repeats passes over all the reviews, after one warm-up step.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, BertForSequenceClassification, LongformerForSequenceClassification

from longformer import HeadConfig, LongformerClassifier
from longformer.pipeline.batching import collate, length_bucketed_batches
from longformer.pipeline.data import load_raw, truncate
from longformer.pipeline.download import minilm_directory
from longformer.pipeline.step import make_optimizer, optimizer_step

from bench import ROOT, LogitsOf, cpu_kind, cpu_label  # bench/, beside this script
from imdb_sample import IMDB

LONG, SHORT = 4096, 512  # the long models' length, and BERT's


def real_reviews(count: int, tokenizer, seed: int = 0) -> tuple[list[list[int]], list[int]]:
    """Token ids (at most LONG, the last special token kept) and labels of `count` random IMDb test reviews."""
    test = load_raw(str(IMDB))["test"]
    picked = random.Random(seed).sample(range(len(test)), count)
    rows = test.select(picked)
    ids = tokenizer(list(rows["text"]), add_special_tokens=True, verbose=False)["input_ids"]
    return [truncate(x, LONG) for x in ids], list(rows["label"])


def build_models(directory: Path, scratch: Path) -> dict[str, tuple[torch.nn.Module, int]]:
    """name -> (model called as ours is, the longest input it reads)."""
    torch.manual_seed(0)
    ours = LongformerClassifier.from_hf(directory, HeadConfig(dim=384), max_length=LONG)
    ours.encoder.save_hf(scratch)
    hf_long = LongformerForSequenceClassification.from_pretrained(scratch, num_labels=2)
    bert = BertForSequenceClassification.from_pretrained(directory, num_labels=2)
    return {"ours": (ours, LONG), "transformers Longformer": (LogitsOf(hf_long), LONG),
            f"transformers BERT, {SHORT} tokens": (LogitsOf(bert), SHORT), f"ours, {SHORT} tokens": (ours, SHORT)}


def time_training(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], repeats: int) -> float:
    """Seconds for one optimizer step per batch (the fastest of `repeats` passes), after a warm-up step."""
    model.train()
    optimizer = make_optimizer(model, lr=1e-5)
    optimizer_step(model, batches[:1], optimizer)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for batch in batches:
            optimizer_step(model, [batch], optimizer)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reviews", type=int, default=64)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    out = args.out or ROOT / "bench" / "results" / f"{time.strftime('%Y-%m-%d')}-{cpu_label(cpu_kind())}-minilm.json"

    directory = minilm_directory()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    reviews, labels = real_reviews(args.reviews, tokenizer)
    lengths = [len(r) for r in reviews]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(reviews)} IMDb test reviews, "
          f"{sum(lengths)} tokens, longest {max(lengths)}, {sum(n > SHORT for n in lengths)} over {SHORT}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        models = build_models(directory, Path(scratch))
        for batch_size in args.batch_sizes:
            for name, (model, longest) in models.items():
                cut = [truncate(r, longest) for r in reviews]
                order = length_bucketed_batches([len(r) for r in cut], batch_size, shuffle=True)
                batches = [collate([cut[i] for i in batch], [labels[i] for i in batch], tokenizer.pad_token_id)
                           for batch in order]
                seconds = time_training(model, batches, args.repeats)
                rows.append(dict(model=name, batch_size=batch_size, reviews=len(cut), tokens=sum(map(len, cut)),
                                 seconds=seconds, reviews_per_s=len(cut) / seconds))
                print(f"  batch {batch_size}  {name:32s} {seconds:7.1f} s  {len(cut) / seconds:6.2f} reviews/s",
                      flush=True)
    speed = {(r["model"], r["batch_size"]): r["reviews_per_s"] for r in rows}
    names = list(models)
    summary = {f"batch {b}": {f"ours / {other}": speed["ours", b] / speed[other, b] for other in names[1:]}
               for b in args.batch_sizes}  # reviews/s ratios
    if len(args.batch_sizes) > 1:
        first, last = args.batch_sizes[0], args.batch_sizes[-1]
        summary[f"batch {last} / batch {first}"] = {name: speed[name, last] / speed[name, first] for name in names}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(setup=dict(vars(args), out=str(out), torch=torch.__version__,
                                              threads=torch.get_num_threads(), cpu_kind=cpu_kind()),
                                   rows=rows, summary=summary), indent=2, default=str) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
