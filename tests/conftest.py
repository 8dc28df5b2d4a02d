import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the hub is unreachable here: fail fast instead of retrying
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

SHARED_IMDB = Path(__file__).resolve().parents[1].parent / "shared" / "imdb"


def small_hf_config(**overrides):
    from transformers import LongformerConfig as HFConfig

    values = dict(vocab_size=120, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
                  attention_window=[8, 4, 16], max_position_embeddings=300, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0, pad_token_id=1)
    values.update(overrides)
    return HFConfig(**values)


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory):
    """A random small Longformer built and saved by transformers itself, with per-layer windows."""
    from transformers import LongformerModel as HFModel

    torch.manual_seed(0)
    model = HFModel(small_hf_config(), add_pooling_layer=False)
    directory = tmp_path_factory.mktemp("hf_small")
    model.save_pretrained(directory)
    return directory
