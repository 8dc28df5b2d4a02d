"""Longformer self-attention: a sliding window plus global tokens, exact, in plain PyTorch.

What it computes (the paper's definition, and what `transformers` computes):
  * a regular token i attends to the valid, non-global tokens j with |i - j| <= window // 2, and to every
    global token (keys and values from the ordinary `key`/`value` projections);
  * a global token attends to every valid token through the separate `*_global` projections, and its
    output replaces the sliding-window one.

How it computes it:
  * local part: the sequence is cut into blocks of `w = window // 2` queries; each block attends to the
    `3w` keys around it plus the global keys, in one `scaled_dot_product_attention` call over copied windows.
    Short sequences (n <= 3w) are one dense block with a band mask. Only 1.5x the needed scores are computed
    (transformers: ~2x, with several full copies of the score tensor), and padding goes to a multiple of w,
    not of the window.
  * global part: with G global tokens the `key_global`/`value_global` projections of all n tokens are
    folded into the G queries (q . (W x + b) = (W^T q) . x + q . b), which costs G*heads/hidden of the
    projections (1/64 for the base model with only <s> global).
  * masks and global indices are built once per forward (one host sync), not per layer.

On the CPU in fp32 the local part runs on `longformer.kernels.banded_attention` instead, which computes the same
without copying the windows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

from longformer import kernels
from longformer.kernels.blocks import BandMasks, gather_rows, padded_length, query_block

# Not cuDNN's attention: it builds a graph for every new input shape, and IMDb's lengths vary from batch to batch;
# the memory-efficient kernel takes our masks.
_SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
# Queries per block, at most, in the fixed layout (an exported graph's): a block of L queries computes L + 2P scores
# each, and for a short input most of those are padding.
FIXED_LAYOUT_BLOCK = 64


@dataclass
class AttentionMasks:
    """Who may attend to whom; built once per forward and shared by all layers."""

    valid: Tensor  # (B, n) bool: a real token, not padding
    key_local: Tensor  # (B, n) bool: reachable through the sliding window (valid and not global)
    global_index: Tensor  # (B, G) long: global positions first; spare slots hold distinct non-global positions
    global_present: Tensor  # (B, G) bool: the slot holds a real global token
    # Blocks of window queries at every length (see BandMasks.fixed_layout), of at most FIXED_LAYOUT_BLOCK queries.
    fixed_layout: bool = False
    band: BandMasks = field(init=False, repr=False)  # the window masks, made as the layers ask for them

    def __post_init__(self) -> None:
        self.band = BandMasks(self.key_local, self.fixed_layout)

    @classmethod
    def build(cls, attention_mask: Tensor, global_attention_mask: Tensor) -> AttentionMasks:
        valid = attention_mask.bool()
        is_global = global_attention_mask.bool() & valid  # padding is never global
        num_global = int(is_global.sum(dim=1).max()) if is_global.numel() else 0  # the one host sync
        # A stable sort puts global positions first, in order; the rest of a row's G slots get
        # non-global positions, all distinct, so scattering global outputs back is deterministic.
        order = torch.argsort((~is_global).to(torch.int8), dim=1, stable=True)[:, :num_global]
        return cls(valid, valid & ~is_global, order, is_global.gather(1, order))

    @classmethod
    def first_token_global(cls, attention_mask: Tensor, fixed_layout: bool = False) -> AttentionMasks:
        """Masks where the first token is the only global one (a classifier's <s>/CLS), built without a host sync:
        traceable for any batch and length."""
        valid = attention_mask.bool()
        first = torch.arange(valid.shape[1], device=valid.device) == 0
        return cls(valid, valid & ~first, torch.zeros_like(valid[:, :1], dtype=torch.long), valid[:, :1],
                   fixed_layout=fixed_layout)

    @property
    def num_global(self) -> int:
        return self.global_index.shape[1]

    def window_mask(self, one_sided: int) -> tuple[Tensor, int, int]:
        """The reference path's bool window mask (B * blocks, 1, L, L + 2P), L and P: blocks of one_sided queries
        (in the fixed layout, of at most FIXED_LAYOUT_BLOCK), or one dense block for a short input."""
        return self.band.mask(one_sided, query_block(one_sided, FIXED_LAYOUT_BLOCK) if self.fixed_layout else one_sided)

    def gather(self, x: Tensor) -> Tensor:
        """x (B, n, ...) -> the rows of the global slots, (B, G, ...)."""
        return gather_rows(x, self.global_index)

    def put_global(self, x: Tensor, global_rows: Tensor) -> Tensor:
        """Replace the rows of x (B, n, D) at global positions by global_rows (B, G, D)."""
        keep = self.global_present[..., None]
        # under autocast the two sides can differ (the global rows end in an fp32 bias add): x's dtype wins
        rows = torch.where(keep, global_rows.to(x.dtype), self.gather(x))  # spare slots write back what was there
        return x.scatter(1, self.global_index[..., None].expand_as(rows), rows)


def sliding_window_attention(x: Tensor, qkv: nn.Linear, masks: AttentionMasks, num_heads: int, one_sided: int,
                             dropout_p: float = 0.0, global_rows: Tensor | None = None) -> Tensor:
    """x (B, n, D) -> (B, n, D): the fused q/k/v projection, then every token over its window and the global keys;
    the global tokens' rows are then `global_rows` (B, G, D), their outputs from `global_attention`."""
    batch, n, dim = x.shape
    rows = qkv(x).view(batch, n, 3, num_heads, dim // num_heads)
    if dropout_p and x.device.type == "cpu" and torch.is_grad_enabled():
        # On the CPU, SDPA with dropout is its math kernel, which keeps the (blocks, H, L, G + 3L) scores,
        # probabilities and dropout mask for backward (~0.5 GB a layer at 4096 tokens): recompute them instead,
        # with the same dropout mask (checkpoint restores the RNG state).
        out = checkpoint(sdpa_window_attention, rows, masks, one_sided, dropout_p, use_reentrant=False)
    else:
        out = sdpa_window_attention(rows, masks, one_sided, dropout_p)
    return out.flatten(2) if global_rows is None else masks.put_global(out.flatten(2), global_rows)


def sdpa_window_attention(qkv: Tensor, masks: AttentionMasks, one_sided: int, dropout_p: float = 0.0) -> Tensor:
    """The portable version: each block's window and the global keys copied side by side, one SDPA call."""
    batch, n, _, heads, head_dim = qkv.shape
    q, k, v = qkv.unbind(2)
    local, block, pad = masks.window_mask(one_sided)
    n_pad = padded_length(n, block)
    blocks = n_pad // block
    glob = masks.global_present[:, None, None, None, :].expand(-1, blocks, -1, block, -1).flatten(0, 1)
    mask = torch.cat([glob, local], dim=-1)  # (B * blocks, 1, L, G + L + 2P)
    if masks.fixed_layout:  # an exported graph: a bool mask there is a select over the scores and a NaN check
        mask = torch.zeros(mask.shape, dtype=qkv.dtype, device=mask.device).masked_fill(~mask, float("-inf"))

    # Queries: (B, n_pad, H, d) -> (B * blocks, H, L, d).
    q = F.pad(q, (0, 0, 0, 0, 0, n_pad - n)).view(batch, blocks, block, heads, head_dim)
    q = q.permute(0, 1, 3, 2, 4).flatten(0, 1)

    def keys_per_block(t: Tensor) -> Tensor:  # (B, n, H, d) -> (B * blocks, H, G + L + 2P, d)
        windows = F.pad(t, (0, 0, 0, 0, pad, pad + n_pad - n)).unfold(1, block + 2 * pad, block)
        windows = windows.permute(0, 1, 2, 4, 3)  # (B, blocks, H, L + 2P, d)
        glob = masks.gather(t).transpose(1, 2)[:, None].expand(-1, blocks, -1, -1, -1)  # (B, blocks, H, G, d)
        return torch.cat([glob, windows], dim=3).flatten(0, 1)

    with sdpa_kernel(_SDPA_BACKENDS):
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

    def forward(self, x: Tensor, masks: AttentionMasks, use_kernels: bool = False) -> Tensor:
        """x (B, n, D) -> (B, n, D); use_kernels: on `kernels.banded_attention` (the model decides, once per
        forward), else on the reference path."""
        dropout_p = self.dropout if self.training else 0.0
        global_rows = self.global_rows(x, masks) if masks.num_global else None
        if use_kernels:
            return kernels.banded_attention(x, self.qkv.weight, self.qkv.bias, masks.band, masks.global_index,
                                            masks.global_present, self.num_heads, self.one_sided, dropout_p,
                                            global_rows)
        return sliding_window_attention(x, self.qkv, masks, self.num_heads, self.one_sided, dropout_p, global_rows)

    def global_rows(self, x: Tensor, masks: AttentionMasks) -> Tensor:
        """x (B, n, D) -> attention outputs of the global tokens only, (B, G, D)."""
        dropout_p = self.dropout if self.training else 0.0
        return global_attention(x, masks, self.query_global, self.key_global, self.value_global, self.num_heads,
                                dropout_p)
