"""train.precision: `auto` resolved from the CPU's flags, the kernels in bf16 against the fp32 oracle (on every CPU:
natively where the processor computes bf16, emulated elsewhere), and a resume state of another precision discarded."""

from contextlib import nullcontext

import pytest
import torch

from longformer import LongformerClassifier, LongformerConfig, LongformerModel, kernels
from longformer.errors import ConfigError
from longformer.kernels import onednn, paths
from longformer.pipeline.loop import Best, Position, ResumeState
from longformer.pipeline.precision import resolve_precision
from longformer.pipeline.step import make_optimizer, optimizer_step
from tests.helpers import SAPPHIRE_RAPIDS, SKYLAKE, ZEN3, ZEN4, relative_error
from tests.test_parity import make_batch

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("flags, expected", [(ZEN3, "fp32"), (SKYLAKE, "fp32"), (ZEN4, "bf16"),
                                             (SAPPHIRE_RAPIDS, "bf16"), (set(), "fp32")])
def test_auto_is_bf16_where_the_cpu_computes_it_natively(flags, expected):
    assert resolve_precision("auto", CPU, flags) == expected


def test_auto_is_bf16_on_cuda_and_explicit_precisions_stand():
    assert resolve_precision("auto", CUDA, ZEN3) == "bf16"
    for precision in ("fp32", "bf16"):
        assert resolve_precision(precision, CPU, ZEN3) == precision == resolve_precision(precision, CPU, ZEN4)
    with pytest.raises(ConfigError, match=r"precision must be one of \['auto', 'fp32', 'bf16'\], got 'fp16'"):
        resolve_precision("fp16", CPU)


@pytest.mark.parametrize("flags, expected", [("avx2 fma", "fp32"), ("avx2,avx512f,avx512_bf16", "bf16")])
def test_the_flags_variable_decides_as_that_cpu(monkeypatch, flags, expected):
    """LONGFORMER_CPU_FLAGS replaces the processor's flags in every decision (how the suite runs as another CPU)."""
    monkeypatch.setenv(paths.FLAGS_VARIABLE, flags)
    assert resolve_precision("auto", CPU) == expected
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert kernels.enabled(torch.zeros(1)) == (expected == "bf16")


