"""The model's matrix products on oneDNN's inner-product op: fp32, or bf16 on CPUs that compute it natively.

PyTorch's CPU matmul is MKL's, which picks its code by the processor's vendor; oneDNN, in every x86 PyTorch build,
picks its kernels by the instructions the CPU has (AVX-512 where there is one). Which is faster depends on the CPU:
`bench/bench.py` prints both rates and docs/performance.md compares them. Where oneDNN does not apply (float64 in
gradchecks, autocast, oneDNN switched off, fp32 on a CPU without AVX-512: `paths.use_onednn`) each function falls
back to PyTorch's own op.

In bf16 the products take the weights as bf16 copies (`cast`, one per forward and its backward, or per `casts_kept`
block) and accumulate in fp32 (oneDNN does); a weight's gradient is summed in fp32 and returned in the weight's own
dtype.

Which library computes is decided in `longformer.kernels.paths`. Where the CPU's flags say bf16 (faked, in the
tests) but the processor itself lacks it, the bf16 products are emulated (`_emulated`: fp32 products of the bf16
operands, rounded to bf16 as oneDNN rounds its output): the same numbers, only slower.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor

from longformer.kernels import paths
from longformer.kernels.paths import compute_dtype, use_onednn

_OUT_CHUNK_ROWS = 512  # rows per product in linear_into: a fresh output that large would page-fault
_WEIGHT_GRAD_CHUNK_ROWS = 1024  # rows per product in weight_grad (see there)


def row_parts(rows: int, size: int) -> list[slice]:
    """Slices of `size` rows (the last one shorter) covering `rows` rows: for work a part of the rows at a time."""
    return [slice(first, first + size) for first in range(0, rows, size)]


def without_autocast():
    """The kernels' own dtypes inside: each casts what it needs (PyTorch's CPU autocast would cast again)."""
    return torch.autocast("cpu", enabled=False)


# id(weight) -> (a weak reference to it, its version when cast, the cast); an entry goes when its weight does
_casts: dict[int, tuple[weakref.ref, int, Tensor]] = {}
_kept_blocks = 0  # how many `casts_kept` blocks are open


def forget_casts() -> None:
    """Drop every cached cast, unless inside `casts_kept`. The model calls it at the start of each forward: an
    optimizer may change a weight in place without making a new version of it (fused AdamW does), so a cast lives for
    one forward and its backward."""
    if not _kept_blocks:
        _casts.clear()


@contextmanager
def casts_kept() -> Iterator[None]:
    """Keep the casts across every forward inside this block, and drop them at its end: for forwards between which no
    optimizer changes the weights (the micro-batches of one optimizer step), so each weight is cast once, not once
    per micro-batch. A weight changed with a new version is still cast afresh."""
    global _kept_blocks
    _kept_blocks += 1
    try:
        yield
    finally:
        _kept_blocks -= 1
        if not _kept_blocks:
            _casts.clear()


def cast(weight: Tensor, dtype: torch.dtype) -> Tensor:
    """`weight` (a parameter) in `dtype`, without autograd: a copy made once per forward (see `forget_casts`; once per
    `casts_kept` block) and version of the weight, which the backward (and a checkpointed layer's recomputation)
    shares, as autocast caches its own casts for one autocast region."""
    if weight.dtype == dtype:
        return weight
    key = id(weight)
    made = _casts.get(key)
    if made is None or made[0]() is not weight or made[1] != weight._version or made[2].dtype != dtype:
        made = weakref.ref(weight, lambda _, key=key: _casts.pop(key, None)), weight._version, weight.detach().to(dtype)
        _casts[key] = made
    return made[2]


def _inner_product(x: Tensor, weight: Tensor, bias: Tensor | None, activation: str = "none",
                   add: Tensor | None = None) -> Tensor:
    """activation(x (N, K) @ weight (M, K)^T + bias) + add on oneDNN, in x's dtype, the sum and the activation
    ("none", "gelu": the exact, erf one, or "relu") taken in fp32 before the one rounding to x's dtype; each operand
    contiguous or a transposed contiguous matrix, add (N, M) contiguous and in x's dtype."""
    weight, bias = cast(weight, x.dtype), None if bias is None else cast(bias, x.dtype)
    if x.dtype == torch.bfloat16 and paths.bf16_emulated():
        return _emulated(x, weight, bias, activation, add)
    if add is not None:
        return torch.ops.mkldnn._linear_pointwise.binary(x, add, weight, bias, "add")
    algorithm = "none" if activation == "gelu" else ""  # gelu's: exact (erf), not tanh
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, activation, [], algorithm)


