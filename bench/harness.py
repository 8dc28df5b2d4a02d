"""What the benches share: the CPU they ran on and where their results go, timing and peak memory, the machine's
matmul rate, and transformers' classifier beside ours with the same weights."""

from __future__ import annotations

import argparse
import gc
import json
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from transformers import LongformerConfig as HFConfig
from transformers import LongformerForSequenceClassification as HFClassifier

from longformer import HeadConfig, LongformerClassifier, LongformerConfig
from longformer.hf import rename_hf_state_dict
from longformer.kernels.onednn import linear_into
from longformer.kernels.paths import cpu_info, hardware_flags, use_onednn
from longformer.pipeline.allocator import LIBC, M_MMAP_THRESHOLD

ROOT = Path(__file__).resolve().parents[1]


CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")  # what decides the CPU kernels' speed


def cpu_kind() -> dict:
    """The processor the figures were measured on (/proc/cpuinfo): its name, family and model, and the vector
    extensions that matter here (an AMD EPYC of family 25 model 1 is a Zen 3, 25/17 a Zen 4, 26 a Zen 5)."""
    info = cpu_info()
    return {"name": info.get("model name"), "family": info.get("cpu family"), "model": info.get("model"),
            "flags": [flag for flag in CPU_FLAGS if flag in hardware_flags()]}  # the processor's, never faked

# (family, first model, last model) -> AMD core generation: what the bench's results are filed under
AMD_CORES = [(25, 0x00, 0x0F, "zen3"), (25, 0x20, 0x5F, "zen3"), (25, 0x10, 0x1F, "zen4"), (25, 0x60, 0xAF, "zen4"),
             (26, 0x00, 0xFF, "zen5")]


def cpu_label(kind: dict) -> str:
    """zen3 / zen4 / zen5 for the AMD EPYCs these machines have; otherwise the vendor's family and model."""
    family, model = int(kind["family"] or 0), int(kind["model"] or 0)
    for core_family, first, last, name in AMD_CORES:
        if "AMD" in (kind["name"] or "") and family == core_family and first <= model <= last:
            return name
    return f"family{family}-model{model}"


def results_path(machine: str, what: str) -> Path:
    """bench/results/DATE-MACHINE-WHAT.json, where every bench files its runs."""
    return ROOT / "bench" / "results" / f"{time.strftime('%Y-%m-%d')}-{machine}-{what}.json"


def write_results(out: Path, args: argparse.Namespace, results: dict, **setup) -> None:
    """out: the results, after a `setup` of the arguments, torch, threads and CPU kind (plus `setup`)."""
    setup = dict(vars(args), out=str(out), torch=torch.__version__, threads=torch.get_num_threads(),
                 cpu_kind=cpu_kind(), **setup)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(setup=setup, **results), indent=2, default=str) + "\n")


def exact_cpu_memory() -> None:
    """Make process RSS track live tensors: every allocation >= 64 KiB gets its own mmap, unmapped on free.

    By default glibc raises its mmap threshold to 32 MiB after the first large free and then keeps freed
    memory in its heap, so RSS would measure the allocator's caching rather than what a model holds.
    Slower (page faults): only for the memory measurements, which run in a process of their own.
    """
    LIBC.mallopt(M_MMAP_THRESHOLD, 64 * 1024)