def test_without_native_bf16_autocast_runs_the_reference_path(monkeypatch):
    """On a CPU without native bf16 the kernels stay fp32: under bf16 autocast the model takes the reference path
    (PyTorch's own bf16 ops), and auto never asks for it."""
    x = torch.zeros(2, 3)
    monkeypatch.setattr(paths, "cpu_flags", lambda: frozenset(ZEN3))
    assert kernels.enabled(x) and resolve_precision("auto", CPU) == "fp32"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not kernels.enabled(x)
    monkeypatch.setattr(paths, "cpu_flags", lambda: frozenset(ZEN4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert kernels.enabled(x)


def test_a_resume_state_of_another_precision_is_discarded_saying_why(tmp_path, capsys):
    state = ResumeState(identity={"params": "p"}, precision="fp32", model={}, optimizer={}, scheduler={},
                        rng=[torch.get_rng_state()], cuda_rng=[None], position=Position(step=3), best=Best(), notes={},
                        live={})
    path = tmp_path / "state.pt"
    state.save(path)
    described = {"params": "the params"}
    assert ResumeState.load(path, {"params": "p"}, "fp32", described, say=True).position.step == 3
    assert ResumeState.load(path, {"params": "p"}, "bf16", described, say=True) is None
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [f"discarding {path}: it was computed in fp32, this run computes in bf16 (train.precision); "
                   "training starts afresh"]


# ---------------------------------------------------------------------------------------------------------------
# The kernels in bf16 against the fp32 oracle: the same model and batch (lengths 9-61, padding, several global tokens,
# per-layer windows 8/4/16), outputs and gradients of a fixed random projection of the outputs.
#
# bf16 keeps 8 significant bits: each product's operands are rounded by up to 2^-9 relative; the residual stream and
# the norms stay fp32, so the outputs drift far less (measured: 9e-5 relative in norm for the outputs, 2e-4 for the
# gradients). The bounds: 1e-3 and 2e-3 (about ten times that), and at most 1.5 times the error of PyTorch's own bf16
# autocast on the reference path (measured: 1.0 times), which catches a sum or softmax left in bf16.

def outputs_and_gradients(model: LongformerModel, n: int, bf16: bool, reference: bool = False,
                          seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids, mask, glob = make_batch(n, "several")
    weights = torch.randn(3, n, model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    model.zero_grad()
    torch.manual_seed(seed)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), kernels.disabled() if reference else nullcontext():
        out = model(ids, mask, glob).float()
    (out * weights * mask[..., None]).sum().backward()
    gradient = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return out[mask.bool()].detach(), gradient, mask


@pytest.fixture(scope="module")
def model(hf_checkpoint):
    return LongformerModel.from_hf(hf_checkpoint)


@pytest.mark.parametrize("n", [9, 17, 61])
def test_bf16_kernels_match_fp32_within_bf16_rounding(model, n, bf16_cpu):
    model.eval()
    out32, grad32, _ = outputs_and_gradients(model, n, bf16=False)
    out16, grad16, _ = outputs_and_gradients(model, n, bf16=True)
    autocast_out, autocast_grad, _ = outputs_and_gradients(model, n, bf16=True, reference=True)
    errors = dict(output=relative_error(out16, out32), gradient=relative_error(grad16, grad32),
                  autocast_output=relative_error(autocast_out, out32),
                  autocast_gradient=relative_error(autocast_grad, grad32))
    assert 0 < errors["output"] <= 1e-3 and 0 < errors["gradient"] <= 2e-3, errors  # 0 < : bf16 really ran
    assert errors["output"] <= 1.5 * errors["autocast_output"], errors
    assert errors["gradient"] <= 1.5 * errors["autocast_gradient"], errors


def test_bf16_kernels_with_dropout_match_fp32_with_the_same_masks(hf_checkpoint, bf16_cpu):
    """In training mode with dropout (attention's and hidden) the masks come from the seed, whatever the dtype: the
    bf16 kernels then match the fp32 ones within the same bounds (measured: 1e-4 and 2.5e-4; other masks: 0.4)."""
    model = LongformerModel.from_hf(hf_checkpoint)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.1
    for layer in model.layers:
        layer.attn.dropout = 0.1
    model.train()
    out32, grad32, _ = outputs_and_gradients(model, 61, bf16=False, seed=7)
    out16, grad16, _ = outputs_and_gradients(model, 61, bf16=True, seed=7)
    errors = relative_error(out16, out32), relative_error(grad16, grad32)
    assert 0 < errors[0] <= 1e-3 and 0 < errors[1] <= 2e-3, errors


def test_bf16_autocast_runs_the_kernels_with_bf16_products(model, monkeypatch, bf16_cpu):
    """bf16 products, by this processor or emulated (the `bf16_cpu` variant; a processor without bf16 emulates both)."""
    calls, emulated = [], []
    real, real_emulated = onednn._inner_product, onednn._emulated
    monkeypatch.setattr(onednn, "_inner_product", lambda x, *rest: calls.append(x.dtype) or real(x, *rest))
    monkeypatch.setattr(onednn, "_emulated", lambda *args: emulated.append(1) or real_emulated(*args))
    ids, mask, glob = make_batch(37, "first")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert kernels.enabled(torch.zeros(1))
        model(ids, mask, glob)
    assert calls and set(calls) == {torch.bfloat16}
    assert len(emulated) == (len(calls) if bf16_cpu == "emulated" or not paths.native_bf16(paths.hardware_flags())
                             else 0)


def test_bf16_forward_after_a_fused_optimizer_step_computes_with_the_new_weights(hf_checkpoint, bf16_cpu):
    """Fused AdamW changes the weights in place without a new tensor version: the bf16 copies of the weights must
    still be made afresh, so the next forward equals that of a model loaded with the stepped weights."""
    model = LongformerModel.from_hf(hf_checkpoint).eval()
    ids, mask, glob = make_batch(33, "several")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as the training loop does: the step outside autocast
        model(ids, mask, glob).float().square().mean().backward()
    optimizer.step()
    fresh = LongformerModel(model.config).eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(model(ids, mask, glob), fresh(ids, mask, glob))


def test_an_optimizer_step_casts_each_weight_once_for_all_its_batches(hf_checkpoint, monkeypatch, bf16_cpu):
    """The bf16 copies of the weights are made once per optimizer step (kept across its micro-batches, dropped before
    the weights change): the steps train exactly as with copies made afresh at every forward."""
    batches = []
    for n in (33, 47, 21):
        ids, mask, _ = make_batch(n, "first")
        batches.append(dict(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1, 1])))

    def train(keep: bool) -> tuple[dict[str, torch.Tensor], list[int]]:
        torch.manual_seed(0)
        model = LongformerClassifier.from_hf(hf_checkpoint).train()
        optimizer = make_optimizer(model, lr=1e-2)  # fused AdamW: changes the weights without a new version
        made = []  # casts made, per optimizer step

        class Casts(dict):  # onednn's cache of casts, counting those it stores
            def __setitem__(self, key, value):
                made[-1] += 1
                super().__setitem__(key, value)

        with monkeypatch.context() as patch:
            patch.setattr(onednn, "_casts", Casts())
            if not keep:
                patch.setattr(kernels, "casts_kept", nullcontext)
            for _ in range(2):
                made.append(0)
                optimizer_step(model, batches, optimizer, autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16))
                assert not (keep and onednn._casts)  # dropped before the optimizer changed the weights
        return model.state_dict(), made

    kept, made_kept = train(keep=True)
    fresh, made_fresh = train(keep=False)
    assert kept.keys() == fresh.keys() and all(torch.equal(kept[k], fresh[k]) for k in kept)
    assert made_kept[0] > 0 and made_kept == [made_fresh[0] // len(batches)] * 2 and made_fresh[0] == made_fresh[1]


# ---------------------------------------------------------------------------------------------------------------
# At the training block size: windows of 512 (blocks of 256 queries in bf16, 128 in fp32; 64 with attention dropout),
# 700 tokens, several global tokens, padding.

def long_window_model(dropout: float) -> LongformerModel:
    torch.manual_seed(3)
    config = LongformerConfig(vocab_size=120, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                              attention_window=[512, 16], max_position_embeddings=1026, hidden_dropout=dropout,
                              attention_dropout=dropout)
    model = LongformerModel(config).train()
    for name, tensor in model.named_parameters():  # initialised as BERT and RoBERTa are (and as transformers' is)
        if name.endswith("weight") and tensor.dim() == 2:
            torch.nn.init.normal_(tensor, std=0.02)
    return model


def long_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, 120, (2, 700), generator=torch.Generator().manual_seed(5))
    mask, glob = torch.ones_like(ids), torch.zeros_like(ids)
    mask[1, 450:] = 0
    ids[mask == 0] = 1
    glob[:, 0] = 1
    glob[0, [300, 699]] = 1
    glob[1, 100] = 1
    return ids, mask, glob