def _emulated(x: Tensor, weight: Tensor, bias: Tensor | None, activation: str, add: Tensor | None) -> Tensor:
    """`_inner_product` in bf16 on a processor without bf16 products: the bf16 operands are exact in fp32, so an fp32
    product accumulates as oneDNN's bf16 one does; the result is rounded to bf16 once, as oneDNN's is."""
    y = F.linear(x.float(), weight.float(), None if bias is None else bias.float())
    y = {"none": y, "gelu": F.gelu(y), "relu": F.relu(y)}[activation]
    return (y if add is None else y + add.float()).to(x.dtype)


def mm(a: Tensor, weight: Tensor) -> Tensor:
    """a (N, K) @ weight (K, M), in a's dtype (a weight of another dtype is cast)."""
    return _inner_product(a, cast(weight, a.dtype).T, None) if use_onednn(a) else a @ weight


def weight_grad(grad_y: Tensor, x: Tensor, add_to: Tensor | None = None) -> Tensor:
    """grad_y (N, M)^T @ x (N, K) -> (M, K), a linear layer's weight gradient, plus add_to (a weight_grad result);
    in fp32 where the operands are bf16.

    On oneDNN the product is made in the wider of the two orientations (the faster one; the narrow result is a
    transposed view of it), as a sum over parts of the rows (smaller operands, which stay in cache): in fp32 each
    part is added to the last by the product itself; in bf16 the parts' products are summed in fp32.
    """
    if not use_onednn(x):
        return grad_y.T @ x if add_to is None else torch.addmm(add_to, grad_y.T, x)
    wide = grad_y.shape[1] > x.shape[1]
    a, b = (x, grad_y) if wide else (grad_y, x)
    total = None if add_to is None else add_to.T if wide else add_to
    for part in row_parts(x.shape[0], _WEIGHT_GRAD_CHUNK_ROWS):
        if x.dtype != torch.float32:
            product = _inner_product(a[part].T, b[part].T, None).float()
            total = product if total is None else product.add_(total)
        elif total is None:
            total = _inner_product(a[part].T, b[part].T, None)
        else:
            total = _inner_product(a[part].T, b[part].T, None, add=total)
    if total is None:  # no rows
        return grad_y.T @ x
    return total.T if wide else total


def linear_into(out: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """out (N, M) = x (N, K) @ weight (M, K)^T + bias, a few hundred rows at a time (oneDNN's op has no `out=`, and
    its output is copied in from small, reused buffers rather than a fresh full-size one); computed in x's dtype.
    Returns out."""
    if not use_onednn(x):
        return torch.addmm(bias, x, weight.T, out=out) if bias is not None else torch.mm(x, weight.T, out=out)
    for part in row_parts(x.shape[0], _OUT_CHUNK_ROWS):
        out[part] = _inner_product(x[part], weight, bias)
    return out


def linear_activation(x: Tensor, weight: Tensor, bias: Tensor | None, activation: str) -> Tensor:
    """activation(x (N, K) @ weight (M, K)^T + bias), activation "gelu" (the exact, erf one) or "relu". Without
    autograd, oneDNN applies it to each part of the output as it makes it, in cache."""
    if use_onednn(x) and not torch.is_grad_enabled():
        return _inner_product(x, weight, bias, activation)
    y = linear(x, weight, bias)
    return F.gelu(y) if activation == "gelu" else F.relu(y)


def linear_add(x: Tensor, weight: Tensor, bias: Tensor | None, other: Tensor) -> Tensor:
    """x (N, K) @ weight (M, K)^T + bias + other (N, M, contiguous): without autograd, and other in x's dtype, one
    pass on oneDNN; in other's dtype."""
    if use_onednn(x) and not torch.is_grad_enabled() and other.dtype == x.dtype:
        return _inner_product(x, weight, bias, add=other)
    return linear(x, weight, bias) + other


class _OneDNNLinear(torch.autograd.Function):
    """x @ weight^T + bias in x's dtype; the weight's and bias's gradients in their own dtype (fp32 sums)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _inner_product(x, weight, bias)

    @staticmethod
    @without_autocast()  # a backward run under autocast (inside its block) keeps our dtypes
    def backward(ctx, grad_y: Tensor):
        x, weight = ctx.saved_tensors
        grad_y = grad_y.contiguous()  # e.g. a sum's gradient is an expanded view
        grad_x = mm(grad_y, weight) if ctx.needs_input_grad[0] else None
        grad_weight = weight_grad(grad_y, x) if ctx.needs_input_grad[1] else None
        grad_bias = grad_y.sum(0, dtype=weight.dtype) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """F.linear, on oneDNN where `use_onednn`: in x's dtype, the weight's gradients in theirs."""
    if not use_onednn(x):
        return F.linear(x, weight, bias)
    rows = x.reshape(-1, x.shape[-1])
    return _OneDNNLinear.apply(rows if rows.is_contiguous() else rows.contiguous(), weight, bias).view(
        *x.shape[:-1], -1)
