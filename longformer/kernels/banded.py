"""Window + global-key attention with the q/k/v projection fused in: on PyTorch's CPU flash-attention kernels in fp32,
with the softmax written out (bf16 products, fp32 softmax) in bf16 and under attention dropout.

The same computation as `longformer.attention.sliding_window_attention` (the reference), laid out so that nothing
is copied: see `BandedAttention`. Under bf16 autocast q, k, v and the output are bf16, as on the reference; the
products accumulate in fp32, and the softmax, the global keys and the gradients' sums are taken in fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from longformer.kernels.blocks import BandMasks, gather_rows, padded_length, query_block
from longformer.kernels.dropout import keep_mask, pack_bits, unpack_bits, words_for
from longformer.kernels.onednn import linear_into, mm, weight_grad, without_autocast
from longformer.kernels.paths import compute_dtype

_BACKWARD_CHUNK_TOKENS = 1024  # queries per flash-attention backward call: its window gradients stay small
# PyTorch's CPU flash kernels' backward computes at the fp32 rate in any dtype: bf16 training writes the softmax out,
# on bf16 products (bf16 inference keeps the flash forward, as fast).
_FLASH_DTYPES = (torch.float32, torch.float64)
_STRIDED_PRODUCT_DTYPES = (torch.float32, torch.float64)  # whose bmm takes a strided window transposed, uncopied
# Queries per block, at most (see _query_block), per path: a smaller block computes fewer scores outside the band
# but makes the products smaller; docs/performance.md has the measurements behind these.
_WRITTEN_OUT_BLOCK = 64  # the written-out softmax (bf16, or attention dropout)
_WRITTEN_OUT_CHUNK_SCORES = 1 << 18  # scores per chunk of its blocks, at most (one block may hold more): _score_work
_FORWARD_BLOCK = 64  # the flash kernel's forward alone
_TRAINING_BLOCK = 128  # its forward + backward


def banded_attention(x: Tensor, weight: Tensor, bias: Tensor, band: BandMasks, global_index: Tensor,
                     global_present: Tensor, num_heads: int, one_sided: int, dropout_p: float = 0.0,
                     global_rows: Tensor | None = None) -> Tensor:
    """x (B, n, D) -> (B, n, D): window + global-key attention with the fused q/k/v projection (weight, bias), on the
    CPU: no copies of q/k/v or of the windows, less saved for backward, the global rows written in place. The output
    is in the products' dtype (`compute_dtype`).

    band: the window keys (`BandMasks`); global_index (B, G): the global positions first, spare slots after;
    global_present (B, G): the slot holds a real global token; global_rows (B, G, D): the global tokens' outputs,
    which replace their rows.
    """
    dtype = compute_dtype(x)
    training = torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                               for t in (x, weight, bias, global_rows))  # a backward follows
    flash = _flash(dtype, dropout_p, training)
    mask, block, pad = band.mask(one_sided, _query_block(one_sided, flash, training), dtype)  # additive
    seed = int(torch.randint(2**62, ())) if dropout_p else 0  # from the global RNG: torch.manual_seed rules
    with without_autocast():
        global_rows = None if global_rows is None else global_rows.to(dtype)
        return BandedAttention.apply(x.to(dtype), weight, bias, num_heads, mask, block, pad, flash, global_index,
                                     global_present, dropout_p, seed, global_rows).flatten(2)


def _accumulation(dtype: torch.dtype) -> torch.dtype:
    """The dtype sums and softmaxes of products in `dtype` are taken in: fp32, or wider."""
    return torch.promote_types(dtype, torch.float32)


def _flash(dtype: torch.dtype, dropout_p: float, training: bool) -> bool:
    """Whether the flash kernels compute (`training`: a backward follows): they have no dropout, and in bf16 their
    backward computes at the fp32 rate."""
    return not dropout_p and (dtype in _FLASH_DTYPES or not training)


def _query_block(one_sided: int, flash: bool, training: bool) -> int:
    """Queries per block of `BandedAttention` (`query_block`), at most the block its path takes: smaller blocks
    compute fewer scores outside the band, but the products get smaller too, and in the flash kernels' backward
    that costs more below 128 queries than it saves."""
    if not flash:
        return query_block(one_sided, _WRITTEN_OUT_BLOCK)
    return query_block(one_sided, _TRAINING_BLOCK if training else _FORWARD_BLOCK)


class BandedAttention(torch.autograd.Function):
    """The q/k/v projection, then window + global-key attention on PyTorch's CPU flash-attention kernels, or with the
    softmax written out on the same layout a few blocks at a time (`_window_written_out_*`): under attention
    dropout, which those kernels lack, and in bf16 training, where their backward computes at the fp32 rate. The
    picture of the layout and the invariants forward and backward share: docs/kernels.md.

    Tokens are laid out as rows: the batch's sequences (each padded to a multiple of the block L) end to end,
    with P zero rows before and after, so block t's L + 2P keys are rows [t L, t L + L + 2P): an
    overlapping strided *view*, not a copy (the mask hides rows of other sequences). The projection writes
    q, k and v straight into these rows, so no separate qkv tensor is made and copied. The G global keys,
    which every query also sees, are a small dense attention, merged in through the log-sum-exps. In
    backward, the flash kernel given the merged output and log-sum-exp yields exactly the window part of
    the gradients (the softmax is over the union); the global part is done densely. The global queries' rows
    of the output are then `global_rows` (their outputs from `global_attention`), written in place; their
    log-sum-exps are set to +inf, so backward recomputes their window probabilities as 0.
    Saved: the input x, the padded q, k, v rows and the output; the windows are never materialised. Dropout's
    masks are saved as bits, one per score (`_DropoutMasks`).
    Everything runs in x's dtype but the log-sum-exps, the global keys' part and the written-out softmax (fp32);
    the gradients are summed in fp32 and returned in their inputs' dtypes.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, heads: int, mask: Tensor, block: int, pad: int,
                flash: bool, global_index: Tensor, global_present: Tensor, dropout_p: float = 0.0, seed: int = 0,
                global_rows: Tensor | None = None) -> Tensor:
        batch, n, dim = x.shape
        head_dim = dim // heads
        n_pad = padded_length(n, block)
        rows = x.new_empty(pad + batch * n_pad + pad, 3, heads, head_dim)
        rows[:pad] = 0
        rows[rows.shape[0] - pad:] = 0
        tokens = _token_rows(rows, pad, batch)  # (B, n_pad, 3, H, d)
        for i in range(batch):
            linear_into(tokens[i, :n].view(n, 3 * dim), x[i], weight, bias)  # q, k, v of sequence i
        tokens[:, n:] = 0
        scale = head_dim ** -0.5
        q, k, v = _blocked(rows, block, pad)
        dropped = _DropoutMasks(dropout_p, seed) if dropout_p else None
        if flash:
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                q, k, v, attn_mask=mask, scale=scale)  # (T, H, L, d), (T, H, L)
        else:
            out, lse = _window_written_out_forward(q, k, v, mask, scale, dropped)
        out_tokens, lse_tokens = _tokens_first(out, lse, batch)  # (B, n_pad, H, d), (B, n_pad, H): views
        if global_index.shape[1]:
            for i in range(batch):
                _merge_global_keys(tokens[i], global_index[i], global_present[i], out_tokens[i], lse_tokens[i], scale,
                                   dropped)
                if global_rows is not None:
                    _put_global_rows(global_rows[i].view(-1, heads, head_dim), global_index[i], global_present[i],
                                     out_tokens[i], lse_tokens[i])
        dropout_bits = dropped.bits() if dropped else None
        ctx.save_for_backward(x, weight, rows, mask, out, lse, global_index, global_present, dropout_bits)
        ctx.block, ctx.pad, ctx.flash, ctx.scale, ctx.dropout_p = block, pad, flash, scale, dropout_p
        return out_tokens[:, :n]

    @staticmethod
    @without_autocast()  # a backward run under autocast (inside its block) keeps our dtypes
    def backward(ctx, grad_out: Tensor):
        x, weight, rows, mask, out, lse, global_index, global_present, dropout_bits = ctx.saved_tensors
        block, pad, scale = ctx.block, ctx.pad, ctx.scale
        batch, n = grad_out.shape[:2]
        tokens = _token_rows(rows, pad, batch)
        n_pad = tokens.shape[1]
        grad = F.pad(grad_out, (0, 0, 0, 0, 0, n_pad - n)) if n_pad > n else grad_out.contiguous()  # (B, n_pad, H, d)
        grad_blocks = grad.view(-1, block, *grad.shape[2:]).transpose(1, 2)  # (T, H, L, d), laid out as out is
        q, k, v = _blocked(rows, block, pad)
        grad_rows = torch.zeros(rows.shape, dtype=_accumulation(rows.dtype))  # summed over overlapping windows
        grad_tokens = _token_rows(grad_rows, pad, batch)
        grad_q = _blocked(grad_rows, block, pad)[0]
        dropped = _DropoutMasks.replaying(ctx.dropout_p, dropout_bits) if ctx.dropout_p else None  # the forward's
        if ctx.flash:
            _window_flash_backward(grad_blocks, q, k, v, out, lse, mask, scale, grad_q, grad_rows, block)
        else:
            _window_written_out_backward(grad_blocks, q, k, v, out, lse, mask, scale, dropped, grad_q, grad_rows,
                                         block)
        if global_index.shape[1]:
            out_tokens, lse_tokens = _tokens_first(out, lse, batch)
            for i in range(batch):
                _global_keys_backward(tokens[i], global_index[i], global_present[i], out_tokens[i], lse_tokens[i],
                                      grad[i], grad_tokens[i], scale, dropped)
        grad_qkv = grad_tokens[:, :n].reshape(batch * n, -1)  # (B n, 3 D); a copy only if sequences were padded
        grad_bias = grad_qkv.sum(0, dtype=weight.dtype)
        grad_qkv = grad_qkv.to(x.dtype)  # the products' dtype
        grad_x = mm(grad_qkv, weight).view(x.shape)
        grad_global_rows = None
        if ctx.needs_input_grad[-1]:  # global_rows, the output's global rows: theirs is the output's gradient
            grad_global_rows = torch.where(global_present[..., None], gather_rows(grad_out, global_index).flatten(2),
                                           0)
        grad_weight = weight_grad(grad_qkv, x.reshape(batch * n, -1))
        return (grad_x, grad_weight, grad_bias) + (None,) * 9 + (grad_global_rows,)


