"""Would torch.compile (inductor, CPU) give the fused bf16 attention issue 57 asks for? One training step (forward +
backward, <s> global, dropout) of the base shape's first LAYERS layers at TOKENS tokens under bf16 autocast, in:
ours eager (the CPU kernels), the reference path eager (kernels.disabled(): SDPA and plain modules), the reference
path compiled, and ours compiled. Each the best of 3 steps after a first (compiling) one.

    PYTHONPATH=. python bench/results/2026-12-08b-zen4-issue57-compile/compile_probe.py 2 4096 0.1 OUT.json
"""
import json
import sys
import time
from contextlib import nullcontext

import torch

from bench.harness import build_models, cpu_kind, cpu_label
from longformer import kernels

layers, tokens, dropout, out = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
_, _, ours = build_models(False, torch.device("cpu"), dropout=dropout, layers=layers)
ours.train()
ids = torch.randint(3, 50000, (1, tokens))
glob = torch.zeros_like(ids)
glob[:, 0] = 1


def step_fn(model, reference: bool, dtype: torch.dtype):
    def step() -> None:
        model.zero_grad(set_to_none=True)
        with kernels.disabled() if reference else nullcontext(), \
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = model(ids, global_attention_mask=glob)
        out.float().sum().backward()
    return step


rows = []
for name, model, reference, dtype in (("ours eager, fp32", ours, False, torch.float32),
                                      ("ours eager, bf16", ours, False, torch.bfloat16),
                                      ("reference eager, bf16", ours, True, torch.bfloat16),
                                      ("reference compiled, bf16", torch.compile(ours), True, torch.bfloat16),
                                      ("ours compiled, bf16", torch.compile(ours), False, torch.bfloat16)):
    torch._dynamo.reset()
    step = step_fn(model, reference, dtype)
    try:
        start = time.perf_counter()
        step()
        first = time.perf_counter() - start
    except Exception as error:  # noqa: BLE001 (what fails is the finding)
        rows.append(dict(mode=name, error=f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"))
        print(f"{name:26s} fails: {rows[-1]['error']}", flush=True)
        continue
    times = []
    for _ in range(3):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    rows.append(dict(mode=name, first_step_s=first, best_s=min(times), steps_s=times))
    print(f"{name:26s} first step {first:6.2f} s, best {min(times):6.3f} s of {[round(t, 3) for t in times]}",
          flush=True)
setup = dict(cpu=cpu_label(cpu_kind()), torch=torch.__version__, threads=torch.get_num_threads(), layers=layers,
             tokens=tokens, dropout=dropout)
json.dump(dict(setup=setup, rows=rows), open(out, "w"), indent=1)
