"""Ours vs transformers' Longformer, same weights, same process: time, memory, efficiency, real IMDb reviews.

    python -m bench.bench                      # base shape, fp32, CPU: a table, and bench/results/DATE-CPU-....json
    python -m bench.bench --large              # 24 layers, hidden 1024
    python -m bench.bench --device cuda --dtype bf16 --checkpointing   # on a GPU

Random weights (the shapes are what matter for speed), dropout off unless --dropout. Ratios are what to read:
this machine is noisy. Times are taken in this process, both models side by side, each the fastest of
--repeats calls; on the CPU, peak memory is measured in a fresh process (see cpu_peak_memory), and
forward+backward at the longest length is timed once more with glibc keeping freed memory (see
keep_freed_memory).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
from contextlib import nullcontext
from pathlib import Path

import torch
from transformers import LongformerConfig as HFConfig

from bench.harness import (best_of, best_rates, build_models, called_as_ours, cpu_kind, cpu_label,
                           cuda_total_peak_bytes, exact_cpu_memory, forward_fn, matmul_rates, model_flops,
                           results_path, set_checkpointing, timed, write_results)
from bench.imdb_sample import IMDB, imdb_token_lengths
from longformer.pipeline.allocator import keep_freed_memory
from longformer.pipeline.batching import collate, length_bucketed_batches
from longformer.pipeline.step import make_optimizer, optimizer_step

def default_out(args: argparse.Namespace) -> Path:
    """bench/results/DATE-CPU-DEVICE-DTYPE[-large].json: one file per run, named by what it ran on."""
    device = args.device.split(":")[0]
    if device == "cuda":
        machine = torch.cuda.get_device_name().split()[-1].lower()  # e.g. h200
    else:
        machine = cpu_label(cpu_kind())
    return results_path(machine, f"{device}-{args.dtype}" + ("-large" if args.large else ""))


def setup_models(args: argparse.Namespace, device: torch.device) -> tuple[HFConfig, dict]:
    """{"transformers": ..., "ours": ...} as the command line asks (shape, dropout, checkpointing, which models)."""
    config, hf, ours = build_models(args.large, device, dropout=args.dropout, layers=args.layers)
    models = {"transformers": hf, "ours": ours}
    if args.skip_transformers:
        del models["transformers"]
    for model in models.values():
        set_checkpointing(model, args.checkpointing)
    return config, models


def autocast_for(args: argparse.Namespace):
    return torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16) if args.dtype == "bf16" else nullcontext()


def forward_and_backward(model, ids: torch.Tensor, device, autocast, measure_memory: bool,
                         repeats: int = 1) -> tuple[float, int, float, int]:
    """(forward s, forward peak bytes, forward+backward s, forward+backward peak bytes) at one length."""
    run = forward_fn(model, ids)
    model.eval()
    with torch.no_grad(), autocast:
        run()  # warm-up
        fwd_s, fwd_mem = best_of(repeats, run, device, measure_memory)
    model.train()
    fb_s, fb_mem = best_of(repeats, training_step_fn(model, ids, autocast), device, measure_memory)
    model.zero_grad(set_to_none=True)
    return fwd_s, fwd_mem, fb_s, fb_mem


def training_step_fn(model, ids: torch.Tensor, autocast):
    """One forward+backward from no gradients, as after an optimizer's zero_grad."""
    run = forward_fn(model, ids)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with autocast:
            out = run()
        out.float().sum().backward()

    return step


def bench_without_page_faults(models: dict, config: HFConfig, n: int, device, autocast) -> list[dict]:
    """Forward+backward at n tokens, the second of two steps, with keep_freed_memory() switched on (CPU)."""
    keep_freed_memory()
    ids = torch.randint(3, config.vocab_size, (1, n), device=device)
    rows = []
    for name, model in models.items():
        model.train()
        step = training_step_fn(model, ids, autocast)
        step()  # warm-up: the heap grows to this model's peak
        seconds, _ = timed(step, device, measure_memory=False)
        model.zero_grad(set_to_none=True)
        rows.append(dict(model=name, tokens=n, forward_backward_s=seconds))
        print(f"  {name:12s} {n:5d} tokens, freed memory kept: fwd+bwd {seconds:7.2f}s", flush=True)
    return rows


