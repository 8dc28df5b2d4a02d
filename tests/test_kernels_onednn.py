"""longformer.kernels.onednn: the linear layers' products on oneDNN (CPU, fp32; bf16, natively or emulated) against
float64 references."""

import pytest
import torch
import torch.nn.functional as F

from longformer.kernels import onednn, paths
from longformer.kernels.onednn import linear, linear_activation, linear_add, linear_into, weight_grad
from longformer.kernels.paths import hardware_flags, native_bf16, use_onednn
from tests.helpers import SAPPHIRE_RAPIDS, SKYLAKE, ZEN3, ZEN4

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="PyTorch built without oneDNN")


@pytest.fixture(autouse=True)
def fp32_on_onednn(monkeypatch):
    """oneDNN's fp32 path on every CPU: where it is not the faster library (AVX2 alone) it still computes."""
    monkeypatch.setattr(paths, "onednn_fp32_is_faster", lambda: True)

# (rows, in, out): one part, and more rows than a part of linear_into (512) or weight_grad (1024), with the weight
# gradient's wide orientation on either side
SHAPES = [(5, 7, 3), (1100, 48, 96), (1100, 96, 48)]


def assert_close_to(actual: torch.Tensor, exact: torch.Tensor) -> None:
    """fp32 rounding: relative to the exact result's largest entry (sums of up to ~1000 products)."""
    assert actual.dtype == torch.float32
    scale = exact.abs().max().item()
    torch.testing.assert_close(actual.double(), exact, rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("flags, bf16", [(ZEN3, False), (SKYLAKE, False), (ZEN4, True), (SAPPHIRE_RAPIDS, True)])
def test_onednn_is_used_for_fp32_and_native_bf16_on_the_cpu_only(monkeypatch, flags, bf16):
    monkeypatch.setenv(paths.FLAGS_VARIABLE, " ".join(flags))
    x = torch.ones(2, 3)
    assert use_onednn(x)
    assert not use_onednn(x.double())  # float64 (gradchecks): PyTorch's own ops
    assert use_onednn(x.bfloat16()) == native_bf16() == bf16  # bf16 where the CPU computes it natively
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not use_onednn(x)  # autocast picks the dtypes
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)  # a user's switch
    assert not use_onednn(x)


@pytest.mark.parametrize("flags, expected", [({"avx2", "fma"}, False), ({"avx2", "avx512f", "avx512bw"}, True)])
def test_fp32_runs_on_onednn_where_the_cpu_has_avx512(monkeypatch, flags, expected):
    monkeypatch.undo()  # the real onednn_fp32_is_faster, on faked flags
    monkeypatch.setattr(paths, "cpu_flags", lambda: frozenset(flags))
    assert use_onednn(torch.ones(2, 3)) == expected


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rows, k, m", SHAPES)
def test_linear_matches_float64_forward_and_backward(rows, k, m, bias):
    gen = torch.Generator().manual_seed(rows + k)
    layer = torch.nn.Linear(k, m, bias=bias)
    x = torch.randn(k, rows, generator=gen).T.requires_grad_()  # a transposed view: not contiguous
    grad_y = torch.randn(rows, m, generator=gen)
    y = linear(x, layer.weight, layer.bias)
    y.backward(grad_y)

    x64 = x.detach().double().requires_grad_()
    w64 = layer.weight.detach().double().requires_grad_()
    b64 = layer.bias.detach().double().requires_grad_() if bias else None
    y64 = F.linear(x64, w64, b64)
    y64.backward(grad_y.double())
    assert_close_to(y, y64.detach())
    assert_close_to(x.grad, x64.grad)
    assert_close_to(layer.weight.grad, w64.grad)
    if bias:
        assert_close_to(layer.bias.grad, b64.grad)


def test_linear_keeps_leading_dimensions():
    x, weight = torch.randn(2, 3, 6), torch.randn(4, 6)
    assert_close_to(linear(x, weight), F.linear(x.double(), weight.double()))


@pytest.mark.parametrize("rows, k, m", SHAPES)
def test_linear_into_and_weight_grad_match_float64(rows, k, m):
    gen = torch.Generator().manual_seed(rows)
    x, weight = torch.randn(rows, k, generator=gen), torch.randn(m, k, generator=gen)
    bias = torch.randn(m, generator=gen)
    out = torch.full((rows, m), float("nan"))
    assert linear_into(out, x, weight, bias) is out
    assert_close_to(out, F.linear(x.double(), weight.double(), bias.double()))
    grad_y = torch.randn(rows, m, generator=gen)
    assert_close_to(weight_grad(grad_y, x), grad_y.double().T @ x.double())
    assert weight_grad(grad_y[:0], x[:0]).equal(torch.zeros(m, k))  # no rows: a zero gradient, not an error


@pytest.mark.parametrize("grad_enabled", [False, True])  # oneDNN's post-ops; autograd's plain ops
def test_linear_activation_and_add_match_the_plain_ops(grad_enabled):
    gen = torch.Generator().manual_seed(0)
    x, weight = torch.randn(700, 48, generator=gen), torch.randn(96, 48, generator=gen)
    bias = torch.randn(96, generator=gen)
    other = torch.randn(700, 96, generator=gen)
    exact = F.linear(x.double(), weight.double(), bias.double())
    with torch.set_grad_enabled(grad_enabled):
        assert_close_to(linear_activation(x, weight, bias, "gelu"), F.gelu(exact))
        assert_close_to(linear_activation(x, weight, bias, "relu"), F.relu(exact))
        assert_close_to(linear_add(x, weight, bias, other), exact + other.double())


