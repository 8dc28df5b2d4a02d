"""The blocked layout that both attention paths share: queries in blocks of L, each block seeing its L queries' keys
and P more keys on each side, and the band mask of who may attend to whom in that layout."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor


def gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """x (B, n, ...), index (B, G) -> x's rows at index, (B, G, ...)."""
    index = index.view(*index.shape, *([1] * (x.dim() - 2)))
    return x.gather(1, index.expand(-1, -1, *x.shape[2:]))


def query_block(one_sided: int, most: int) -> int:
    """Queries per block for a window of one_sided keys per side: one_sided halved while it is above `most` and even.
    A block of L queries computes L + 2P scores per query where the band needs 2P + 1, so smaller blocks waste less;
    a divisor of one_sided keeps the blocks' band masks alike."""
    block = one_sided
    while block > most and block % 2 == 0:
        block //= 2
    return block


def padded_length(n: int, block: int) -> int:
    """n rounded up to a multiple of block (a ceil with no negative operand: ONNX truncates integer division)."""
    return (n + block - 1) // block * block


@dataclass
class BandMasks:
    """The band masks of one forward, made from `key_local` (B, n) bool, the keys a window may reach (valid and not
    global), and kept per window, block and dtype: layers with the same window share one."""

    key_local: Tensor
    # Blocks at every length, never one dense block for a short input: the same computation whatever the length,
    # as a graph exported once for all lengths needs.
    fixed_layout: bool = False
    _made: dict[tuple[int, int, torch.dtype | None], tuple[Tensor, int, int]] = field(default_factory=dict, repr=False)

    def mask(self, one_sided: int, block: int, dtype: torch.dtype | None = None) -> tuple[Tensor, int, int]:
        """Mask (B * blocks, 1, L, L + 2P) for blocks of L = `block` queries that each see P = one_sided extra keys
        per side, or for one dense block (L = n, P = 0) when one block's window would hold the whole input anyway;
        bool (True = attend), or additive (0 / -inf) in `dtype`. Also returns L and P."""
        key = (one_sided, block, dtype)
        if key not in self._made:
            if dtype is None:
                self._made[key] = self._band(one_sided, block)
            else:
                allowed, block, pad = self.mask(one_sided, block)
                additive = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
                self._made[key] = additive.masked_fill(~allowed, float("-inf")), block, pad
        return self._made[key]

    def _band(self, w: int, block: int) -> tuple[Tensor, int, int]:
        n = self.key_local.shape[1]
        block, pad = (n, 0) if not self.fixed_layout and n <= block + 2 * w else (block, w)
        n_pad = padded_length(n, block)
        key_ok = F.pad(self.key_local, (pad, pad + n_pad - n), value=False).unfold(1, block + 2 * pad, block)
        device = self.key_local.device
        rel = torch.arange(block + 2 * pad, device=device)[None, :] - pad
        rel = rel - torch.arange(block, device=device)[:, None]  # key pos - query pos, (L, L + 2P)
        # The diagonal is always allowed: padding rows then stay finite; their outputs are never used
        # (and a global query's window row is overwritten by its global output).
        local = ((rel.abs() <= w) & key_ok[:, :, None, :]) | (rel == 0)  # (B, blocks, L, L + 2P)
        return local.flatten(0, 1).unsqueeze(1), block, pad