def _window_flash_backward(grad: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, mask: Tensor,
                           scale: float, grad_q: Tensor, grad_rows: Tensor, block: int) -> None:
    """The window part of the gradients on the flash kernel: written to grad_q (T, H, L, d), a view of grad_rows
    (P + N + P, 3, H, d), and added to grad_rows' keys and values. Given the merged output and log-sum-exp, the kernel
    computes the softmax over the window and the global keys."""
    # A few blocks at a time: the kernel's window gradients stay small (no fresh, page-faulting buffers).
    step = max(1, _BACKWARD_CHUNK_TOKENS // block)
    for first in range(0, q.shape[0], step):
        part = slice(first, first + step)
        grad_q[part], grad_k, grad_v = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            grad[part], q[part], k[part], v[part], out[part], lse[part], 0.0, False, attn_mask=mask[part], scale=scale)
        _add_windows_grad(grad_rows[:, 1], grad_k, block, first)
        _add_windows_grad(grad_rows[:, 2], grad_v, block, first)


class _DropoutMasks:
    """Attention dropout's masks (`keep_mask`'s: 1 = keep, 0 = drop, in the probabilities' dtype, for a plain
    multiply). Forward draws them from a generator seeded once per forward and keeps them as bits (`bits()`, saved
    for backward); backward reads them back in the same order (`replaying`) rather than draw them again. Callers
    apply the kept ones' scale, `scale` = 1 / (1 - p), to the smallest tensor at hand."""

    def __init__(self, p: float, seed: int = 0, replayed: Tensor | None = None):
        self.p, self.scale = p, 1 / (1 - p)
        self.generator = torch.Generator().manual_seed(seed)
        # reused: fresh memory would page-fault on every draw
        self.words = torch.empty(0, dtype=torch.int64)
        self.decisions = torch.empty(0, dtype=torch.bool)
        self.drawn: list[Tensor] = []  # forward's masks, as bits
        self.replayed, self.offset = replayed, 0  # backward's: all of forward's bits, and how many bytes are read

    @classmethod
    def replaying(cls, p: float, bits: Tensor) -> _DropoutMasks:
        """The masks of the forward whose `bits()` these are, in its order."""
        return cls(p, replayed=bits)

    def bits(self) -> Tensor:
        """Every mask drawn so far, as bits (uint8), in order."""
        return torch.cat(self.drawn) if self.drawn else torch.empty(0, dtype=torch.uint8)

    def __call__(self, out: Tensor) -> Tensor:
        """Fill out (floating point, contiguous) with the next mask; returns it."""
        count = out.numel()
        size = -(-count // 8)  # bytes of bits
        if self.replayed is not None:
            self.offset += size
            return unpack_bits(self.replayed[self.offset - size:self.offset], out)
        if self.words.numel() < words_for(count):
            self.words = torch.empty(words_for(count), dtype=torch.int64)
        if self.decisions.numel() < 8 * size:
            self.decisions = torch.empty(8 * size, dtype=torch.bool)
        decisions = self.decisions[:8 * size]
        decisions[count:] = False  # pack_bits takes whole bytes of 0/1
        keep_mask(decisions[:count], self.p, self.generator, self.words)
        self.drawn.append(pack_bits(decisions))
        return out.copy_(decisions[:count].view(out.shape))


def _window_written_out_forward(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float,
                                dropped: _DropoutMasks | None) -> tuple[Tensor, Tensor]:
    """Window attention with the softmax written out, a chunk of blocks at a time: the scores are q's products in
    q's dtype (bf16 products at the bf16 rate, fp32 sums), their softmax in fp32, dropped out (if `dropped`), then
    multiplied with v in q's dtype. out (T, H, L, d) and log-sum-exp (T, H, L), laid out token-major in memory, as
    the flash kernel lays out its own."""
    blocks, heads, block, head_dim = q.shape
    out = q.new_empty(blocks, block, heads, head_dim).transpose(1, 2)
    lse = q.new_empty(blocks, block, heads, dtype=_accumulation(q.dtype)).transpose(1, 2)
    products, work, windows = _score_work(q, k, 3)
    for part in _chunks(blocks, work.shape[1]):
        c = part.stop - part.start
        keys = _heads_batched(_packed(k[part], windows))
        raw = _window_scores(_heads_batched(q[part]), keys, mask[part], scale, products[:c])  # (c, H, L, L + 2P)
        probs, keep, scratch = work[:, :c]
        torch.ops.aten.softmax.int_out(_in_dtype_of(scratch, raw), -1, probs.dtype, out=probs)
        # the log-sum-exp from the largest score, whose probability never underflows: top - log(its probability)
        lse[part] = raw.amax(-1).to(lse.dtype).sub_(probs.amax(-1).log_())
        kept = _kept(probs, dropped, keep, scratch, raw)
        out_c = _scaled_product(_heads_batched(kept), _heads_batched(v[part]), dropped.scale if dropped else 1)
        out[part] = out_c.view(c, heads, block, head_dim)
    return out, lse


def _window_written_out_backward(grad: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                                 mask: Tensor, scale: float, dropped: _DropoutMasks | None, grad_q: Tensor,
                                 grad_rows: Tensor, block: int) -> None:
    """As `_window_flash_backward`, with the softmax written out, a chunk of blocks at a time: the probabilities are
    recomputed from the merged log-sum-exp (so they are those of the softmax over the window and the global keys),
    dropout's masks read back. The products are in q's dtype and what lies between them in fp32; the casts to q's
    dtype are fused into the elementwise op before each product, and the scales (the softmax's, dropout's
    1 / (1 - p)) go into the products, so that each operand is rounded to bf16 once."""
    products, work, windows = _score_work(q, k, 3)
    window_grads = k.new_empty(work.shape[1], *k.shape[1:])  # a chunk's keys' or values' gradients, (c, H, L + 2P, d)
    # the same in grad_rows' dtype, to add them: a bf16 operand of an fp32 add would be copied afresh every time
    widened = window_grads if k.dtype == grad_rows.dtype else torch.empty(window_grads.shape, dtype=grad_rows.dtype)
    keep_scale = dropped.scale if dropped else 1
    for part in _chunks(q.shape[0], work.shape[1]):
        c = part.stop - part.start
        q_c, k_c, grad_c, out_c = (_heads_batched(t[part]) for t in (q, k, grad, out))
        keys = k_c if windows is None else _heads_batched(_packed(k[part], windows))  # the scores' keys, as forward's
        raw = _heads_batched(_window_scores(q_c, keys, mask[part], scale, products[:c]))
        probs, keep, scratch = (_heads_batched(t) for t in work[:, :c])  # fp32, like raw (c H, L, L + 2P)
        torch.sub(_in_dtype_of(probs, raw), _heads_batched(lse[part, ..., None]), out=probs).exp_()
        v_c = _heads_batched(_packed(v[part], windows))  # k's copy is spent
        kept = _kept(probs, dropped, keep, scratch, raw)
        grad_v = _scaled_product(kept.transpose(1, 2), grad_c, keep_scale, out=_heads_batched(window_grads[:c]))
        _add_windows_grad(grad_rows[:, 2], _in_dtype_of(widened[:c], window_grads[:c]), block, part.start)
        delta = (grad_c.to(probs.dtype) * out_c).sum(-1, keepdim=True)  # softmax backward's row term, (c H, L, 1)
        grad_kept = _in_dtype_of(scratch, _scaled_product(grad_c, v_c.transpose(1, 2), keep_scale, out=raw))
        if dropped:
            grad_probs = torch.mul(grad_kept, keep, out=scratch).sub_(delta)
        else:
            grad_probs = torch.sub(grad_kept, delta, out=scratch)
        # without the softmax scale, in the products' dtype; raw is spent
        grad_scores = _in_dtype_of(raw, grad_probs.mul_(probs))
        grad_q[part] = _scaled_product(grad_scores, k_c, scale).view(-1, *q.shape[1:])
        _scaled_product(grad_scores.transpose(1, 2), q_c, scale, out=_heads_batched(window_grads[:c]))  # grad_k
        _add_windows_grad(grad_rows[:, 1], _in_dtype_of(widened[:c], window_grads[:c]), block, part.start)


def _scaled_product(a: Tensor, b: Tensor, alpha: float, out: Tensor | None = None) -> Tensor:
    """alpha (a @ b), batched, the scale applied to the product's sums: a bf16 result is rounded once. (baddbmm
    first copies its zero summand over the whole output: a plain bmm where there is no scale.)"""
    if alpha == 1:
        return torch.bmm(a, b, out=out)
    return torch.baddbmm(a.new_zeros(()), a, b, beta=0, alpha=alpha, out=out)


def _in_dtype_of(buffer: Tensor, t: Tensor) -> Tensor:
    """t in buffer's dtype: t itself, or copied into buffer (whose contents are spent). PyTorch's CPU elementwise ops
    copy an operand of another dtype into a fresh tensor, and write an output of another dtype through one: mixing
    fp32 and bf16 goes through here instead, once, into a reused buffer."""
    return t if t.dtype == buffer.dtype else buffer.copy_(t)


def _kept(probs: Tensor, dropped: _DropoutMasks | None, keep: Tensor, scratch: Tensor, out: Tensor) -> Tensor:
    """The probabilities (fp32) that dropout keeps (zeros elsewhere; its 1 / (1 - p) is left to the product), in the
    products' dtype, out's: probs itself, or written into scratch (fp32) or out, whose contents are spent. keep:
    dropout's mask buffer, drawn into here."""
    if dropped:
        return _in_dtype_of(out, torch.mul(probs, dropped(keep), out=scratch))
    return _in_dtype_of(out, probs)


def _window_scores(q: Tensor, k: Tensor, mask: Tensor, scale: float, scores: Tensor) -> Tensor:
    """A chunk's scaled, masked scores, q (c H, L, d) against k (c H, L + 2P, d; `_packed` in bf16), both
    `_heads_batched`, under mask (c, 1, L, L + 2P, additive: 0 or -inf), into scores (c, H, L, L + 2P), in their dtype.
    One block: one product, the mask its summand, q's strided rows taken as they are (one block's heads batch into a
    view). Several (short windows, whose products are small): one product for all their heads, then the mask added,
    rather than one product per block, each with its fixed cost. Returns scores."""
    if mask.shape[0] == 1:
        torch.baddbmm(mask[0], q, k.transpose(1, 2), alpha=scale, out=scores[0])
        return scores
    _scaled_product(q, k.transpose(1, 2), scale, out=_heads_batched(scores))
    return scores.add_(mask)


def _score_work(q: Tensor, k: Tensor, count: int) -> tuple[Tensor, Tensor, Tensor | None]:
    """Buffers for a chunk of blocks, reused by every chunk (fresh ones would page-fault): the scores' products, in
    q's dtype (c, H, L, L + 2P), `count` more in fp32 (or wider), (count, c, H, L, L + 2P), and one for a chunk's
    windows of keys or values (c, H, L + 2P, d), or None where they are not copied (`_packed`). A chunk holds as many
    blocks as `_WRITTEN_OUT_CHUNK_SCORES` scores allow, at least one: with short windows a block's products are
    small, and one block at a time would spend the step on each operation's fixed cost."""
    per_block = q.shape[1] * q.shape[2] * k.shape[2]
    chunk = max(1, min(q.shape[0], _WRITTEN_OUT_CHUNK_SCORES // per_block))
    shape = (chunk, *q.shape[1:3], k.shape[2])
    windows = None if k.dtype in _STRIDED_PRODUCT_DTYPES else k.new_empty(chunk, *k.shape[1:])
    return q.new_empty(shape), q.new_empty(count, *shape, dtype=_accumulation(q.dtype)), windows


def _packed(windows: Tensor, buffer: Tensor | None) -> Tensor:
    """A chunk's windows (c, H, L + 2P, d), strided views of the rows, for the products that take them transposed:
    in bf16 copied into buffer (c or more, contiguous), since bmm would copy such an operand itself, transposing it as
    it goes, which is slow (after a plain copy it takes the transposed view as it is); in fp32 (no buffer) as they
    are, which bmm takes without a copy."""
    return windows if buffer is None else buffer[:windows.shape[0]].copy_(windows)


def _chunks(blocks: int, chunk: int) -> list[slice]:
    """Slices of at most `chunk` blocks, in order, covering blocks 0 .. blocks - 1."""
    return [slice(first, min(first + chunk, blocks)) for first in range(0, blocks, chunk)]


def _heads_batched(t: Tensor) -> Tensor:
    """(c, H, rows, cols) -> (c H, rows, cols), as bmm takes it: a view where the strides allow (one block, or a
    contiguous chunk), else a copy."""
    return t.reshape(-1, *t.shape[-2:])


def _token_rows(rows: Tensor, pad: int, batch: int) -> Tensor:
    """Rows (P + B n_pad + P, 3, H, d) -> the tokens' rows as (B, n_pad, 3, H, d), a view."""
    return rows[pad:rows.shape[0] - pad].view(batch, -1, *rows.shape[1:])


def _blocked(rows: Tensor, block: int, pad: int) -> tuple[Tensor, Tensor, Tensor]:
    """Rows (P + N + P, 3, H, d) -> views q (T, H, L, d) and overlapping windows k, v (T, H, L + 2P, d)."""
    q = rows[pad:rows.shape[0] - pad, 0]
    q = q.view(-1, block, *q.shape[1:]).transpose(1, 2)
    k, v = (rows[:, i].unfold(0, block + 2 * pad, block).permute(0, 1, 3, 2) for i in (1, 2))
    return q, k, v


def _tokens_first(out: Tensor, lse: Tensor, batch: int) -> tuple[Tensor, Tensor]:
    """The flash kernel's out (T, H, L, d) and lse (T, H, L) as views (B, n_pad, H, d) and (B, n_pad, H): the kernel
    lays them out token-major in memory (`view` would raise, not copy, if that ever changed)."""
    heads, head_dim = out.shape[1], out.shape[3]
    return out.transpose(1, 2).view(batch, -1, heads, head_dim), lse.transpose(1, 2).view(batch, -1, heads)


def _add_windows_grad(grad_rows: Tensor, grad_windows: Tensor, block: int, first: int) -> None:
    """The backward of the overlapping windows: add grad_windows (t, H, L + 2P, d) of blocks first.. to grad_rows
    (R, H, d), where window row j of block b is row b L + j; both in the same dtype (else every add copies)."""
    target = grad_rows.view(-1, block, *grad_rows.shape[1:])  # (R / L, L, H, d)
    blocks = grad_windows.shape[0]
    for c, chunk in enumerate(grad_windows.transpose(1, 2).split(block, dim=1)):  # chunk c goes to block b + c
        target[first + c:first + c + blocks] += chunk


# The global keys' part, one sequence at a time, on heads-first *views* of the token-major rows: (H, n_pad, d) with
# a row stride of 3 H d (or H d), which bmm takes as they are (4-d batched matmuls would copy them).

def _merge_global_keys(tokens: Tensor, global_index: Tensor, present: Tensor, out: Tensor, lse: Tensor,
                       scale: float, dropped: _DropoutMasks | None = None) -> None:
    """Fold the G global keys into one sequence's window attention, in place: out (n_pad, H, d) and lse (n_pad, H) of
    the softmax over the window become those over the window and the global keys. tokens (n_pad, 3, H, d)."""
    q, k_glob, v_glob = _query_and_global_keys(tokens, global_index)
    scores = _global_scores(q, k_glob, present, scale)  # (H, n_pad, G)
    lse, out = lse.T, out.transpose(0, 1)  # (H, n_pad), (H, n_pad, d)
    merged_out = out.to(scores.dtype)  # in fp32: out itself, or a copy of a bf16 one
    merged = torch.logaddexp(lse, scores.logsumexp(-1))
    merged_out.mul_((lse - merged).exp().unsqueeze(-1))
    probs = (scores - merged.unsqueeze(-1)).exp()  # (H, n_pad, G)
    if dropped:
        merged_out.baddbmm_(probs.mul_(dropped(torch.empty_like(probs))), v_glob, alpha=dropped.scale)
    else:
        merged_out.baddbmm_(probs, v_glob)
    if merged_out is not out:
        out.copy_(merged_out)
    lse.copy_(merged)


def _put_global_rows(rows: Tensor, global_index: Tensor, present: Tensor, out: Tensor, lse: Tensor) -> None:
    """Write one sequence's global rows (G, H, d) over its global queries' rows of out (n_pad, H, d), in place, and set
    their log-sum-exps (lse, (n_pad, H)) to +inf: backward then recomputes their probabilities as 0, so the replaced
    window outputs pass no gradient. Spare slots write back what was there."""
    keep = present[:, None]  # (G, 1)
    out.index_copy_(0, global_index, torch.where(keep[..., None], rows, out[global_index]))
    lse.index_copy_(0, global_index, lse[global_index].masked_fill(keep, float("inf")))


def _global_keys_backward(tokens: Tensor, global_index: Tensor, present: Tensor, out: Tensor, lse: Tensor,
                          grad: Tensor, grad_tokens: Tensor, scale: float,
                          dropped: _DropoutMasks | None = None) -> None:
    """Add the global keys' part of one sequence's gradients to grad_tokens (n_pad, 3, H, d): q's through the global
    scores, and the global keys' and values'. out, grad (n_pad, H, d) and lse (n_pad, H) are the merged ones."""
    q, k_glob, v_glob = _query_and_global_keys(tokens, global_index)
    probs = (_global_scores(q, k_glob, present, scale) - lse.T.unsqueeze(-1)).exp()  # (H, n_pad, G)
    grad, out = grad.to(q.dtype), out.to(q.dtype)  # in fp32
    delta = (grad * out).sum(-1).T.unsqueeze(-1)  # softmax backward's row term, (H, n_pad, 1)
    grad = grad.transpose(0, 1)  # (H, n_pad, d)
    # the probabilities after dropout, grad times dropout's 1 / (1 - p), and the probabilities' gradient (H, n_pad, G)
    if dropped:
        keep = dropped(torch.empty_like(probs))
        kept_probs, grad_scaled = probs * keep, grad * dropped.scale
        grad_probs = (grad_scaled @ v_glob.transpose(-1, -2)).mul_(keep)
    else:
        kept_probs, grad_scaled, grad_probs = probs, grad, grad @ v_glob.transpose(-1, -2)
    grad_scores = probs * (grad_probs - delta) * scale
    grad_tokens[:, 0].transpose(0, 1).baddbmm_(grad_scores, k_glob)
    index = global_index[:, None, None].expand(-1, *grad_tokens.shape[2:])  # (G, H, d)
    grad_tokens[:, 1].scatter_add_(0, index, (grad_scores.transpose(-1, -2) @ q).transpose(0, 1))
    grad_tokens[:, 2].scatter_add_(0, index, (kept_probs.transpose(-1, -2) @ grad_scaled).transpose(0, 1))


def _query_and_global_keys(tokens: Tensor, global_index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One sequence's rows (n_pad, 3, H, d) -> q (H, n_pad, d) and the global slots' keys and values (H, G, d), in
    fp32 (copies of bf16 ones)."""
    dtype = _accumulation(tokens.dtype)
    kv = tokens[global_index, 1:].transpose(0, 2).to(dtype)  # (H, 2, G, d)
    return tokens[:, 0].transpose(0, 1).to(dtype), kv[:, 0], kv[:, 1]


def _global_scores(q: Tensor, k_glob: Tensor, present: Tensor, scale: float) -> Tensor:
    """Scaled scores (H, n_pad, G) of one sequence's queries against its global keys; -inf for empty slots."""
    return ((q @ k_glob.transpose(-1, -2)) * scale).masked_fill(~present, float("-inf"))

