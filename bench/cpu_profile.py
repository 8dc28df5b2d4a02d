"""Where a CPU training step's time goes: one forward+backward of ours (base shape, batch 1, dropout off), its ops
by kind (torch.profiler) and every product as oneDNN logs it (its kernel, shape, time and rate).

    python -m bench.cpu_profile --tokens 4096                 # fp32: a table, and bench/results/DATE-CPU-....json
    python -m bench.cpu_profile --tokens 512 --dtype bf16     # bf16 autocast

Three steps after a warm-up, each in its own measurement: one timed plainly, one under the profiler, one with
oneDNN's verbose log on (which adds a little time to every product). The matmul rate beside them is the one
`bench/bench.py` takes (4096x768 @ 768x3072).
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from bench.bench import autocast_for, training_step_fn
from bench.harness import best_rates, build_models, cpu_kind, cpu_label, matmul_rates, results_path, write_results

# torch.profiler op name -> the kind of work it is (the first pattern that matches; ops matching none: "other")
KINDS = [
    ("products", r"mkldnn::|aten::(mm|addmm|linear|matmul)$"),  # the linear layers'
    ("attention products", r"aten::b(addb)?mm_?$"),  # the written-out softmax's and the global keys'
    ("flash attention", r"flash_attention"),
    ("random numbers", r"aten::(random_|bernoulli_|uniform_)"),  # dropout's masks
    ("fills", r"aten::(fill_|zero_|zeros|empty|new_zeros|full)"),
    ("copies", r"aten::(copy_|clone|contiguous|cat|stack|index_put_|index|gather|scatter)"),
    ("activation", r"gelu|relu|tanh"),
    ("layer norm", r"layer_norm"),
    ("elementwise", r"aten::(add|add_|mul|mul_|sub|div|exp|sum|where|masked_fill|logsumexp|sigmoid|neg)"),
]


def kind_of(op: str) -> str:
    return next((kind for kind, pattern in KINDS if re.search(pattern, op)), "other")


def profiled_kinds(step) -> tuple[dict[str, float], list[tuple[str, float]]]:
    """Seconds of self CPU time per kind of op in one call of step, and the ten ops that took the most."""
    with profile(activities=[ProfilerActivity.CPU]) as trace:
        step()
    by_op = {event.key: event.self_cpu_time_total / 1e6 for event in trace.key_averages()}
    kinds: dict[str, float] = defaultdict(float)
    for op, seconds in by_op.items():
        kinds[kind_of(op)] += seconds
    return dict(kinds), sorted(by_op.items(), key=lambda item: -item[1])[:10]


@contextmanager
def stdout_to(path: Path):
    """The process's file descriptor 1 (where oneDNN writes its log) into path."""
    saved = os.dup(1)
    with open(path, "w") as file:
        os.dup2(file.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)


PROBLEM = re.compile(r"mb(\d+)ic(\d+)oc(\d+)")  # an inner product's: rows, inputs, outputs
LAYOUT = re.compile(r"(\w+):(f32|bf16)::blocked:(\w+)")  # an operand's: "src:f32::blocked:ba" (ba: transposed)


def onednn_products(step) -> list[dict]:
    """Every primitive oneDNN ran in one call of step (products, and element-wise ones PyTorch hands it), grouped by
    kernel, direction, operand layouts and shape: calls, seconds and, for inner products, GFLOP/s."""
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "onednn.log"
        with stdout_to(log), torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
            step()
        lines = log.read_text().splitlines()
    groups: dict[tuple, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    for line in lines:
        fields = line.split(",")
        if len(fields) < 11 or fields[2:4] != ["primitive", "exec"]:
            continue
        operation, kernel, direction, problem, milliseconds = fields[5], fields[6], fields[7], fields[-2], fields[-1]
        shape = PROBLEM.fullmatch(problem)
        flops = 2 * int(shape[1]) * int(shape[2]) * int(shape[3]) if shape else 0.0
        layouts = " ".join(f"{name}:{dtype}:{layout}" for name, dtype, layout in LAYOUT.findall(fields[8]))
        group = groups[(operation, kernel, direction, layouts, problem)]
        group[0] += 1
        group[1] += float(milliseconds) / 1e3
        group[2] += flops
    rows = [dict(operation=key[0], kernel=key[1], direction=key[2], layouts=key[3], problem=key[4], calls=calls,
                 seconds=seconds, gflop_per_s=flops / seconds / 1e9 if seconds and flops else None)
            for key, (calls, seconds, flops) in groups.items()]
    return sorted(rows, key=lambda row: -row["seconds"])


def linear_layer_flops(config, n: int) -> float:
    """FLOPs of the linear layers' products in a forward at n tokens: every layer's but the last's (which computes
    only the <s> token); a training step does 3x that."""
    d, inner = config.hidden_size, config.intermediate_size
    return (config.num_hidden_layers - 1) * 2 * n * (4 * d * d + 2 * d * inner)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16 = autocast")
    parser.add_argument("--layers", type=int, help="this many layers of the base shape (a quick run); default: 12")
    parser.add_argument("--out", type=Path, help="default: bench/results/DATE-CPU-cpu-profile-TOKENS-DTYPE.json")
    args = parser.parse_args()
    args.device = "cpu"
    out = args.out or results_path(cpu_label(cpu_kind()), f"cpu-profile-{args.tokens}-{args.dtype}")

    device = torch.device("cpu")
    rates = best_rates([matmul_rates(device, torch.float32 if args.dtype == "fp32" else torch.bfloat16)])
    config, _, ours = build_models(False, device, layers=args.layers)
    ours.train()
    ids = torch.randint(3, config.vocab_size, (1, args.tokens))
    step = training_step_fn(ours, ids, autocast_for(args))
    step()  # warm-up
    start = time.perf_counter()
    step()
    step_s = time.perf_counter() - start
    kinds, top_ops = profiled_kinds(step)
    products = onednn_products(step)

    linear_flops = 3 * linear_layer_flops(config, args.tokens)
    print(f"{cpu_label(cpu_kind())}, {torch.get_num_threads()} threads; matmul rate "
          + ", ".join(f"{name} {rate / 1e9:.0f}" for name, rate in rates.items()) + " GFLOP/s")
    print(f"one step at {args.tokens} tokens, {args.dtype}: {step_s:.2f} s; profiled, by kind of op (self time):")
    for kind, seconds in sorted(kinds.items(), key=lambda item: -item[1]):
        print(f"  {kind:16s} {seconds:7.2f} s")
    print(f"the linear layers' products ({linear_flops / 1e12:.2f} TFLOP) at "
          f"{linear_flops / kinds.get('products', float('inf')) / 1e9:.0f} GFLOP/s; oneDNN's log, the slowest groups:")
    for row in products[:12]:
        rate = f"{row['gflop_per_s']:6.0f} GFLOP/s" if row["gflop_per_s"] else ""
        print(f"  {row['seconds']:6.2f} s {row['calls']:4d}x {row['operation']:13s} {row['kernel']:16s} "
              f"{row['direction']:17s} {row['problem']:18s} {rate}  {row['layouts']}")
    write_results(out, args, dict(matmul_rates=rates, step_s=step_s, profiled_kinds_s=kinds,
                                  top_ops_s=dict(top_ops), linear_flops=linear_flops, onednn_log=products))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
