"""Longformer self-attention: a sliding window plus global tokens, exact and fast.

What it computes (the paper's definition, and what `transformers` computes):
  * a regular token i attends to the valid, non-global tokens j with |i - j| <= window // 2, and to every
    global token (keys and values from the ordinary `key`/`value` projections);
  * a global token attends to every valid token through the separate `*_global` projections, and its
    output replaces the sliding-window one.

How it computes it:
  * local part: the sequence is cut into blocks of `w = window // 2` queries; each block attends to the
    `3w` keys around it (plus the global keys) with one fused scaled-dot-product-attention call over all
    blocks. Short sequences (n <= 3w) are one dense block with a band mask. Only 1.5x the needed scores
    are computed (transformers: ~2x, with several full copies of the score tensor), and padding goes to
    a multiple of w, not of the window.
  * global part: with G global tokens the `key_global`/`value_global` projections of all n tokens are
    folded into the G queries (q . (W x + b) = (W^T q) . x + q . b), which costs G*heads/hidden of the
    projections (1/64 for the base model with only <s> global).
  * masks and global indices are built once per forward (one host sync), not per layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class AttentionMasks:
    """Who may attend to whom; built once per forward and shared by all layers."""

    valid: Tensor  # (B, n) bool: a real token, not padding
    key_local: Tensor  # (B, n) bool: reachable through the sliding window (valid and not global)
    global_index: Tensor  # (B, G) long: global positions first; spare slots hold distinct non-global positions
    global_present: Tensor  # (B, G) bool: the slot holds a real global token
    _window_masks: dict[int, tuple[Tensor, int, int]] = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, attention_mask: Tensor, global_attention_mask: Tensor) -> AttentionMasks:
        valid = attention_mask.bool()
        is_global = global_attention_mask.bool() & valid  # padding is never global
        num_global = int(is_global.sum(dim=1).max()) if is_global.numel() else 0  # the one host sync
        # A stable sort puts global positions first, in order; the rest of a row's G slots get
        # non-global positions, all distinct, so scattering global outputs back is deterministic.
        order = torch.argsort((~is_global).to(torch.int8), dim=1, stable=True)[:, :num_global]
        return cls(valid, valid & ~is_global, order, is_global.gather(1, order))

    @property
    def num_global(self) -> int:
        return self.global_index.shape[1]

    def window_mask(self, one_sided: int) -> tuple[Tensor, int, int]:
        """Mask (B * blocks, 1, L, G + L + 2P) for blocks of L queries, each seeing P extra keys per side."""
        if one_sided not in self._window_masks:
            self._window_masks[one_sided] = self._build_window_mask(one_sided)
        return self._window_masks[one_sided]

    def _build_window_mask(self, w: int) -> tuple[Tensor, int, int]:
        batch, n = self.valid.shape
        block, pad = (n, 0) if n <= 3 * w else (w, w)  # one dense block for short inputs
        n_pad = math.ceil(n / block) * block
        key_ok = F.pad(self.key_local, (pad, pad + n_pad - n), value=False).unfold(1, block + 2 * pad, block)
        rel = torch.arange(block + 2 * pad, device=self.valid.device)[None, :] - pad
        rel = rel - torch.arange(block, device=self.valid.device)[:, None]  # key pos - query pos, (L, L + 2P)
        # The diagonal is always allowed: padding rows then stay finite; their outputs are never used
        # (and a global query's window row is overwritten by its global output).
        local = ((rel.abs() <= w) & key_ok[:, :, None, :]) | (rel == 0)  # (B, blocks, L, L + 2P)
        glob = self.global_present[:, None, None, :].expand(batch, local.shape[1], block, self.num_global)
        mask = torch.cat([glob, local], dim=-1).flatten(0, 1).unsqueeze(1)
        return mask, block, pad

    def gather(self, x: Tensor) -> Tensor:
        """x (B, n, ...) -> the rows of the global slots, (B, G, ...)."""
        index = self.global_index.view(*self.global_index.shape, *([1] * (x.dim() - 2)))
        return x.gather(1, index.expand(-1, -1, *x.shape[2:]))

    def put_global(self, x: Tensor, global_rows: Tensor) -> Tensor:
        """Replace the rows of x (B, n, D) at global positions by global_rows (B, G, D)."""
        keep = self.global_present[..., None]
        rows = torch.where(keep, global_rows, self.gather(x))  # spare slots write back what was there
        return x.scatter(1, self.global_index[..., None].expand_as(rows), rows)


def sliding_window_attention(q: Tensor, k: Tensor, v: Tensor, masks: AttentionMasks, one_sided: int,
                             dropout_p: float = 0.0) -> Tensor:
    """q, k, v (B, n, H, d) -> (B, n, H, d): every token over its window and the global keys."""
    batch, n, heads, head_dim = q.shape
    mask, block, pad = masks.window_mask(one_sided)
    n_pad = math.ceil(n / block) * block
    blocks = n_pad // block

    # Queries: (B, n_pad, H, d) -> (B * blocks, H, L, d).
    if n_pad > n:
        q = F.pad(q, (0, 0, 0, 0, 0, n_pad - n))
    q = q.view(batch, blocks, block, heads, head_dim)
    q = q.permute(0, 1, 3, 2, 4).flatten(0, 1)

    def keys_per_block(t: Tensor) -> Tensor:  # (B, n, H, d) -> (B * blocks, H, G + L + 2P, d)
        windows = F.pad(t, (0, 0, 0, 0, pad, pad + n_pad - n)).unfold(1, block + 2 * pad, block)
        windows = windows.permute(0, 1, 2, 4, 3)  # (B, blocks, H, L + 2P, d)
        glob = masks.gather(t).transpose(1, 2)[:, None].expand(-1, blocks, -1, -1, -1)  # (B, blocks, H, G, d)
        return torch.cat([glob, windows], dim=3).flatten(0, 1)

    out = F.scaled_dot_product_attention(q, keys_per_block(k), keys_per_block(v), attn_mask=mask,
                                         dropout_p=dropout_p)
    out = out.view(batch, blocks, heads, block, head_dim).permute(0, 1, 3, 2, 4).reshape(batch, n_pad, heads, head_dim)
    return out[:, :n]


def global_attention(x: Tensor, masks: AttentionMasks, query: nn.Linear, key: nn.Linear, value: nn.Linear,
                     num_heads: int, dropout_p: float = 0.0) -> Tensor:
    """x (B, n, D) -> (B, G, D): each global token over all valid tokens, with the *_global projections.

    The key and value projections are applied on the G query side instead of to all n tokens.
    """
    batch, n, dim = x.shape
    head_dim = dim // num_heads
    q = query(masks.gather(x)).view(batch, -1, num_heads, head_dim) / math.sqrt(head_dim)  # (B, G, H, d)
    w_k = key.weight.view(num_heads, head_dim, dim)
    q_in = torch.einsum("bghe,hed->bghd", q, w_k)  # (B, G, H, D): queries pulled back to the input space
    scores = torch.einsum("bghd,bnd->bhgn", q_in, x)
    scores = scores + torch.einsum("bghe,he->bhg", q, key.bias.view(num_heads, head_dim))[..., None]
    scores = scores.float().masked_fill(~masks.valid[:, None, None, :], torch.finfo(torch.float32).min)
    probs = F.dropout(scores.softmax(dim=-1).to(x.dtype), p=dropout_p)  # (B, H, G, n)
    context = torch.einsum("bhgn,bnd->bghd", probs, x)  # (B, G, H, D): weighted inputs, then project
    out = torch.einsum("bghd,hed->bghe", context, value.weight.view(num_heads, head_dim, dim))
    return (out + value.bias.view(num_heads, head_dim)).flatten(2)


class LongformerSelfAttention(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, window: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.one_sided = window // 2
        self.dropout = dropout
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)  # query, key, value fused into one matmul
        self.query_global = nn.Linear(hidden_size, hidden_size)
        self.key_global = nn.Linear(hidden_size, hidden_size)
        self.value_global = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: Tensor, masks: AttentionMasks) -> Tensor:
        batch, n, dim = x.shape
        dropout_p = self.dropout if self.training else 0.0
        q, k, v = self.qkv(x).view(batch, n, 3, self.num_heads, dim // self.num_heads).unbind(2)
        out = sliding_window_attention(q, k, v, masks, self.one_sided, dropout_p).reshape(batch, n, dim)
        if masks.num_global:
            out = masks.put_global(out, self.global_rows(x, masks))
        return out

    def global_rows(self, x: Tensor, masks: AttentionMasks) -> Tensor:
        """x (B, n, D) -> attention outputs of the global tokens only, (B, G, D)."""
        dropout_p = self.dropout if self.training else 0.0
        return global_attention(x, masks, self.query_global, self.key_global, self.value_global, self.num_heads,
                                dropout_p)
