"""Which code computes what: every such decision, here and nowhere else, from the CPU's flags.

* a layer's attention and feed-forward (`enabled`): the kernels on the CPU in fp32, or in bf16 where the CPU
  computes bf16 natively; else the reference modules (GPU, float64, bf16 that PyTorch emulates, `disabled()`);
* an fp32 product (`use_onednn`): oneDNN where the CPU has AVX-512, PyTorch's own (MKL) with AVX2 alone;
* a bf16 product: oneDNN, or emulated (`bf16_emulated`, `onednn._emulated`) where the flags are faked and the
  processor itself has no bf16;
* `train.precision: auto` (`auto_precision`): bf16 on a GPU and on CPUs that compute bf16 natively, fp32 elsewhere.

The flags are /proc/cpuinfo's, or those `LONGFORMER_CPU_FLAGS` names in their place: any machine then decides as that
CPU would (the tests run "as a bf16-native CPU" and "as a Zen 3" so).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor

FLAGS_VARIABLE = "LONGFORMER_CPU_FLAGS"  # flags to decide by instead of the processor's: "avx2 avx512f avx512_bf16"
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo's names of the instructions that compute bf16

_switched_off = False  # by `disabled()`


def enabled(x: Tensor) -> bool:
    """Whether the kernels run for activations x (the model asks once per forward): on the CPU, in fp32, or in bf16
    (under autocast or in a bf16 model) where the CPU computes it natively, unless switched off by `disabled()`."""
    return (not _switched_off and x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16)
            and computes(compute_dtype(x)) and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)


def use_onednn(x: Tensor) -> bool:
    """Whether x's products run on oneDNN: on the CPU, in a dtype it `computes` (fp32 only where it is the faster
    library), without autocast (which picks the dtypes itself; the kernels turn it off and cast themselves)."""
    return (x.device.type == "cpu" and computes(x.dtype) and (x.dtype != torch.float32 or onednn_fp32_is_faster())
            and not torch.is_autocast_enabled("cpu") and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled)


def auto_precision(device: torch.device, flags: frozenset[str] | set[str] | None = None) -> str:
    """`train.precision: auto` on `device`: "bf16" on CUDA and on CPUs that compute bf16 natively (with these flags;
    default: this CPU's), where it is about twice as fast; "fp32" elsewhere, where bf16 would be emulated."""
    return "bf16" if device.type == "cuda" or native_bf16(flags) else "fp32"


@contextmanager
def disabled() -> Iterator[None]:
    """Run the reference path everywhere inside this block."""
    global _switched_off
    previous, _switched_off = _switched_off, True
    try:
        yield
    finally:
        _switched_off = previous


def computes(dtype: torch.dtype) -> bool:
    """Whether oneDNN computes products in `dtype` here: fp32, or bf16 where the CPU does natively."""
    return dtype == torch.float32 or (dtype == torch.bfloat16 and native_bf16())


def onednn_fp32_is_faster() -> bool:
    """Whether oneDNN's fp32 products beat PyTorch's (MKL's) here: on CPUs with AVX-512. With AVX2 alone oneDNN runs
    a product with a transposed operand (every product of a backward) at about half MKL's rate."""
    return "avx512f" in cpu_flags()


def bf16_emulated() -> bool:
    """Whether a bf16 product is emulated (in fp32, rounded as oneDNN rounds): where the processor itself has no bf16
    instructions, whatever the flags say."""
    return not native_bf16(hardware_flags())


def native_bf16(flags: frozenset[str] | set[str] | None = None) -> bool:
    """Whether the CPU (with these flags; default: `cpu_flags()`) computes bf16 products natively, at about twice its
    fp32 rate or more. Elsewhere bf16 is emulated or, on AVX2 alone, not on oneDNN at all."""
    return any(flag in (cpu_flags() if flags is None else flags) for flag in NATIVE_BF16_FLAGS)


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype x's products run in: autocast's where autocast is on for x's device, else x's own."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def cpu_flags() -> frozenset[str]:
    """The flags every decision reads: the processor's, or those `LONGFORMER_CPU_FLAGS` names (spaces or commas
    between them) in their place."""
    faked = os.environ.get(FLAGS_VARIABLE)
    return hardware_flags() if faked is None else frozenset(faked.replace(",", " ").split())


@functools.cache
def hardware_flags() -> frozenset[str]:
    """The processor's own feature flags (/proc/cpuinfo's names: "avx2", "avx512f", "amx_bf16", ...)."""
    return frozenset(cpu_info().get("flags", "").split())


@functools.cache
def cpu_info() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo ("model name", "cpu family", "model", "flags", ...); none where
    there is no such file."""
    info: dict[str, str] = {}
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []:
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    return info