def test_the_products_run_on_onednn_forward_and_backward():
    """The fp32 CPU path really runs oneDNN's op, and no other matrix product (the benchmark's figures depend on
    it): the profiler lists the ops that ran."""
    layer = torch.nn.Linear(8, 4)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiled:
        linear(torch.randn(3, 8, requires_grad=True), layer.weight, layer.bias).sum().backward()
    ops = {event.name for event in profiled.events()}
    assert "mkldnn::_linear_pointwise" in ops
    assert not ops & {"aten::mm", "aten::addmm", "aten::matmul", "aten::linear"}, ops


@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_the_flags_do_not_change_which_library_runs_where_the_processor_cannot(monkeypatch, activation):
    """fp32 on MKL where the flags have no AVX-512: the same products, to fp32 rounding."""
    monkeypatch.undo()
    monkeypatch.setenv(paths.FLAGS_VARIABLE, " ".join(ZEN3))
    gen = torch.Generator().manual_seed(2)
    x, weight, bias = torch.randn(300, 48, generator=gen), torch.randn(96, 48, generator=gen), torch.randn(96)
    assert not use_onednn(x)
    with torch.no_grad():
        assert_close_to(linear_activation(x, weight, bias, activation),
                        getattr(F, activation)(F.linear(x.double(), weight.double(), bias.double())))


# ---------------------------------------------------------------------------------------------------------------
# bf16: bf16 operands, fp32 sums, one rounding of the output to bf16 (2^-9 relative at most). On a processor without
# bf16 products, `_inner_product` emulates them; `bf16_cpu` runs each test both ways.

def bf16_operands(rows: int, k: int, m: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    x, weight, bias, other = (torch.randn(*shape, generator=gen).bfloat16()
                              for shape in ((rows, k), (m, k), (m,), (rows, m)))
    return x, weight.float(), bias.float(), other  # weights stay fp32, as a model's do: the kernels cast them


def assert_bf16_rounding_of(actual: torch.Tensor, exact: torch.Tensor) -> None:
    """One rounding to bf16 of a sum taken in fp32: 2^-9 relative, plus the fp32 sum's own error."""
    assert actual.dtype == torch.bfloat16
    torch.testing.assert_close(actual.double(), exact, rtol=2**-8, atol=1e-5 * exact.abs().max().item())


@pytest.mark.parametrize("rows, k, m", SHAPES)
def test_bf16_products_round_the_fp32_sum_once(rows, k, m, bf16_cpu):
    x, weight, bias, other = bf16_operands(rows, k, m)
    assert use_onednn(x)
    exact = F.linear(x.double(), weight.bfloat16().double(), bias.bfloat16().double())
    with torch.no_grad():
        assert_bf16_rounding_of(linear(x, weight, bias), exact)
        assert_bf16_rounding_of(linear_into(torch.empty(rows, m, dtype=torch.bfloat16), x, weight, bias), exact)
        assert_bf16_rounding_of(linear_activation(x, weight, bias, "gelu"), F.gelu(exact))
        assert_bf16_rounding_of(linear_activation(x, weight, bias, "relu"), F.relu(exact))
        assert_bf16_rounding_of(linear_add(x, weight, bias, other), exact + other.double())
    assert_weight_grad_of(weight_grad(other, x), other.double().T @ x.double())


def assert_weight_grad_of(actual: torch.Tensor, exact: torch.Tensor) -> None:
    """A bf16 weight gradient: each part's product (1,024 rows) rounded to bf16 once, the parts summed in fp32."""
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual.double(), exact, rtol=2**-8, atol=2**-8 * exact.abs().max().item())


def test_bf16_linear_backward_matches_float64(bf16_cpu):
    x, weight, bias, grad_y = bf16_operands(1100, 96, 48, seed=3)
    x.requires_grad_()
    weight.requires_grad_()
    bias.requires_grad_()
    linear(x, weight, bias).backward(grad_y)
    w = weight.detach().bfloat16().double()
    assert_bf16_rounding_of(x.grad, grad_y.double() @ w)
    assert weight.grad.dtype == bias.grad.dtype == torch.float32  # the weights' own dtype, summed in fp32
    assert_weight_grad_of(weight.grad, grad_y.double().T @ x.detach().double())
    torch.testing.assert_close(bias.grad.double(), grad_y.double().sum(0), rtol=0, atol=1e-4)


@pytest.mark.skipif(not native_bf16(hardware_flags()), reason="compares emulated bf16 with this processor's own: "
                                                               "needs one with avx512_bf16 or amx_bf16")
def test_emulated_bf16_products_equal_the_native_ones_to_one_rounding(monkeypatch):
    x, weight, bias, other = bf16_operands(700, 96, 48, seed=4)
    monkeypatch.setenv(paths.FLAGS_VARIABLE, " ".join(ZEN4))  # bf16 on oneDNN, whatever the suite runs as
    with torch.no_grad():
        native = [linear_activation(x, weight, bias, "gelu"), linear_add(x, weight, bias, other)]
        monkeypatch.setattr(paths, "hardware_flags", lambda: frozenset(ZEN3))  # the same, on a processor without
        emulated = [linear_activation(x, weight, bias, "gelu"), linear_add(x, weight, bias, other)]
    for a, b in zip(native, emulated):
        torch.testing.assert_close(a.double(), b.double(), rtol=2**-7, atol=1e-5 * b.abs().max().item())
