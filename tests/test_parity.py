"""Our model against transformers' Longformer on the same weights: outputs and gradients."""

import pytest
import torch
from transformers import LongformerModel as HFModel

from longformer import LongformerModel, kernels
from longformer.hf import rename_hf_state_dict
from tests.helpers import assert_same_gradients, grads, relative_error, split_key_bias

# The windows of the small model are [8, 4, 16]: one-sided 4, 2 and 8 tokens.
LENGTHS = [3, 8, 9, 16, 17, 61]  # shorter than, equal to, one above and several times the windows


def make_batch(n: int, globals_: str, seed: int = 0):
    """Three rows with different padding; global attention on none, the first or several tokens."""
    gen = torch.Generator().manual_seed(seed + n)
    ids = torch.randint(3, 120, (3, n), generator=gen)
    mask = torch.ones(3, n, dtype=torch.long)
    mask[1, max(1, n - 2):] = 0
    mask[2, max(1, n // 2):] = 0
    ids[mask == 0] = 1  # pad token
    glob = torch.zeros(3, n, dtype=torch.long)
    if globals_ in ("first", "several"):
        glob[:, 0] = 1
    if globals_ == "several":
        glob[0, n // 2] = 1
        glob[0, n - 1] = 1
        glob[2, min(1, n - 1)] = 1
        glob[1, n - 1] = 1  # on a padded position in row 1: must be ignored
    return ids, mask, glob


@pytest.fixture(scope="module")
def models(hf_checkpoint):
    return HFModel.from_pretrained(hf_checkpoint, add_pooling_layer=False), LongformerModel.from_hf(hf_checkpoint)


def run_both(models, n, globals_, train):
    hf, ours = models
    hf.train(train)
    ours.train(train)
    ids, mask, glob = make_batch(n, globals_)
    return hf(ids, attention_mask=mask, global_attention_mask=glob).last_hidden_state, ours(ids, mask, glob), mask


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train-dropout0"])
@pytest.mark.parametrize("globals_", ["none", "first", "several"])
@pytest.mark.parametrize("n", LENGTHS)
def test_forward_matches_transformers(models, n, globals_, train, path):
    with torch.no_grad():
        expected, actual, mask = run_both(models, n, globals_, train)
    assert actual.shape == expected.shape == (3, n, 32)
    valid = mask.bool()
    assert (actual[valid] - expected[valid]).abs().max().item() <= 1e-5


@pytest.mark.parametrize("globals_", ["none", "first", "several"])
@pytest.mark.parametrize("n", [9, 17, 61])
def test_gradients_match_transformers(models, n, globals_, path):
    forward_backward(models, n, globals_)
    assert_same_gradients(*models, globals_)


def test_gradient_checkpointing_gives_same_gradients(models):
    _, ours = models
    ours.train()
    ids, mask, glob = make_batch(40, "several")
    grads = []
    for checkpointing in (False, True):
        ours.zero_grad()
        ours.gradient_checkpointing = checkpointing
        ours(ids, mask, glob)[mask.bool()].square().sum().backward()
        grads.append({k: p.grad.clone() for k, p in ours.named_parameters()})
    ours.gradient_checkpointing = False
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7, msg=name)


def test_output_does_not_depend_on_extra_padding(models):
    _, ours = models
    ours.eval()
    ids, mask, glob = make_batch(20, "several")
    padded = [torch.nn.functional.pad(t, (0, 13), value=v) for t, v in ((ids, 1), (mask, 0), (glob, 0))]
    with torch.no_grad():
        short, long = ours(ids, mask, glob), ours(*padded)
    valid = mask.bool()
    assert (long[:, :20][valid] - short[valid]).abs().max() <= 1e-6


def test_global_only_output_equals_full_output_at_global_tokens(models):
    _, ours = models
    ours.eval()
    ids, mask, glob = make_batch(37, "several")
    masks_glob = glob.bool() & mask.bool()
    with torch.no_grad():
        full = ours(ids, mask, glob)
        only = ours(ids, mask, glob, global_only=True)  # (B, G, D), global tokens in position order
    for row in range(3):
        count = int(masks_glob[row].sum())
        torch.testing.assert_close(only[row, :count], full[row, masks_glob[row]], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# bf16 autocast (CPU and GPU), and fp32 on a GPU (skipped without one), where ours runs its portable SDPA path.

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module", params=["cpu", pytest.param("cuda", marks=needs_cuda)])
def device_models(request, hf_checkpoint):
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 on both sides (the default, made explicit)
    device = request.param
    return (HFModel.from_pretrained(hf_checkpoint, add_pooling_layer=False).to(device),
            LongformerModel.from_hf(hf_checkpoint).to(device))


def forward_backward(models, n: int, globals_: str, autocast: bool = False):
    """Outputs (fp32) of both models on one batch, after a backward of a fixed random projection of them."""
    hf, ours = models
    device = next(ours.parameters()).device
    ids, mask, glob = (t.to(device) for t in make_batch(n, globals_))
    weights = torch.randn(3, n, ours.config.hidden_size, generator=torch.Generator().manual_seed(1))
    weights = weights.to(device) * mask[..., None]
    outputs = []
    for model in models:
        model.train()  # dropout is 0: train mode only makes both take their training code paths
        model.zero_grad()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            out = model(ids, attention_mask=mask, global_attention_mask=glob)
        out = getattr(out, "last_hidden_state", out).float()
        (out * weights).sum().backward()
        outputs.append(out.detach())
    return *outputs, mask


def flat_gradients(models) -> tuple[torch.Tensor, torch.Tensor]:
    """Both models' gradients as one vector each, in the same order, without the key biases (pure noise)."""
    hf, ours = models
    expected, _ = split_key_bias(rename_hf_state_dict(grads(hf)))
    actual, _ = split_key_bias(grads(ours))
    return torch.cat([expected[k].flatten() for k in expected]), torch.cat([actual[k].flatten() for k in expected])


@pytest.mark.parametrize("device_models", [pytest.param("cuda", marks=needs_cuda)], indirect=True)
@pytest.mark.parametrize("globals_", ["none", "first", "several"])
@pytest.mark.parametrize("n", [3, 17, 61])
def test_cuda_forward_and_gradients_match_transformers(device_models, n, globals_):
    expected, actual, mask = forward_backward(device_models, n, globals_)
    valid = mask.bool()
    assert (actual[valid] - expected[valid]).abs().max().item() <= 1e-5
    assert_same_gradients(*device_models, globals_)


@pytest.mark.parametrize("n", [17, 61])
def test_bf16_autocast_is_as_accurate_as_transformers(device_models, n):
    """Under bf16 autocast both drift from the fp32 result; ours must not drift further than transformers does,
    in outputs or gradients."""
    reference, _, mask = forward_backward(device_models, n, "several")
    reference_grad, _ = flat_gradients(device_models)
    theirs, ours, _ = forward_backward(device_models, n, "several", autocast=True)
    theirs_grad, ours_grad = flat_gradients(device_models)
    valid = mask.bool()
    reference = reference[valid]
    errors = dict(output=(relative_error(ours[valid], reference), relative_error(theirs[valid], reference)),
                  gradient=(relative_error(ours_grad, reference_grad), relative_error(theirs_grad, reference_grad)))
    for ours_error, theirs_error in errors.values():
        assert 0 < ours_error <= 2 * theirs_error, errors  # 0 < : bf16 really ran


def test_fp32_on_the_cpu_runs_the_kernels_and_disabled_runs_none(models, monkeypatch):
    """The dispatch: every layer's attention and feed-forward go to the kernels, unless switched off."""
    _, ours = models
    calls = []
    for name in ("banded_attention", "add_and_feed_forward"):
        real = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *args, _real=real, _name=name: calls.append(_name) or _real(*args))
    ids, mask, glob = make_batch(37, "first")
    with torch.no_grad():
        ours(ids, mask, glob)
        assert sorted(calls) == sorted(["banded_attention", "add_and_feed_forward"] * len(ours.layers))
        calls.clear()
        with kernels.disabled():
            ours(ids, mask, glob)
        assert calls == [] and kernels.enabled(ids.float())
