"""Dropout's masks on the CPU, four decisions per random number, kept as bits where they are needed again.

PyTorch's CPU dropout draws one random number per element (`bernoulli_`; MKL's vectorised generator is used
on Intel processors only). Here each 64-bit number from the same kind of generator gives four decisions, as
16-bit lanes compared to a threshold: p is rounded to a multiple of 2^-16, at most 7.6e-6 off. The generator runs
on one core; packing decisions into bits (`pack_bits`) and reading them back (`unpack_bits`) takes a fraction of
drawing them again.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def words_for(count: int) -> int:
    """How many int64 random numbers `keep_mask` draws for count decisions: four 16-bit lanes per number."""
    return (count + 3) // 4


def keep_mask(out: Tensor, p: float, generator: torch.Generator | None = None, words: Tensor | None = None) -> Tensor:
    """Fill out (contiguous) with dropout's decisions, 1 = keep (probability ~1 - p), 0 = drop; returns it.

    generator: None is PyTorch's global one (so `torch.manual_seed` and checkpointing's RNG replay apply).
    words: an int64 buffer of at least `words_for(out.numel())` numbers to draw into, instead of a new one.
    """
    count = out.numel()
    needed = words_for(count)
    words = torch.empty(needed, dtype=torch.int64) if words is None else words[:needed]
    words.random_(-2**63, None, generator=generator)
    threshold = round(p * 2**16) - 2**15  # a uniform int16 falls below it with probability ~p
    return torch.ge(words.view(torch.int16)[:count].view(out.shape), threshold, out=out)


# Eight 0/1 bytes read as a little-endian int64 (byte k = decision k), times _PACK, carry decision k to bit 56 + k and
# nothing else into the top byte. A byte times _SPREAD is in all eight bytes; _BITS keeps bit k in byte k.
_PACK = 0x0102040810204080
_SPREAD = 0x0101010101010101
_BITS = 0x8040201008040201 - 2**64  # as an int64


def pack_bits(decisions: Tensor) -> Tensor:
    """decisions (bool, contiguous, a multiple of 8 of them) -> uint8 bits, eight to a byte (decision 8 i + k is bit k
    of byte i): a mask kept in an eighth of a bool mask's memory."""
    words = decisions.view(torch.uint8).view(torch.int64)
    return ((words * _PACK) >> 56).to(torch.uint8)  # >> sign-extends: the cast keeps the low byte


def unpack_bits(bits: Tensor, out: Tensor) -> Tensor:
    """Fill out (contiguous, at most 8 bits.numel() elements) with the first out.numel() decisions `pack_bits` packed
    into bits, as 1 and 0 in out's dtype; returns it."""
    bytes_ = (bits.to(torch.int64) * _SPREAD).bitwise_and_(_BITS).view(torch.uint8)
    return torch.ne(bytes_[:out.numel()].view(out.shape), 0, out=out)


def dropout(x: Tensor, p: float) -> Tensor:
    """Training-mode dropout of x (as `F.dropout(x, p)`), with `keep_mask`'s masks."""
    if p in (0, 1):  # p = 1: no 1 / (1 - p) to scale by
        return F.dropout(x, p)
    return _CpuDropout.apply(x, p)


class _CpuDropout(torch.autograd.Function):
    """x * mask, the mask holding 0 or 1 / (1 - p) in x's dtype and saved for backward, as PyTorch's CPU dropout
    saves its own (a bool mask would be smaller, but a multiply by it converts it to x's dtype first, every time)."""

    @staticmethod
    def forward(ctx, x: Tensor, p: float) -> Tensor:
        mask = keep_mask(torch.empty_like(x, memory_format=torch.contiguous_format), p).mul_(1 / (1 - p))
        ctx.save_for_backward(mask)
        return x * mask

    @staticmethod
    def backward(ctx, grad: Tensor):
        mask, = ctx.saved_tensors
        return grad * mask, None
