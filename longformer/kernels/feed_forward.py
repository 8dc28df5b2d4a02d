"""A layer's add & norm and feed-forward on oneDNN's products, with the activation recomputed in backward.

The same computation as `longformer.model.Layer.add_and_feed_forward` (the reference).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longformer.kernels.dropout import dropout
from longformer.kernels.onednn import linear, linear_activation, linear_add, linear_into, row_parts, weight_grad

if TYPE_CHECKING:  # for annotations only: the model imports the kernels, not the other way round
    from longformer.model import Layer

_CHUNK_ROWS = 512  # tokens per part of the feed-forward's forward: its (rows, 4 D) activations stay in cache


def add_and_feed_forward(layer: Layer, attended: Tensor, residual: Tensor) -> Tensor:
    """attended, residual (B, n, D) -> the layer's output (B, n, D)."""
    gelu = isinstance(layer.activation, nn.GELU)
    if not (layer.training or torch.is_grad_enabled()):
        return _inference(layer, attended, residual, gelu)
    p = layer.dropout.p if layer.training else 0.0
    x = layer.attn_norm(residual + dropout(linear(attended, layer.attn_out.weight, layer.attn_out.bias), p))
    h = linear(x, layer.ffn_in.weight, layer.ffn_in.bias)
    y = ActivationLinear.apply(h, layer.ffn_out.weight, layer.ffn_out.bias, gelu)
    return layer.ffn_norm(x + dropout(y, p))


def _inference(layer: Layer, attended: Tensor, residual: Tensor, gelu: bool) -> Tensor:
    """Without dropout or autograd, a few hundred rows at a time: the (rows, 4 D) activations are never whole (no
    fresh full-size tensor to page-fault), and the products apply the activation and the residual adds themselves."""
    rows = residual.reshape(-1, residual.shape[-1])  # (N, D)
    x = layer.attn_norm(linear_add(attended.reshape(rows.shape), layer.attn_out.weight, layer.attn_out.bias, rows))
    out = torch.empty_like(x)
    for part in row_parts(x.shape[0], _CHUNK_ROWS):
        h = linear_activation(x[part], layer.ffn_in.weight, layer.ffn_in.bias, "gelu" if gelu else "relu")
        out[part] = linear_add(h, layer.ffn_out.weight, layer.ffn_out.bias, x[part])
    return layer.ffn_norm(out).view(residual.shape)


class ActivationLinear(torch.autograd.Function):
    """y = activation(h) @ W^T + b that saves only h and recomputes activation(h) in backward.

    The activation output is as large as h (4x the hidden states); not keeping it cuts a layer's saved
    activations by about a fifth, for one cheap elementwise recompute. The forward goes a few hundred rows
    at a time, so activation(h) is never whole: its chunk stays in cache and no fresh full-size tensor
    (page faults) is made. Backward reuses one buffer of h's size for activation(h), its gradient and h's
    gradient.
    """

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias: Tensor, gelu: bool) -> Tensor:
        ctx.save_for_backward(h, weight)
        ctx.gelu = gelu
        rows = h.reshape(-1, h.shape[-1])  # (N, inner)
        y = rows.new_empty(rows.shape[0], weight.shape[0])  # (N, D)
        for part in row_parts(rows.shape[0], _CHUNK_ROWS):
            linear_into(y[part], F.gelu(rows[part]) if gelu else F.relu(rows[part]), weight, bias)
        return y.view(*h.shape[:-1], -1)

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        h, weight = ctx.saved_tensors
        grad_y = grad_y.reshape(-1, grad_y.shape[-1]).contiguous()  # (N, D); oneDNN takes no other strides
        buffer = F.gelu(h) if ctx.gelu else F.relu(h)  # activation(h), (..., inner)
        flat = buffer.view(grad_y.shape[0], -1)  # (N, inner), the same memory
        grad_weight = weight_grad(grad_y, flat)
        linear_into(flat, grad_y, weight.T, None)  # grad_y @ weight: now the activation's gradient
        if ctx.gelu:
            torch.ops.aten.gelu_backward.grad_input(buffer, h, grad_input=buffer)  # in place: now h's gradient
        else:
            buffer.masked_fill_(h <= 0, 0)
        return buffer, grad_weight, grad_y.sum(0), None
