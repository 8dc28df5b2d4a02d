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
  * dropout masks drawn four to a random number, the attention's kept as bits for its backward (`dropout.py`).

`paths.py` decides which code computes what (`enabled(x)`: whether the kernels run for activations x, asked once per
forward; `with kernels.disabled():` runs the reference path everywhere, to compare or to debug). In bf16 the products
take bf16 copies of the weights, made afresh at every forward; `with kernels.casts_kept():` keeps them across the
forwards of one optimizer step's micro-batches.
"""

from __future__ import annotations

from longformer.kernels.banded import banded_attention
from longformer.kernels.blocks import BandMasks
from longformer.kernels.feed_forward import ACTIVATIONS, FeedForwardWeights, add_and_feed_forward
from longformer.kernels.onednn import casts_kept, forget_casts
from longformer.kernels.paths import auto_precision, disabled, enabled, native_bf16

__all__ = ["ACTIVATIONS", "BandMasks", "FeedForwardWeights", "add_and_feed_forward", "auto_precision",
           "banded_attention", "casts_kept", "disabled", "enabled", "forget_casts", "native_bf16"]
