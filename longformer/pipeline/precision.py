"""The precision the model computes in (`train.precision`): decided at run time, here and nowhere else.

bf16 is bf16 autocast: bf16 products, fp32 master weights, optimizer, norms and sums. On the CPU the model's
kernels then run their products in bf16 too (`longformer.kernels`).
"""

from __future__ import annotations

from collections.abc import Set
from contextlib import AbstractContextManager, nullcontext

import torch

from longformer.errors import ConfigError
from longformer.kernels import auto_precision
from longformer.pipeline.params import PRECISIONS


def resolve_precision(precision: str, device: torch.device, cpu_flags: Set[str] | None = None) -> str:
    """`train.precision` on `device` -> "fp32" or "bf16": `auto` as `longformer.kernels.auto_precision` decides (with
    these CPU flags; default: this CPU's)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"the precision must be one of {list(PRECISIONS)}, got {precision!r}")
    return auto_precision(device, cpu_flags) if precision == "auto" else precision


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """What the model runs under in a resolved `precision`: bf16 autocast on `device`, or nothing for fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
