"""Where a batch-1 training step's time goes on a GPU: wall time against the GPU's own kernel time.

    python -m bench.step_profile --tokens 300     # on a GPU machine (bench/gpu.sh runs it)

For both models (same weights, bf16 autocast, forward + backward + fused AdamW), with and without gradient
checkpointing: the median step time, the kernels launched, their total GPU time, and for ours the ops that
took the most host time. A step far longer than its kernels is bound by the host issuing them.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from longformer.pipeline.batching import collate
from longformer.pipeline.step import make_optimizer, optimizer_step

from bench.harness import build_models, called_as_ours, set_checkpointing

LAUNCHES = {"cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=300, help="review length (IMDb's mean is ~280 tokens)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps; the median is printed")
    args = parser.parse_args()

    device = torch.device("cuda")
    _, hf, ours = build_models(False, device)
    review = torch.randint(3, hf.config.vocab_size, (args.tokens,)).tolist()
    batch = {k: v.to(device) for k, v in collate([review], [0], hf.config.pad_token_id).items()}
    autocast = torch.autocast("cuda", dtype=torch.bfloat16)
    for checkpointing in (False, True):
        for name, model in (("transformers", hf), ("ours", ours)):
            set_checkpointing(model, checkpointing)
            model.train()
            optimizer = make_optimizer(model, lr=1e-5)
            runner = called_as_ours(model)

            def step() -> None:
                optimizer_step(runner, [batch], optimizer, autocast=lambda: autocast)
                torch.cuda.synchronize()

            for _ in range(3):  # warm-up (and AdamW state)
                step()
            seconds = []
            for _ in range(args.steps):
                start = time.perf_counter()
                step()
                seconds.append(time.perf_counter() - start)
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                step()
            events = prof.key_averages()
            launches = sum(e.count for e in events if e.key in LAUNCHES)
            gpu_ms = sum(e.self_device_time_total for e in events if e.device_type.name == "CUDA") / 1e3
            print(f"{name:12s} checkpointing {checkpointing!s:5s} {args.tokens} tokens: step "
                  f"{1e3 * statistics.median(seconds):6.1f} ms, {launches} kernel launches, "
                  f"GPU kernel time {gpu_ms:5.1f} ms", flush=True)
            if name == "ours":
                print(events.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=60))
            del optimizer


if __name__ == "__main__":
    main()
