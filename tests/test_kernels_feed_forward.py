"""The add & norm + feed-forward kernel (`longformer.kernels.feed_forward`) against the reference formula, on
tensors alone: no model is built."""

import pytest
import torch
import torch.nn.functional as F

from longformer.config import ENCODER_ACTIVATIONS
from longformer.kernels import ACTIVATIONS, FeedForwardWeights, add_and_feed_forward, feed_forward
from longformer.kernels.feed_forward import ActivationLinear
from tests.helpers import relative_error

DIM, INNER, EPS = 16, 48, 1e-5


def random_weights(gen: torch.Generator) -> FeedForwardWeights:
    def pair(rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
        return ((torch.randn(rows, cols, generator=gen) / cols ** 0.5).requires_grad_(),
                (torch.randn(rows, generator=gen) * 0.1).requires_grad_())

    def norm() -> tuple[torch.Tensor, torch.Tensor]:
        return ((1 + 0.1 * torch.randn(DIM, generator=gen)).requires_grad_(),
                (0.1 * torch.randn(DIM, generator=gen)).requires_grad_())

    return FeedForwardWeights(pair(DIM, DIM), norm(), pair(INNER, DIM), pair(DIM, INNER), norm(), EPS)


def reference(attended: torch.Tensor, residual: torch.Tensor, w: FeedForwardWeights, activation: str) -> torch.Tensor:
    """What `longformer.model.Layer.add_and_feed_forward` computes on its modules, without dropout."""
    x = F.layer_norm(residual + F.linear(attended, *w.attn_out), (DIM,), *w.attn_norm, EPS)
    y = F.linear(ACTIVATIONS[activation](F.linear(x, *w.ffn_in)), *w.ffn_out)
    return F.layer_norm(x + y, (DIM,), *w.ffn_norm, EPS)


def test_the_kernels_compute_every_activation_the_config_accepts():
    assert set(ACTIVATIONS) == set(ENCODER_ACTIVATIONS)


@pytest.mark.parametrize("activation", ["gelu", "relu"])
@pytest.mark.parametrize("rows", [7, 1100])  # one part of the inference path, and several (512 rows each)
def test_add_and_feed_forward_equals_the_reference_with_and_without_autograd(activation, rows):
    """fp32 outputs and gradients within fp32 rounding (1e-5 of the norm) of the reference computed in float64."""
    gen = torch.Generator().manual_seed(rows)
    w = random_weights(gen)
    attended, residual = (torch.randn(1, rows, DIM, generator=gen).requires_grad_() for _ in range(2))
    inputs = [attended, residual, *(t for pair in w[:5] for t in pair)]
    exact_inputs = [t.detach().double().requires_grad_() for t in inputs]
    exact_w = FeedForwardWeights(*(tuple(exact_inputs[2 + 2 * i:4 + 2 * i]) for i in range(5)), EPS)
    exact = reference(*exact_inputs[:2], exact_w, activation)
    with torch.no_grad():
        assert relative_error(add_and_feed_forward(attended, residual, w, activation), exact) <= 1e-5
    grad_out = torch.randn(1, rows, DIM, generator=gen)
    ours = torch.autograd.grad(add_and_feed_forward(attended, residual, w, activation), inputs, grad_out)
    exact_grads = torch.autograd.grad(exact, exact_inputs, grad_out.double())
    for i, (got, want) in enumerate(zip(ours, exact_grads)):
        assert relative_error(got, want) <= 1e-5, i


def test_add_and_feed_forward_dropout_follows_the_global_seed():
    """Dropout's masks come from PyTorch's global RNG (so torch.manual_seed and checkpointing's replay rule them):
    the same seed gives the same output, another seed another, both unlike no dropout."""
    gen = torch.Generator().manual_seed(0)
    w = random_weights(gen)
    x = torch.randn(1, 300, DIM, generator=gen)

    def dropped(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return add_and_feed_forward(x, x, w, "gelu", dropout_p=0.5)

    assert torch.equal(dropped(0), dropped(0))
    assert not torch.allclose(dropped(0), dropped(1)) and not torch.allclose(dropped(0), reference(x, x, w, "gelu"))


@pytest.mark.parametrize("activation", ["gelu", "relu"])
@pytest.mark.parametrize("chunk_rows", [3, 512])  # the forward in several chunks (the last one short), or one
def test_activation_linear_gradients_are_exact(activation, chunk_rows, monkeypatch):
    """The feed-forward's second half, which recomputes the activation in backward in one reused buffer."""
    monkeypatch.setattr(feed_forward, "_CHUNK_ROWS", chunk_rows)
    gen = torch.Generator().manual_seed(0)
    h, weight, bias = (torch.randn(*shape, dtype=torch.float64, generator=gen, requires_grad=True)
                       for shape in ((2, 5, 6), (3, 6), (3,)))
    assert torch.autograd.gradcheck(lambda *t: ActivationLinear.apply(*t, activation), (h, weight, bias))
    torch.testing.assert_close(ActivationLinear.apply(h, weight, bias, activation),
                               F.linear(ACTIVATIONS[activation](h), weight, bias), rtol=0, atol=1e-12)
