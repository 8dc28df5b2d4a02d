"""Fast CPU kernels for the model's two hot spots: plain functions of tensors, which import nothing of the model.

`longformer/model.py` and `longformer/attention.py` are the reference: plain PyTorch modules and SDPA, what runs on
a GPU. On the CPU the model hands its attention and its add & norm + feed-forward to these kernels instead, which
compute the same (the parity tests run both paths against `transformers`), in fp32 or, under bf16 autocast on a
CPU that computes bf16 natively, with bf16 products (fp32 accumulation, softmax, norms, residual stream and weight
gradients, as autocast keeps them):

  * `banded_attention`: window + global-key attention on PyTorch's CPU flash-attention kernels, over overlapping
    views of one padded q/k/v layout that the fused projection writes straight into (`banded.py`);
  * `add_and_feed_forward`: the feed-forward on `onednn.py`'s products (oneDNN's where the CPU has AVX-512, else
    PyTorch's own), its activation recomputed in backward rather than stored (`feed_forward.py`, `onednn.py`);
  * dropout masks drawn four to a random number (`dropout.py`).

`enabled(x)` says whether they run for activations x (the model asks once per forward);
`with kernels.disabled():` runs the reference path everywhere (to compare, or to debug).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from longformer.kernels.banded import banded_attention
from longformer.kernels.blocks import BandMasks
from longformer.kernels.feed_forward import ACTIVATIONS, FeedForwardWeights, add_and_feed_forward
from longformer.kernels.onednn import computes, compute_dtype, forget_casts, native_bf16

__all__ = ["ACTIVATIONS", "BandMasks", "FeedForwardWeights", "add_and_feed_forward", "banded_attention", "disabled",
           "enabled", "forget_casts", "native_bf16"]

_switched_off = False


def enabled(x: Tensor) -> bool:
    """Whether the kernels run for activations x: on the CPU, in fp32, or in bf16 (under autocast or in a bf16
    model) where the CPU computes it natively, unless switched off by `disabled()`."""
    return (not _switched_off and x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16)
            and computes(compute_dtype(x)) and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)


@contextmanager
def disabled() -> Iterator[None]:
    """Run the reference path everywhere inside this block."""
    global _switched_off
    previous, _switched_off = _switched_off, True
    try:
        yield
    finally:
        _switched_off = previous
