"""The small pretrained encoder on real IMDb reviews: training steps of all-MiniLM-L6-v2 (6 layers, hidden 384,
heads of 32) made a 4096-token Longformer, in three models, at batch 1 and batch 8 (length-bucketed):

* ours (`LongformerClassifier.from_hf("minilm", max_length=4096)`);
* transformers' `LongformerForSequenceClassification` on the same weights (exported with `save_hf`);
* transformers' `BertForSequenceClassification` on the original weights, the same reviews truncated at 512;
* ours on the reviews truncated at 512 (the pipeline's `data.max_length=512`).

    python -m bench.small_encoder --reviews 128       # needs ../shared/imdb; writes bench/results/...-minilm.json

The reviews are 16 batches of 8 (--reviews 128) drawn as the pipeline's training draws them
(`real_reviews`); batch 1 takes the same reviews one at a time. Training as the pipeline trains: dropout as the
checkpoint has it (0.1), the pipeline's optimizer step (cross-entropy with label smoothing 0.1, gradients
clipped to norm 1, fused AdamW), the same number of reviews per optimizer step at every batch size
(--reviews-per-step 16: batch 1 accumulates 16 batches, as the reference recipe does, batch 8 two, as the
pipeline's default does), and glibc keeping freed memory, as the train stage sets it (keep_freed_memory).
Each model's time is the fastest of --repeats passes over all the reviews, after one warm-up step.
--precision bf16 runs every model under bf16 autocast (ours then on its bf16 kernels where the CPU computes bf16
natively); ours is also timed predicting the reviews as the evaluate stage does (batches of 8).

    python -m bench.small_encoder --precision bf16    # writes ...-minilm-bf16.json
    python -m bench.small_encoder --only-ours --profile --precision bf16    # where ours' step goes, by kind of op
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoTokenizer, BertForSequenceClassification, LongformerForSequenceClassification

from longformer import HeadConfig, LongformerClassifier
from longformer.pipeline.allocator import keep_freed_memory
from longformer.pipeline.batching import collate, length_bucketed_batches
from longformer.pipeline.data import load_raw, truncate
from longformer.pipeline.download import minilm_directory
from longformer.pipeline.inference import predict_logits
from longformer.pipeline.precision import autocast
from longformer.pipeline.step import classification_loss, make_optimizer, optimizer_step

from bench.cpu_profile import profiled_kinds
from bench.harness import LogitsOf, best_of, cpu_kind, cpu_label, results_path, write_results
from bench.imdb_sample import IMDB

LONG, SHORT = 4096, 512  # the long models' length, and BERT's


def real_reviews(count: int, batch_size: int, tokenizer, pool: int = 400,
                 seed: int = 0) -> tuple[list[list[int]], list[int]]:
    """Token ids (at most LONG, the last special token kept) and labels of `count` IMDb test reviews, drawn as
    the pipeline's training draws its batches: `pool` random reviews (the pipeline's bucket of 50 batches of 8)
    sorted by length and cut into batches of `batch_size`, of which count / batch_size are taken at random."""
    test = load_raw(str(IMDB))["test"]
    rows = test.select(random.Random(seed).sample(range(len(test)), pool))
    ids = tokenizer(list(rows["text"]), add_special_tokens=True, verbose=False)["input_ids"]
    ids = [truncate(x, LONG) for x in ids]
    batches = length_bucketed_batches([len(x) for x in ids], batch_size, shuffle=True, seed=seed,
                                      bucket_batches=pool // batch_size)
    picked = [i for batch in batches[:count // batch_size] for i in batch]
    return [ids[i] for i in picked], [rows[i]["label"] for i in picked]


def build_models(directory: Path, scratch: Path, only_ours: bool = False) -> dict[str, tuple[torch.nn.Module, int]]:
    """name -> (model called as ours is, the longest input it reads)."""
    torch.manual_seed(0)
    ours = LongformerClassifier.from_hf(directory, HeadConfig(dim=384), max_length=LONG)
    if only_ours:
        return {"ours": (ours, LONG)}
    ours.encoder.save_hf(scratch)
    hf_long = LongformerForSequenceClassification.from_pretrained(scratch, num_labels=2)
    bert = BertForSequenceClassification.from_pretrained(directory, num_labels=2)
    return {"ours": (ours, LONG), "transformers Longformer": (LogitsOf(hf_long), LONG),
            f"transformers BERT, {SHORT} tokens": (LogitsOf(bert), SHORT), f"ours, {SHORT} tokens": (ours, SHORT)}


def training_pass(model: torch.nn.Module, steps: list[list[dict[str, torch.Tensor]]],
                  precision: str = "fp32") -> Callable[[], None]:
    """A function that makes an optimizer step over each list of batches, after a warm-up step made here."""
    model.train()
    optimizer = make_optimizer(model, lr=1e-5)
    recipe = dict(loss_of=classification_loss(0.1), max_grad_norm=1.0,
                  autocast=lambda: autocast(torch.device("cpu"), precision))
    optimizer_step(model, steps[0], optimizer, **recipe)

    def run() -> None:
        for batches in steps:
            optimizer_step(model, batches, optimizer, **recipe)

    return run


def profile_of(run: Callable[[], None]) -> dict:
    """One call of run under the profiler: seconds of self time by kind of op and the ten slowest ops (printed)."""
    kinds, top_ops = profiled_kinds(run)
    print("    profiled, by kind of op (self time): " + ", ".join(
        f"{kind} {seconds:.2f} s" for kind, seconds in sorted(kinds.items(), key=lambda item: -item[1])))
    print("    the slowest ops: " + ", ".join(f"{op} {seconds:.2f} s" for op, seconds in top_ops), flush=True)
    return dict(kinds_s=kinds, top_ops_s=dict(top_ops))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reviews", type=int, default=128)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--reviews-per-step", type=int, default=16,
                        help="reviews per optimizer step at every batch size; 0: one step per batch")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--default-allocator", action="store_true", help="glibc's defaults (page faults)")
    parser.add_argument("--only-ours", action="store_true", help="time ours alone (A/B runs of a setting)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one more pass of ours at each batch size: its time by kind of op")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    out = args.out or results_path(cpu_label(cpu_kind()), "minilm" + ("-bf16" if args.precision == "bf16" else ""))

    if not args.default_allocator:
        keep_freed_memory()
    directory = minilm_directory()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    reviews, labels = real_reviews(args.reviews, max(args.batch_sizes), tokenizer)
    lengths = [len(r) for r in reviews]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(reviews)} IMDb test reviews, "
          f"{sum(lengths)} tokens, longest {max(lengths)}, {sum(n > SHORT for n in lengths)} over {SHORT}", flush=True)
    rows, profiles = [], {}
    with tempfile.TemporaryDirectory() as scratch:
        models = build_models(directory, Path(scratch), args.only_ours)
        for batch_size in args.batch_sizes:
            for name, (model, longest) in models.items():
                cut = [truncate(r, longest) for r in reviews]
                order = length_bucketed_batches([len(r) for r in cut], batch_size, shuffle=True)
                batches = [collate([cut[i] for i in batch], [labels[i] for i in batch], tokenizer.pad_token_id)
                           for batch in order]
                per_step = max(1, args.reviews_per_step // batch_size)
                steps = [batches[i:i + per_step] for i in range(0, len(batches), per_step)]
                run = training_pass(model, steps, args.precision)
                seconds, _ = best_of(args.repeats, run, torch.device("cpu"), measure_memory=False)
                rows.append(dict(model=name, batch_size=batch_size, reviews=len(cut), tokens=sum(map(len, cut)),
                                 seconds=seconds, reviews_per_s=len(cut) / seconds))
                print(f"  batch {batch_size}  {name:32s} {seconds:7.1f} s  {len(cut) / seconds:6.2f} reviews/s",
                      flush=True)
                if args.profile and name == "ours":
                    profiles[f"batch {batch_size}"] = profile_of(run)
        ours = models["ours"][0]
        predict_logits(ours, Dataset.from_dict({"input_ids": reviews[:8]}), 8, precision=args.precision)  # warm-up
        start = time.perf_counter()
        predict_logits(ours, Dataset.from_dict({"input_ids": reviews}), 8, precision=args.precision)
        predicting = len(reviews) / (time.perf_counter() - start)
        print(f"  ours predicting, batches of 8 (the evaluate stage): {predicting:.1f} reviews/s", flush=True)
    speed = {(r["model"], r["batch_size"]): r["reviews_per_s"] for r in rows}
    names = list(models)
    summary = {f"batch {b}": {f"ours / {other}": speed["ours", b] / speed[other, b] for other in names[1:]}
               for b in args.batch_sizes}  # reviews/s ratios
    if len(args.batch_sizes) > 1:
        first, last = args.batch_sizes[0], args.batch_sizes[-1]
        summary[f"batch {last} / batch {first}"] = {name: speed[name, last] / speed[name, first] for name in names}
    write_results(out, args, dict(rows=rows, summary=summary, ours_predicting_reviews_per_s=predicting,
                                  **(dict(profiles=profiles) if profiles else {})))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