def bench_lengths(models: dict, config: HFConfig, lengths: list[int], device, autocast,
                  repeats: int) -> list[dict]:
    """Time, the best of `repeats` calls (and, on a GPU, peak memory), of forward and forward+backward at each
    length."""
    inputs = {n: torch.randint(3, config.vocab_size, (1, n), device=device) for n in lengths}
    rows = []
    for n in lengths:
        for name, model in models.items():
            fwd_s, fwd_mem, fb_s, fb_mem = forward_and_backward(
                model, inputs[n], device, autocast, measure_memory=device.type == "cuda", repeats=repeats)
            rows.append(dict(model=name, tokens=n, forward_s=fwd_s, forward_backward_s=fb_s,
                             forward_peak_mb=fwd_mem / 2**20, forward_backward_peak_mb=fb_mem / 2**20,
                             forward_tokens_per_s=n / fwd_s))
            if device.type == "cuda":
                step = training_step_fn(model, inputs[n], autocast)
                rows[-1]["forward_backward_gpu_total_mb"] = cuda_total_peak_bytes(step) / 2**20
                model.zero_grad(set_to_none=True)
            print(f"  {name:12s} {n:5d} tokens: forward {fwd_s:7.2f}s, fwd+bwd {fb_s:7.2f}s", flush=True)
    return rows


def cpu_peak_memory(args: argparse.Namespace) -> list[dict]:
    """Peak memory at each length, in a fresh process with exact_cpu_memory() on from its start.

    In a process that has already run with glibc's default settings, the heap keeps freed memory and
    fragments, which adds a few hundred MB of noise to RSS.
    """
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_measure_cpu_memory, (args,))


def _measure_cpu_memory(args: argparse.Namespace) -> list[dict]:
    exact_cpu_memory()
    device = torch.device("cpu")
    config, models = setup_models(args, device)
    autocast = autocast_for(args)
    rows = []
    for n in args.lengths:
        for name, model in models.items():
            ids = torch.randint(3, config.vocab_size, (1, n))
            _, fwd_mem, _, fb_mem = forward_and_backward(model, ids, device, autocast, measure_memory=True)
            rows.append(dict(model=name, tokens=n, forward_peak_mb=fwd_mem / 2**20,
                             forward_backward_peak_mb=fb_mem / 2**20))
            print(f"  {name:12s} {n:5d} tokens: forward peak {fwd_mem / 2**30:5.2f} GiB, "
                  f"fwd+bwd peak {fb_mem / 2**30:5.2f} GiB", flush=True)
    return rows


def bench_imdb(models: dict, config: HFConfig, lengths: list[int], device, autocast,
               batch_size: int = 1) -> list[dict]:
    """Training steps (forward, backward, the pipeline's fused AdamW) over real review lengths: at batch 1 as in the
    reference runs, or batched as the pipeline batches (length-bucketed, padded to each batch's longest)."""
    rows = []
    gen = torch.Generator().manual_seed(0)
    reviews = [torch.randint(3, config.vocab_size, (n,), generator=gen).tolist() for n in lengths]
    batches = []
    for indices in length_bucketed_batches(lengths, batch_size, shuffle=True):
        batch = collate([reviews[i] for i in indices], [0] * len(indices), config.pad_token_id)
        batches.append({name: tensor.to(device) for name, tensor in batch.items()})
    for name, model in models.items():
        model.train()
        optimizer = make_optimizer(model, lr=1e-5)  # the pipeline's fused AdamW

        runner = called_as_ours(model)

        def train_steps(inputs) -> None:
            for batch in inputs:  # a training step as the pipeline takes it
                optimizer_step(runner, [batch], optimizer, autocast=lambda: autocast)

        train_steps(batches[:1])  # warm-up (and AdamW state)
        seconds, peak = timed(lambda: train_steps(batches), device, measure_memory=device.type == "cuda")
        rows.append(dict(model=name, reviews=len(lengths), tokens=sum(lengths), batch_size=batch_size,
                         seconds=seconds, reviews_per_s=len(lengths) / seconds, peak_mb=peak / 2**20 if peak else None))
        print(f"  {name:12s} {len(lengths)} IMDb reviews, batch {batch_size}: {seconds:.1f}s, "
              f"{len(lengths) / seconds:.2f} reviews/s", flush=True)
        del optimizer
    return rows


