"""Fixtures shared by the tests; helper functions live in tests/helpers.py."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the hub is unreachable here: fail fast instead of retrying
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402 (after the environment the Hugging Face libraries read on import)
import torch  # noqa: E402

from tests.helpers import small_hf_config  # noqa: E402


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory):
    """A random small Longformer built and saved by transformers itself, with per-layer windows."""
    from transformers import LongformerModel as HFModel

    torch.manual_seed(0)
    model = HFModel(small_hf_config(), add_pooling_layer=False)
    directory = tmp_path_factory.mktemp("hf_small")
    model.save_pretrained(directory)
    return directory


@pytest.fixture(params=["kernels", "reference"])
def path(request):
    """Both paths: the CPU kernels, and the reference modules (what runs on a GPU and under autocast)."""
    from contextlib import nullcontext

    from longformer import kernels

    with nullcontext() if request.param == "kernels" else kernels.disabled():
        yield request.param
