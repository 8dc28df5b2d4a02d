"""train.precision: `auto` resolved from the CPU's flags, the kernels in bf16 against the fp32 oracle, and a resume
state of another precision discarded."""

from contextlib import nullcontext

import pytest
import torch

from longformer import LongformerModel, kernels
from longformer.errors import ConfigError
from longformer.kernels import onednn
from longformer.pipeline.loop import Best, Position, ResumeState
from longformer.pipeline.precision import resolve_precision
from tests.helpers import relative_error
from tests.test_parity import make_batch

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
ZEN3 = {"avx2", "fma", "sha_ni"}  # AVX2 only: no bf16 at all on oneDNN
SKYLAKE = {"avx2", "avx512f", "avx512bw", "avx512_vnni"}  # AVX-512 without BF16: oneDNN would emulate it
ZEN4 = SKYLAKE | {"avx512_bf16"}
SAPPHIRE_RAPIDS = SKYLAKE | {"avx512_bf16", "amx_bf16", "amx_tile"}

needs_native_bf16 = pytest.mark.skipif(not kernels.native_bf16(), reason="needs a CPU that computes bf16 natively "
                                                                         "(avx512_bf16 or amx_bf16)")


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


def test_without_native_bf16_autocast_runs_the_reference_path(monkeypatch):
    """On a CPU without native bf16 the kernels stay fp32: under bf16 autocast the model takes the reference path
    (PyTorch's own bf16 ops), and auto never asks for it."""
    x = torch.zeros(2, 3)
    monkeypatch.setattr(onednn, "cpu_flags", lambda: frozenset(ZEN3))
    assert kernels.enabled(x) and resolve_precision("auto", CPU) == "fp32"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not kernels.enabled(x)
    monkeypatch.setattr(onednn, "cpu_flags", lambda: frozenset(ZEN4))
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


@needs_native_bf16
@pytest.mark.parametrize("n", [9, 17, 61])
def test_bf16_kernels_match_fp32_within_bf16_rounding(model, n):
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


@needs_native_bf16
def test_bf16_kernels_with_dropout_match_fp32_with_the_same_masks(hf_checkpoint):
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


@needs_native_bf16
def test_bf16_autocast_runs_the_kernels_with_bf16_products(model, monkeypatch):
    calls = []
    real = onednn._inner_product
    monkeypatch.setattr(onednn, "_inner_product", lambda x, *rest: calls.append(x.dtype) or real(x, *rest))
    ids, mask, glob = make_batch(37, "first")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert kernels.enabled(torch.zeros(1))
        model(ids, mask, glob)
    assert calls and set(calls) == {torch.bfloat16}


def test_bf16_forward_after_a_fused_optimizer_step_computes_with_the_new_weights(hf_checkpoint):
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