def summarize(rows: list[dict], imdb: list[dict], no_faults: list[dict]) -> dict:
    by = {(r["model"], r["tokens"]): r for r in rows}
    lengths = sorted({r["tokens"] for r in rows})
    ratios = {}
    for n in lengths:
        ours, hf = by[("ours", n)], by[("transformers", n)]
        ratios[n] = dict(forward_speedup=hf["forward_s"] / ours["forward_s"],
                         forward_backward_speedup=hf["forward_backward_s"] / ours["forward_backward_s"],
                         forward_backward_memory_ratio=ours["forward_backward_peak_mb"] / hf["forward_backward_peak_mb"],
                         # a 3x faster step would run at 3x transformers' fraction of the matmul rate
                         matmul_fraction_needed_for_3x=3 * hf["forward_backward_matmul_fraction"])
    out = {"ratios": ratios}
    if 2048 in lengths and 4096 in lengths:
        out["ours_forward_time_4096_over_2048"] = by[("ours", 4096)]["forward_s"] / by[("ours", 2048)]["forward_s"]
        out["ours_forward_backward_time_4096_over_2048"] = (by[("ours", 4096)]["forward_backward_s"]
                                                             / by[("ours", 2048)]["forward_backward_s"])
    if no_faults:
        seconds = {r["model"]: r["forward_backward_s"] for r in no_faults}
        out["forward_backward_speedup_freed_memory_kept"] = {
            no_faults[0]["tokens"]: seconds["transformers"] / seconds["ours"]}
    if imdb:
        imdb_by = {r["model"]: r for r in imdb}
        out["imdb_reviews_per_s_speedup"] = imdb_by["ours"]["reviews_per_s"] / imdb_by["transformers"]["reviews_per_s"]
    return out


def format_rates(rates: dict[str, float]) -> str:
    return ", ".join(f"{name} {rate / 1e9:.0f} GFLOP/s" for name, rate in rates.items())


