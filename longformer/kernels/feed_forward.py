"""A layer's add & norm and feed-forward on oneDNN's products, with the activation recomputed in backward.

The same computation as `longformer.model.Layer.add_and_feed_forward` (the reference). Under bf16 autocast the
products run in bf16 and the residual stream and norms in fp32, as under autocast on the reference.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from longformer.kernels.dropout import dropout
from longformer.kernels.onednn import (cast, linear, linear_activation, linear_add, linear_into, row_parts,
                                       weight_grad, without_autocast)
from longformer.kernels.paths import compute_dtype

ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}  # the encoder's activations by name; gelu is the exact (erf) one
_CHUNK_ROWS = 512  # tokens per part of the feed-forward's forward: its (rows, 4 D) activations stay in cache


class FeedForwardWeights(NamedTuple):
    """A layer's tensors after attention: out = ffn_norm(x + ffn_out(act(ffn_in(x)))), x = attn_norm(residual +
    attn_out(attended)). Each pair is (weight, bias); the norms share one eps."""

    attn_out: tuple[Tensor, Tensor]
    attn_norm: tuple[Tensor, Tensor]
    ffn_in: tuple[Tensor, Tensor]
    ffn_out: tuple[Tensor, Tensor]
    ffn_norm: tuple[Tensor, Tensor]
    norm_eps: float


def add_and_feed_forward(attended: Tensor, residual: Tensor, weights: FeedForwardWeights, activation: str,
                         dropout_p: float = 0.0) -> Tensor:
    """attended, residual (B, n, D) -> the layer's output (B, n, D), in residual's dtype; activation "gelu" or
    "relu"; dropout_p is applied after attn_out and ffn_out (0 in eval mode)."""
    dtype = compute_dtype(residual)  # the products'
    with without_autocast():
        attended = attended.to(dtype)
        if not (dropout_p or torch.is_grad_enabled()):
            return _inference(attended, residual, weights, activation)
        x = _norm(residual + dropout(linear(attended, *weights.attn_out), dropout_p), weights.attn_norm,
                  weights.norm_eps)
        h = linear(x.to(dtype), *weights.ffn_in)
        y = ActivationLinear.apply(h, *weights.ffn_out, activation)
        return _norm(x + dropout(y, dropout_p), weights.ffn_norm, weights.norm_eps)


def _norm(x: Tensor, weight_bias: tuple[Tensor, Tensor], eps: float) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], *weight_bias, eps)


def _inference(attended: Tensor, residual: Tensor, weights: FeedForwardWeights, activation: str) -> Tensor:
    """Without dropout or autograd, a few hundred rows at a time: the (rows, 4 D) activations are never whole (no
    fresh full-size tensor to page-fault), and the products apply the activation and the residual adds themselves."""
    rows = residual.reshape(-1, residual.shape[-1])  # (N, D)
    x = _norm(linear_add(attended.reshape(-1, attended.shape[-1]), *weights.attn_out, rows), weights.attn_norm,
              weights.norm_eps)
    out = torch.empty_like(x)
    for part in row_parts(x.shape[0], _CHUNK_ROWS):
        h = linear_activation(x[part].to(attended.dtype), *weights.ffn_in, activation)  # in the products' dtype
        out[part] = linear_add(h, *weights.ffn_out, x[part])
    return _norm(out, weights.ffn_norm, weights.norm_eps).view(residual.shape)


class ActivationLinear(torch.autograd.Function):
    """y = activation(h) @ W^T + b that saves only h and recomputes activation(h) in backward; in h's dtype, the
    weight's and bias's gradients in theirs.

    The activation output is as large as h (4x the hidden states); not keeping it cuts a layer's saved
    activations by about a fifth, for one cheap elementwise recompute. The forward goes a few hundred rows
    at a time, so activation(h) is never whole: its chunk stays in cache and no fresh full-size tensor
    (page faults) is made. Backward reuses one buffer of h's size for activation(h), its gradient and h's
    gradient.
    """

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias: Tensor, activation: str) -> Tensor:
        ctx.save_for_backward(h, weight)
        ctx.activation = activation
        rows = h.reshape(-1, h.shape[-1])  # (N, inner)
        y = rows.new_empty(rows.shape[0], weight.shape[0])  # (N, D)
        for part in row_parts(rows.shape[0], _CHUNK_ROWS):
            linear_into(y[part], ACTIVATIONS[activation](rows[part]), weight, bias)
        return y.view(*h.shape[:-1], -1)

    @staticmethod
    @without_autocast()  # a backward run under autocast (inside its block) keeps our dtypes
    def backward(ctx, grad_y: Tensor):
        h, weight = ctx.saved_tensors
        grad_y = grad_y.reshape(-1, grad_y.shape[-1]).contiguous()  # (N, D); oneDNN takes no other strides
        buffer = ACTIVATIONS[ctx.activation](h)  # activation(h), (..., inner)
        flat = buffer.view(grad_y.shape[0], -1)  # (N, inner), the same memory
        grad_weight = weight_grad(grad_y, flat)
        linear_into(flat, grad_y, cast(weight, h.dtype).T, None)  # grad_y @ weight: now the activation's gradient
        if ctx.activation == "gelu":
            torch.ops.aten.gelu_backward.grad_input(buffer, h, grad_input=buffer)  # in place: now h's gradient
        else:
            buffer.masked_fill_(h <= 0, 0)
        return buffer, grad_weight, grad_y.sum(0, dtype=weight.dtype), None
