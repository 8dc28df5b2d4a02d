"""The model's matrix products on oneDNN's inner-product op (plain fp32).

PyTorch's CPU matmul is MKL's, which picks its code by the processor's vendor; oneDNN, in every x86 PyTorch build,
picks its kernels by the instructions the CPU has (AVX-512 where there is one). Which is faster depends on the CPU:
`bench/bench.py` prints both rates and docs/performance.md compares them. Where oneDNN does not apply (float64 in
gradchecks, autocast, oneDNN switched off) each function falls back to PyTorch's own op.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_OUT_CHUNK_ROWS = 512  # rows per product in linear_into: a fresh output that large would page-fault
_WEIGHT_GRAD_CHUNK_ROWS = 1024  # rows per product in weight_grad (see there)


def row_parts(rows: int, size: int) -> list[slice]:
    """Slices of `size` rows (the last one shorter) covering `rows` rows: for work a part of the rows at a time."""
    return [slice(first, first + size) for first in range(0, rows, size)]


def use_onednn(x: Tensor) -> bool:
    """Whether x's products run on oneDNN here: fp32 on the CPU, without autocast (which picks the dtypes itself)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)


def _inner_product(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x (N, K) @ weight (M, K)^T + bias on oneDNN; each operand contiguous or a transposed contiguous matrix."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def mm(a: Tensor, b: Tensor) -> Tensor:
    """a (N, K) @ b (K, M)."""
    return _inner_product(a, b.T, None) if use_onednn(a) else a @ b


def weight_grad(grad_y: Tensor, x: Tensor, add_to: Tensor | None = None) -> Tensor:
    """grad_y (N, M)^T @ x (N, K) -> (M, K), a linear layer's weight gradient, plus add_to (a weight_grad result).

    On oneDNN the product is made in the wider of the two orientations (the faster one; the narrow result is a
    transposed view of it), as a sum over parts of the rows, each part added to the last by the product itself
    (smaller operands, which stay in cache).
    """
    if not use_onednn(x):
        return grad_y.T @ x if add_to is None else torch.addmm(add_to, grad_y.T, x)
    wide = grad_y.shape[1] > x.shape[1]
    a, b = (x, grad_y) if wide else (grad_y, x)
    total = None if add_to is None else add_to.T if wide else add_to
    for part in row_parts(x.shape[0], _WEIGHT_GRAD_CHUNK_ROWS):
        total = _inner_product(a[part].T, b[part].T, None) if total is None else \
            torch.ops.mkldnn._linear_pointwise.binary(a[part].T, total, b[part].T, None, "add")
    if total is None:  # no rows
        return grad_y.T @ x
    return total.T if wide else total


def linear_into(out: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """out (N, M) = x (N, K) @ weight (M, K)^T + bias, a few hundred rows at a time (oneDNN's op has no `out=`, and
    its output is copied in from small, reused buffers rather than a fresh full-size one). Returns out."""
    if not use_onednn(x):
        return torch.addmm(bias, x, weight.T, out=out) if bias is not None else torch.mm(x, weight.T, out=out)
    for part in row_parts(x.shape[0], _OUT_CHUNK_ROWS):
        out[part] = _inner_product(x[part], weight, bias)
    return out


def linear_activation(x: Tensor, weight: Tensor, bias: Tensor | None, activation: str) -> Tensor:
    """activation(x (N, K) @ weight (M, K)^T + bias), activation "gelu" (the exact, erf one) or "relu". Without
    autograd, oneDNN applies it to each part of the output as it makes it, in cache."""
    if use_onednn(x) and not torch.is_grad_enabled():
        algorithm = "none" if activation == "gelu" else ""  # gelu's: exact (erf), not tanh
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, activation, [], algorithm)
    y = linear(x, weight, bias)
    return F.gelu(y) if activation == "gelu" else F.relu(y)


def linear_add(x: Tensor, weight: Tensor, bias: Tensor | None, other: Tensor) -> Tensor:
    """x (N, K) @ weight (M, K)^T + bias + other (N, M, contiguous): without autograd, one pass on oneDNN."""
    if use_onednn(x) and not torch.is_grad_enabled():
        return torch.ops.mkldnn._linear_pointwise.binary(x, other, weight, bias, "add")
    return linear(x, weight, bias) + other


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _inner_product(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        x, weight = ctx.saved_tensors
        grad_y = grad_y.contiguous()  # e.g. a sum's gradient is an expanded view
        grad_x = mm(grad_y, weight) if ctx.needs_input_grad[0] else None
        grad_weight = weight_grad(grad_y, x) if ctx.needs_input_grad[1] else None
        grad_bias = grad_y.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """F.linear, on oneDNN where `use_onednn`."""
    if not use_onednn(x):
        return F.linear(x, weight, bias)
    rows = x.reshape(-1, x.shape[-1])
    return _OneDNNLinear.apply(rows if rows.is_contiguous() else rows.contiguous(), weight, bias).view(
        *x.shape[:-1], -1)