def markdown_table(rows: list[dict], summary: dict, rates: dict[str, float]) -> str:
    gpu_total = "forward_backward_gpu_total_mb" in rows[0]
    lines = ["| tokens | model | forward s | fwd+bwd s | fwd+bwd peak GiB | "
             + ("fwd+bwd GPU total GiB | " if gpu_total else "")
             + "forward tokens/s | forward % of matmul rate | fwd+bwd % of matmul rate |",
             "|---:|---|---:|---:|---:|" + ("---:|" if gpu_total else "") + "---:|---:|---:|"]
    for r in rows:
        total = f"{r['forward_backward_gpu_total_mb'] / 1024:.2f} | " if gpu_total else ""
        lines.append(f"| {r['tokens']} | {r['model']} | {r['forward_s']:.3f} | {r['forward_backward_s']:.3f} | "
                     f"{r['forward_backward_peak_mb'] / 1024:.2f} | {total}{r['forward_tokens_per_s']:.0f} | "
                     f"{100 * r['forward_matmul_fraction']:.0f}% | {100 * r['forward_backward_matmul_fraction']:.0f}% |")
    lines += ["", f"Measured matmul rate: {format_rates(rates)}; the fractions are of the best.", "",
              "| tokens | forward speed-up | fwd+bwd speed-up | fwd+bwd memory (ours / transformers) | "
              "fwd+bwd % of matmul rate a 3x speed-up needs |",
              "|---:|---:|---:|---:|---:|"]
    for n, r in summary["ratios"].items():
        lines.append(f"| {n} | {r['forward_speedup']:.2f}x | {r['forward_backward_speedup']:.2f}x | "
                     f"{r['forward_backward_memory_ratio']:.2f} | {100 * r['matmul_fraction_needed_for_3x']:.0f}% |")
    for n, speedup in summary.get("forward_backward_speedup_freed_memory_kept", {}).items():
        lines += ["", f"fwd+bwd speed-up at {n} tokens with glibc keeping freed memory (no page faults): {speedup:.2f}x"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--large", action="store_true", help="24 layers, hidden 1024 (longformer-large)")
    parser.add_argument("--layers", type=int, help="this many layers of the shape (a quick check); default: all")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16 = autocast")
    parser.add_argument("--dropout", type=float, default=0.0,
                        help="attention and hidden dropout in training steps, both models (the checkpoints have 0.1; "
                             "with attention dropout, ours leaves the CPU flash kernels, which have none, for its "
                             "block-by-block softmax)")
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing in both models")
    parser.add_argument("--repeats", type=int, default=2, help="time each call this many times, keep the fastest")
    parser.add_argument("--imdb-reviews", type=int, default=16, help="real reviews for the training-step figure")
    parser.add_argument("--imdb-batch-size", type=int, default=1,
                        help="reviews per training step (length-bucketed as in the pipeline; 1 = the reference)")
    parser.add_argument("--imdb-lengths", type=Path,
                        help="their token counts from a JSON list written by bench/imdb_sample.py, instead of "
                             "tokenizing ../shared/imdb (for machines without it)")
    parser.add_argument("--skip-transformers", action="store_true", help="only ours (e.g. where it runs out of memory)")
    parser.add_argument("--out", type=Path, help="default: bench/results/DATE-CPU-DEVICE-DTYPE[-large].json")
    args = parser.parse_args()
    args.out = args.out or default_out(args)

    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    autocast = autocast_for(args)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, {args.dtype}", flush=True)
    # sampled between the runs and the best kept: this box has slow phases, and a rate read in one would
    # overstate every fraction below
    rates = [matmul_rates(device, dtype)]
    print(f"matmul rate: {format_rates(rates[0])}", flush=True)
    config, models = setup_models(args, device)

    imdb, lengths = [], []
    if args.imdb_lengths:
        lengths = json.loads(args.imdb_lengths.read_text())
    elif args.imdb_reviews and IMDB.is_dir():
        lengths = imdb_token_lengths(args.imdb_reviews)
    if lengths:
        print(f"IMDb sample: {len(lengths)} reviews, {sum(lengths)} tokens, longest {max(lengths)}", flush=True)
        imdb = bench_imdb(models, config, lengths, device, autocast, args.imdb_batch_size)
        rates.append(matmul_rates(device, dtype))
    rows = bench_lengths(models, config, args.lengths, device, autocast, args.repeats)
    rates.append(matmul_rates(device, dtype))
    no_faults = []
    if device.type == "cpu":
        no_faults = bench_without_page_faults(models, config, max(args.lengths), device, autocast)
        print("peak memory, in a fresh process:", flush=True)
        memory = {(r["model"], r["tokens"]): r for r in cpu_peak_memory(args)}
        for row in rows:
            row.update(memory[row["model"], row["tokens"]])
    rates.append(matmul_rates(device, dtype))
    # the fractions below are of the best rate any library reached: the machine's, not one library's
    library_rates = best_rates(rates)
    rate = max(library_rates.values())
    print(f"matmul rate, best of {len(rates)} samples: {format_rates(library_rates)}", flush=True)
    for row in rows:
        flops = model_flops(config, row["tokens"])
        row["forward_matmul_fraction"] = flops / row["forward_s"] / rate
        row["forward_backward_matmul_fraction"] = 3 * flops / row["forward_backward_s"] / rate
    summary = summarize(rows, imdb, no_faults) if "transformers" in models else {"ratios": {}}
    write_results(args.out, args, dict(lengths=rows, freed_memory_kept=no_faults, imdb=imdb, summary=summary),
                  cpu=os.cpu_count(), matmul_gflops=rate / 1e9,
                  matmul_gflops_by_library={k: v / 1e9 for k, v in library_rates.items()},
                  shape=("large" if args.large else "base") + (f", {args.layers} layers" if args.layers else ""))
    print()
    if "transformers" in models:
        print(markdown_table(rows, summary, library_rates))
    print(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()
