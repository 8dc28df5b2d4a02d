"""The CPU dropout (`longformer.kernels.dropout`): the rate, the scale, the gradient, and the seeding rules of
F.dropout."""

import pytest
import torch

from longformer.kernels.dropout import dropout, keep_mask, pack_bits, unpack_bits


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_mask_keeps_at_rate_one_minus_p(p):
    mask = keep_mask(torch.empty(1_000_003), p)  # not a multiple of 4: the last number's lanes are partly used
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    sigma = (p * (1 - p) / mask.numel()) ** 0.5
    assert abs((1 - mask.mean().item()) - p) < 5 * sigma


def test_dropout_zeroes_at_rate_p_scales_the_rest_and_passes_the_same_mask_back():
    p = 0.3
    x = torch.rand(512, 512, dtype=torch.float64) + 0.5  # no zeros of its own
    x.requires_grad_(True)
    out = dropout(x, p)
    kept = out != 0
    assert abs((1 - kept.double().mean().item()) - p) < 0.01  # 262k elements: sigma ~ 0.001
    torch.testing.assert_close(out[kept], x[kept] / (1 - p), rtol=1e-15, atol=0)
    grad = torch.randn_like(x)
    out.backward(grad)
    torch.testing.assert_close(x.grad, grad * kept / (1 - p), rtol=1e-15, atol=0)


def test_dropout_follows_the_global_seed_and_is_identity_at_zero():
    x = torch.randn(64, 96)
    torch.manual_seed(3)
    first = dropout(x, 0.2)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.2), first)
    assert not torch.equal(dropout(x, 0.2), first)
    assert torch.equal(dropout(x, 0.0), x)
    assert not dropout(x, 1.0).any()


def test_dropout_gradient_against_finite_differences():
    x = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)

    def seeded(t):
        torch.manual_seed(0)  # gradcheck calls the function many times: the same mask each time
        return dropout(t, 0.4)

    assert torch.autograd.gradcheck(seeded, (x,))


def test_bits_pack_every_byte_and_unpack_to_the_same_decisions():
    """Every pattern of eight decisions packs to its byte (decision k: bit k); unpacked into any dtype and any count
    up to the packed one, the decisions come back in order."""
    patterns = torch.arange(256)
    decisions = (patterns[:, None] >> torch.arange(8) & 1).bool().flatten()  # (256 * 8,)
    assert torch.equal(pack_bits(decisions), patterns.to(torch.uint8))
    many = keep_mask(torch.empty(8 * 1001, dtype=torch.bool), 0.3)
    for count, dtype in ((8 * 1001, torch.float32), (8 * 1001 - 5, torch.bfloat16), (13, torch.float64)):
        out = unpack_bits(pack_bits(many), torch.empty(count, dtype=dtype))
        assert torch.equal(out, many[:count].to(dtype))
