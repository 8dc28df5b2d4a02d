"""Stage 3: data.dataset -> data/tokenized (train / validation / test token ids and labels)."""

import json
from pathlib import Path

from longformer.cli import app, user_errors
from longformer.checkpoint import load_converted_config
from longformer.convert import load_tokenizer
from longformer.data import load_raw, save_tokenized, tokenize
from longformer.params import load_params

cli = app(__doc__)


@cli.command()
@user_errors
def main(params: Path = Path("params.yaml"), checkpoint: Path = Path("data/checkpoint"),
         model: Path = Path("data/model"), out: Path = Path("data/tokenized")) -> None:
    """Load data.dataset (`sample`, a local directory with train/test files, or a hub id such as `imdb`),
    tokenize with the checkpoint's tokenizer, truncate to data.max_length (at most what the converted model
    takes), hold out a stratified validation set."""
    data_params = load_params(params).data
    model_max_length = load_converted_config(model).max_length
    tokenizer = load_tokenizer(checkpoint)
    data, summary = tokenize(load_raw(data_params.dataset), tokenizer, data_params, model_max_length)
    save_tokenized(data, summary, out)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    cli()
