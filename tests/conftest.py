"""Fixtures shared by the tests; helper functions live in tests/helpers.py."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the hub is unreachable here: fail fast instead of retrying
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402 (after the environment the Hugging Face libraries read on import)
import torch  # noqa: E402

from tests.helpers import ZEN3, ZEN4, small_hf_config  # noqa: E402


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory):
    """A random small Longformer built and saved by transformers itself, with per-layer windows."""
    from transformers import LongformerModel as HFModel

    torch.manual_seed(0)
    model = HFModel(small_hf_config(), add_pooling_layer=False)
    directory = tmp_path_factory.mktemp("hf_small")
    model.save_pretrained(directory)
    return directory


@pytest.fixture(params=["kernels-onednn", "kernels-mkl", "reference"])
def path(request, monkeypatch):
    """Every path: the CPU kernels with their fp32 products on oneDNN (where the CPU has AVX-512) and on PyTorch's own
    MKL ones (AVX2 alone), on any CPU; and the reference modules (what runs on a GPU and under autocast)."""
    from contextlib import nullcontext

    from longformer import kernels
    from longformer.kernels import paths

    monkeypatch.setattr(paths, "onednn_fp32_is_faster", lambda: request.param == "kernels-onednn")
    with kernels.disabled() if request.param == "reference" else nullcontext():
        yield request.param


@pytest.fixture(params=["hardware", "emulated"])
def bf16_cpu(request, monkeypatch):
    """Decide as a CPU that computes bf16 natively (the kernels run under bf16 autocast), with the bf16 products
    computed by this processor (natively where it can, else emulated), then emulated whatever the processor."""
    from longformer.kernels import paths

    monkeypatch.setenv(paths.FLAGS_VARIABLE, " ".join(sorted(ZEN4)))
    if request.param == "emulated":
        monkeypatch.setattr(paths, "hardware_flags", lambda: frozenset(ZEN3))
    return request.param
