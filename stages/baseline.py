"""Baseline stage: data/tokenized's reviews -> TF-IDF + logistic regression -> metrics/baseline.json."""

from pathlib import Path

from longformer.pipeline.baseline import run_baseline
from longformer.pipeline.cli import app, user_errors

cli = app(__doc__)


@cli.command()
@user_errors
def main(data: Path = Path("data/tokenized"), metrics: Path = Path("metrics/baseline.json")) -> None:
    """Fit TF-IDF + logistic regression on the train split (C chosen on validation), score the test split: the
    same reviews the Longformer learns from and is tested on, so `dvc metrics show` puts the two side by side."""
    result = run_baseline(data, metrics)
    print(f"TF-IDF baseline: test accuracy {result['accuracy']:.4f}, F1 {result['f1']:.4f}, loss {result['loss']:.4f} "
          f"on {result['reviews']} reviews (C={result['C']}, {result['seconds']:.0f} s)")


if __name__ == "__main__":
    cli()
