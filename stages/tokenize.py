"""Stage 3: data.dataset -> data/tokenized (train / validation / test token ids and labels)."""

import json
from pathlib import Path

from longformer import weights
from longformer.errors import written_by
from longformer.hf import load_tokenizer
from longformer.pipeline.cli import app, user_errors
from longformer.pipeline.data import load_raw, save_tokenized, tokenize
from longformer.pipeline.params import load_params

cli = app(__doc__)


@cli.command()
@user_errors
def main(params: Path = Path("params.yaml"), checkpoint: Path = Path("data/checkpoint"),
         model: Path = Path("data/model"), out: Path = Path("data/tokenized")) -> None:
    """Load data.dataset (`sample`, a local directory with train/test files, or a hub id such as `imdb`),
    tokenize with the checkpoint's tokenizer, truncate to data.max_length (at most what the converted model
    takes), hold out a stratified validation set."""
    data_params = load_params(params).data
    with written_by("convert"):
        model_max_length = weights.load_config(model).max_length
    with written_by("download"):
        tokenizer = load_tokenizer(checkpoint)
    data, summary = tokenize(load_raw(data_params.dataset), tokenizer, data_params, model_max_length)
    save_tokenized(data, summary, out)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    cli()