def long_outputs_and_gradients(model: LongformerModel, bf16: bool, backward_inside: bool = False,
                               reference: bool = False):
    ids, mask, glob = long_batch()
    weights = torch.randn(2, 700, 32, generator=torch.Generator().manual_seed(1))
    model.zero_grad()
    torch.manual_seed(11)  # the same dropout masks in every call
    with (torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16),
          kernels.disabled() if reference else nullcontext()):
        out = model(ids, mask, glob).float()
        loss = (out * weights * mask[..., None]).sum()
        if backward_inside:
            loss.backward()
    if not backward_inside:
        loss.backward()
    gradient = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return out[mask.bool()].detach(), gradient


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_bf16_kernels_at_the_training_block_size_match_fp32(dropout, bf16_cpu):
    model = long_window_model(dropout)
    out32, grad32 = long_outputs_and_gradients(model, bf16=False)
    out16, grad16 = long_outputs_and_gradients(model, bf16=True)
    errors = relative_error(out16, out32), relative_error(grad16, grad32)
    assert 0 < errors[0] <= 1e-3 and 0 < errors[1] <= 2e-3, errors
    # PyTorch's own autocast on the reference path, against its fp32 with the same (its own) dropout masks
    reference32, reference_grad32 = long_outputs_and_gradients(model, bf16=False, reference=True)
    reference16, reference_grad16 = long_outputs_and_gradients(model, bf16=True, reference=True)
    assert errors[0] <= 1.5 * relative_error(reference16, reference32), errors
    assert errors[1] <= 1.5 * relative_error(reference_grad16, reference_grad32), errors


@pytest.mark.parametrize("bf16", [False, True])
def test_backward_inside_the_autocast_block_gives_the_same_gradients(bf16, bf16_cpu):
    """Users often call backward() inside the autocast block: the kernels' backward then keeps its own dtypes."""
    model = long_window_model(0.1)
    expected = long_outputs_and_gradients(model, bf16)[1]
    actual = long_outputs_and_gradients(model, bf16, backward_inside=True)[1]
    assert torch.equal(actual, expected)