class PeakMemory:
    """Peak memory above the starting point: CUDA allocator stats, or the kernel's peak RSS (VmHWM) on the CPU."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        LIBC.malloc_trim(0)  # hand freed heap pages back: reusing them must show up as RSS
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux)
        self.start = self._status_kib("VmRSS")
        return self

    @staticmethod
    def _status_kib(field: str) -> int:
        line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field))
        return int(line.split()[1])

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated() - self.start
        else:
            self.bytes = (self._status_kib("VmHWM") - self.start) * 1024


def cuda_total_peak_bytes(fn) -> int:
    """Peak GPU memory during one call of fn, everything counted: weights, gradients, activations, workspaces."""
    with PeakMemory(torch.device("cuda")) as memory:
        fn()
    return memory.start + memory.bytes


def timed(fn, device: torch.device, measure_memory: bool) -> tuple[float, int]:
    """Seconds and, if asked, peak extra bytes (else 0) of one call of fn.

    On the CPU, PeakMemory hands glibc's freed heap back first, which would add page faults to the time of
    the call: there, times are taken without it, and memory in a process of its own (cpu_peak_memory).
    """
    with PeakMemory(device) if measure_memory else nullcontext() as memory:
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return seconds, memory.bytes if measure_memory else 0


def matmul_rates(device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    """The machine's dense matmul rate (FLOP/s) on a Longformer-sized product (4096x768 @ 768x3072), per library:
    PyTorch's own (`torch.mm`: MKL on the CPU, which transformers uses) and, on the CPU in fp32, oneDNN's (which
    ours uses there: `longformer.kernels.onednn`).

    Into preallocated outputs: on the CPU a fresh 48 MiB output would be a fresh mmap, and its page faults
    (up to ~30% of the product's time here) would be counted as matmul time.
    """
    a = torch.randn(4096, 768, device=device, dtype=dtype)
    b = torch.randn(768, 3072, device=device, dtype=dtype)
    out = torch.empty(4096, 3072, device=device, dtype=dtype)
    products = {"torch.mm": lambda: torch.mm(a, b, out=out)}
    if use_onednn(a):
        weight = b.T.contiguous()
        products["oneDNN"] = lambda: linear_into(out, a, weight, None)  # its op has no out=: 512 rows at a time
    rates = {}
    for name, product in products.items():
        best = min(timed(product, device, measure_memory=False)[0] for _ in range(10))
        rates[name] = 2 * 4096 * 768 * 3072 / best
    return rates


def best_rates(samples: list[dict[str, float]]) -> dict[str, float]:
    return {name: max(sample[name] for sample in samples) for name in samples[0]}


def model_flops(config: HFConfig, n: int) -> float:
    """FLOPs the classifier's forward must do at n tokens: the linear layers plus the (2w+1)-wide band of attention
    in every layer but the last, whose output is read only at the <s> token (a few rows' worth, left out).

    A training step must do at least 3x this: each product's backward is two products of the same size.
    """
    d, inner = config.hidden_size, config.intermediate_size
    total = 0.0
    for window in config.attention_window[:-1]:
        total += 2 * n * (4 * d * d + 2 * d * inner) + 4 * n * (window + 1) * d
    return total


def build_models(large: bool, device: torch.device, num_labels: int = 2, dropout: float = 0.0,
                 layers: int | None = None):
    """transformers' classifier and ours, with the same encoder weights; `dropout` in attention and hidden layers;
    `layers` of the shape instead of all (a quick run)."""
    shape = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096) if large \
        else dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    shape["num_hidden_layers"] = layers or shape["num_hidden_layers"]
    hf_config = HFConfig(vocab_size=50265, attention_window=512, max_position_embeddings=4098, pad_token_id=1,
                         hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, num_labels=num_labels,
                         **shape)
    torch.manual_seed(0)
    hf = HFClassifier(hf_config).to(device)
    ours = LongformerClassifier(LongformerConfig.from_hf_dict(hf_config.to_dict()),
                                HeadConfig(dim=shape["hidden_size"], dropout=dropout, num_labels=num_labels))
    ours.encoder.load_state_dict(rename_hf_state_dict(hf.longformer.state_dict()))
    return hf_config, hf, ours.to(device)


def forward_fn(model, ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
    """The classifier's forward on ids (B, n), the <s> token global, as a call without arguments."""
    glob = torch.zeros_like(ids)
    glob[:, 0] = 1
    if isinstance(model, HFClassifier):
        return lambda: model(input_ids=ids, attention_mask=attention_mask, global_attention_mask=glob).logits
    return lambda: model(ids, attention_mask=attention_mask, global_attention_mask=glob)


def set_checkpointing(model, on: bool) -> None:
    if isinstance(model, HFClassifier):
        # the name since transformers 5.2x; older ones (the GPU machines' 5.17) have only gradient_checkpointing_*
        api = "activation" if hasattr(model, "activation_checkpointing_enable") else "gradient"
        getattr(model, f"{api}_checkpointing_{'enable' if on else 'disable'}")()
    else:
        model.encoder.gradient_checkpointing = on


def best_of(repeats: int, fn, device: torch.device, measure_memory: bool) -> tuple[float, int]:
    """The fastest of `repeats` calls of fn (this machine is noisy), and the largest peak."""
    results = [timed(fn, device, measure_memory) for _ in range(repeats)]
    return min(seconds for seconds, _ in results), max(peak for _, peak in results)


class LogitsOf(torch.nn.Module):
    """A transformers classifier called as ours is, `(input_ids, attention_mask) -> logits` (a Longformer's first
    token global, as ours makes it), so that the pipeline's optimizer_step takes it."""

    def __init__(self, hf: torch.nn.Module):
        super().__init__()
        self.hf = hf

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if isinstance(self.hf, HFClassifier):
            return forward_fn(self.hf, input_ids, attention_mask)()
        return self.hf(input_ids=input_ids, attention_mask=attention_mask).logits


def called_as_ours(model: torch.nn.Module) -> torch.nn.Module:
    """The model as the pipeline's optimizer_step calls it: ours as it is, transformers' wrapped in LogitsOf."""
    return LogitsOf(model) if isinstance(model, HFClassifier) else model
