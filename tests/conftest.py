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


def prepare_inputs(root: Path, limit: int, val_size: float = 0.1, dropout: float | None = None) -> Path:
    """data/model and data/tokenized as the convert and tokenize stages write them: tiny model, sample reviews."""
    import json

    from transformers import AutoTokenizer

    from longformer.checkpoint import save_converted
    from longformer.convert import convert_hf_checkpoint, download_checkpoint
    from longformer.data import DataParams, sample_corpus, sample_dataset, save_tokenized, tokenize

    download_checkpoint("tiny", root / "checkpoint", sample_corpus())
    if dropout is not None:
        config = json.loads((root / "checkpoint/config.json").read_text())
        config.update(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
        (root / "checkpoint/config.json").write_text(json.dumps(config))
    save_converted(*convert_hf_checkpoint(root / "checkpoint"), root / "data/model")
    params = DataParams(max_length=512, limit=limit, val_size=val_size)
    data, summary = tokenize(sample_dataset(), AutoTokenizer.from_pretrained(root / "checkpoint"), params, 1024)
    save_tokenized(data, summary, root / "data/tokenized")
    return root


def start_stage(module: str, workdir: Path, inputs: Path, params: dict, *args: str):
    """The real stage (`python -m stages.X`) in `workdir`, reading the inputs' data/ through symlinks."""
    import subprocess
    import sys

    import yaml

    workdir.mkdir(exist_ok=True)
    if not (workdir / "data").exists():
        (workdir / "data").mkdir()
        for name in ("model", "tokenized"):
            (workdir / "data" / name).symlink_to(inputs / "data" / name)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "TQDM_DISABLE": "1"}
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process) -> str:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    return output
