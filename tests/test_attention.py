"""The CPU attention kernel, BandedAttention (q/k/v projection + attention, a custom autograd Function), against
finite differences and the reference SDPA path."""

import pytest
import torch

from longformer import attention
from longformer.attention import AttentionMasks, sdpa_window_attention
from longformer.kernels import banded as banded_kernel
from longformer.kernels.banded import BandedAttention


def masks_for(n: int, globals_: str) -> AttentionMasks:
    """Two rows, the second padded; global attention on none, the first or several tokens."""
    attention_mask = torch.ones(2, n, dtype=torch.long)
    attention_mask[1, n - 3:] = 0
    glob = torch.zeros(2, n, dtype=torch.long)
    if globals_ != "none":
        glob[:, 0] = 1
    if globals_ == "several":
        glob[0, n // 2] = 1
        glob[1, 2] = 1
    return AttentionMasks.build(attention_mask, glob)


@pytest.mark.parametrize("globals_", ["none", "first", "several"])
@pytest.mark.parametrize("n", [5, 6, 13])  # one dense block (n <= 3w), and blocked with a padded last block
@pytest.mark.parametrize("dropout_p, flash, chunk_tokens, block_at_most, chunk_scores", [
    # flash kernels; backward one block per kernel call, or all at once
    (0.0, True, 1, 2, 0), (0.0, True, 1024, 2, 0), (0.0, True, 1024, 1, 0),
    # the written-out softmax (bf16's path), without and with dropout: all blocks at once, one at a time, or a few
    # (the last chunk shorter)
    (0.0, False, 1024, 2, 1 << 18), (0.0, False, 1024, 1, 50),
    (0.3, False, 1024, 2, 1 << 18), (0.3, False, 1024, 2, 1), (0.3, False, 1024, 2, 50), (0.3, False, 1024, 1, 50),
])  # blocks of one_sided queries, or fewer
def test_banded_attention_gradients_are_exact(n, globals_, dropout_p, flash, chunk_tokens, block_at_most,
                                              chunk_scores, monkeypatch):
    """Without dropout, outputs and every gradient equal autograd's through the reference path (float64, 1e-12).
    With and without, the Jacobian against finite differences along random directions (gradcheck's fast mode, with
    float64's tolerances: 1e-6 relative), which with dropout also checks that backward draws the forward's masks
    again (a fixed seed makes the function deterministic)."""
    monkeypatch.setattr(banded_kernel, "_BACKWARD_CHUNK_TOKENS", chunk_tokens)
    monkeypatch.setattr(banded_kernel, "_WRITTEN_OUT_BLOCK", block_at_most)
    monkeypatch.setattr(banded_kernel, "_TRAINING_BLOCK", block_at_most)
    monkeypatch.setattr(banded_kernel, "_WRITTEN_OUT_CHUNK_SCORES", chunk_scores)  # 2 heads: 24 scores a block of 2
    one_sided = 2
    masks = masks_for(n, globals_)
    mask, block, pad = masks.band.mask(one_sided, banded_kernel._query_block(one_sided, flash, True), torch.float64)
    heads, dim = 2, 8
    gen = torch.Generator().manual_seed(n)
    inputs = [torch.randn(*shape, dtype=torch.float64, generator=gen, requires_grad=True)
              for shape in ((2, n, dim), (3 * dim, dim), (3 * dim,), (2, masks.num_global, dim))]
    if not masks.num_global:
        inputs.pop()  # no global rows to put

    def banded(x, weight, bias, global_rows=None):
        return BandedAttention.apply(x, weight, bias, heads, mask, block, pad, flash, masks.global_index,
                                     masks.global_present, dropout_p, 123, global_rows).flatten(2)

    def reference(x, weight, bias, global_rows=None):
        qkv = torch.nn.functional.linear(x, weight, bias).view(2, n, 3, heads, dim // heads)
        window = sdpa_window_attention(qkv, masks, one_sided).flatten(2)
        return window if global_rows is None else masks.put_global(window, global_rows)

    for given in (inputs[:3], inputs):  # the global tokens' rows replaced by global_rows, which take their gradient
        assert torch.autograd.gradcheck(banded, given, fast_mode=True, atol=1e-8, rtol=1e-6)
        if dropout_p:
            continue
        ours, theirs = banded(*given), reference(*given)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
        grad_out = torch.randn(ours.shape, dtype=torch.float64, generator=gen)
        for got, want in zip(torch.autograd.grad(ours, given, grad_out), torch.autograd.grad(theirs, given, grad_out)):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_banded_attention_backward_reads_the_forwards_dropout_masks_back(monkeypatch):
    """Backward reads the masks forward drew (kept as bits) and draws none of its own."""
    draws = []
    real = banded_kernel.keep_mask
    monkeypatch.setattr(banded_kernel, "keep_mask", lambda *args: draws.append(1) or real(*args))
    n, one_sided, heads, dim = 13, 2, 2, 8
    masks = masks_for(n, "several")
    mask, block, pad = masks.band.mask(one_sided, 2, torch.float32)
    x, weight, bias = (torch.randn(*shape, requires_grad=True) for shape in ((2, n, dim), (3 * dim, dim), (3 * dim,)))
    out = BandedAttention.apply(x, weight, bias, heads, mask, block, pad, False, masks.global_index,
                                masks.global_present, 0.3, 123)
    drawn = len(draws)
    out.sum().backward()
    assert drawn > 1 and len(draws) == drawn


def test_banded_attention_dropout_zeroes_probabilities_and_rescales_the_rest():
    """With v the one-hot key positions, each output row is the row's attention probabilities: under dropout p every
    one must be 0 or its dropout-free value / (1 - p), about a fraction p of them 0, and the same seed the same."""
    n, dim, one_sided, p = 13, 16, 2, 0.4
    masks = masks_for(n, "several")
    mask, block, pad = masks.band.mask(one_sided, one_sided, torch.float64)
    x = torch.eye(dim, dtype=torch.float64)[:n].expand(2, n, dim)  # token j is e_j
    gen = torch.Generator().manual_seed(0)
    query_key = torch.randn(2 * dim, dim, dtype=torch.float64, generator=gen)
    weight = torch.cat([query_key, torch.eye(dim, dtype=torch.float64)])  # v = x
    bias = torch.zeros(3 * dim, dtype=torch.float64)

    def probabilities(dropout_p: float, seed: int) -> torch.Tensor:  # (2, n, key position)
        return BandedAttention.apply(x, weight, bias, 1, mask, block, pad, not dropout_p, masks.global_index,
                                     masks.global_present, dropout_p, seed)[:, :, 0]

    regular = masks.key_local  # queries that are real and not global (a global query's row is replaced later)
    probs, dropped = probabilities(0.0, 0)[regular], probabilities(p, 7)[regular]  # (queries, key position)
    assert torch.allclose(probs.sum(-1), torch.ones(len(probs), dtype=torch.float64))
    kept = dropped != 0
    assert not (kept & (probs == 0)).any()
    torch.testing.assert_close(dropped[kept], probs[kept] / (1 - p))
    dropped_fraction = 1 - kept[probs > 0].double().mean().item()
    assert 0.25 < dropped_fraction < 0.55, dropped_fraction  # ~150 probabilities: p = 0.4 within ~4 sigma
    assert torch.equal(probabilities(p, 7)[regular], dropped) and not torch.equal(probabilities(p, 8)[regular], dropped)


def test_cpu_autocast_attention_dropout_is_recomputed_with_the_same_mask():
    """Under autocast with attention dropout on the CPU the portable window attention is checkpointed: its output and
    gradients must be those of the direct SDPA call under the same random state (the recomputation replays the
    dropout mask)."""
    n, heads, dim, one_sided, p = 13, 2, 8, 2, 0.5
    masks = masks_for(n, "several")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, n, dim, generator=gen, requires_grad=True)
    qkv = torch.nn.Linear(dim, 3 * dim)
    inputs = (x, qkv.weight, qkv.bias)
    grad_out = torch.randn(2, n, heads, dim // heads, generator=gen)

    def run(fn):
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fn()
        out.backward(grad_out.to(out.dtype))
        grads = [t.grad.clone() for t in inputs]
        for t in inputs:
            t.grad = None
        return out.detach(), grads

    def direct_sdpa(dropout_p: float):
        return sdpa_window_attention(qkv(x).view(2, n, 3, heads, dim // heads), masks, one_sided, dropout_p)

    checkpointed = run(lambda: attention.sliding_window_attention(x, qkv, masks, heads, one_sided, p).unflatten(
        2, (heads, dim // heads)))
    direct = run(lambda: direct_sdpa(p))
    assert not torch.equal(checkpointed[0], run(lambda: direct_sdpa(0.0))[0])  # dropout really was applied
    torch.testing.assert_close(checkpointed[0], direct[0], rtol=0, atol=0)
    for got, want in zip(checkpointed[1], direct[1]):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
