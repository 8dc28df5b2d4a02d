"""BandedAttention (q/k/v projection + attention, a custom autograd Function) against finite differences and
the portable SDPA path."""

import pytest
import torch

from longformer import attention
from longformer.attention import AttentionMasks, BandedAttention, sdpa_window_attention


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
@pytest.mark.parametrize("chunk_tokens", [1, 1024])  # backward one block per kernel call, or all at once
def test_banded_attention_gradients_are_exact(n, globals_, chunk_tokens, monkeypatch):
    monkeypatch.setattr(attention, "_BACKWARD_CHUNK_TOKENS", chunk_tokens)
    one_sided = 2
    masks = masks_for(n, globals_)
    mask, block, pad = masks.window_mask(one_sided, torch.float64)
    heads, dim = 2, 8
    gen = torch.Generator().manual_seed(n)
    x, weight, bias = (torch.randn(*shape, dtype=torch.float64, generator=gen, requires_grad=True)
                       for shape in ((2, n, dim), (3 * dim, dim), (3 * dim,)))

    def banded(*inputs):
        return BandedAttention.apply(*inputs, heads, mask, block, pad, masks.global_index, masks.global_present)

    assert torch.autograd.gradcheck(banded, (x, weight, bias))
    qkv = torch.nn.functional.linear(x, weight, bias).view(2, n, 3, heads, dim // heads)
    torch.testing.assert_close(banded(x, weight, bias), sdpa_window_attention(qkv, masks, one_sided), rtol=0,
                               atol=1e-12)


def test_cpu_attention_dropout_is_recomputed_with_the_same_mask():
    """With attention dropout on the CPU the window attention is checkpointed: its output and gradients must be
    those of the direct SDPA call under the same random state (the recomputation replays the dropout mask)."""
    n, heads, dim, one_sided, p = 13, 2, 8, 2, 0.5
    masks = masks_for(n, "several")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, n, dim, generator=gen, requires_grad=True)
    qkv = torch.nn.Linear(dim, 3 * dim)
    inputs = (x, qkv.weight, qkv.bias)
    grad_out = torch.randn(2, n, heads, dim // heads, generator=gen)

    def run(fn):
        torch.manual_seed(1)
        out = fn()
        out.backward(grad_out)
        grads = [t.grad.clone() for t in inputs]
        for t in inputs:
            t.grad = None
        return out.detach(), grads

    def direct_sdpa(dropout_p: float):
        return sdpa_window_attention(qkv(x).view(2, n, 3, heads, dim // heads), masks, one_sided, dropout_p)

    checkpointed = run(lambda: attention.sliding_window_attention(x, qkv, masks, heads, one_sided, p))
    direct = run(lambda: direct_sdpa(p))
    assert not torch.equal(checkpointed[0], run(lambda: direct_sdpa(0.0))[0])  # dropout really was applied
    torch.testing.assert_close(checkpointed[0], direct[0], rtol=0, atol=0)
    for got, want in zip(checkpointed[1], direct[1]):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
