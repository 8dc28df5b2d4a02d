"""Label new reviews with the trained classifier (data/train, or data/export/model.onnx with --onnx): not a DVC
stage, a command to use the model."""

from pathlib import Path

import typer

from longformer.pipeline.cli import app, user_errors
from longformer.pipeline.params import load_params
from longformer.pipeline.predict import classify, classify_onnx, read_reviews

cli = app(__doc__)


@cli.command()
@user_errors
def main(inputs: list[str] = typer.Argument(None, help="text files (one review each), .csv/.parquet files, or - "
                                                       "for standard input (one review per line; the default)"),
         column: str = typer.Option("text", help="the review column of .csv/.parquet inputs"),
         params: Path = Path("params.yaml"), model: Path = Path("data/train"),
         checkpoint: Path = Path("data/checkpoint"), batch_size: int | None = typer.Option(
             None, help="reviews per batch; default: evaluate.batch_size"),
         onnx: bool = typer.Option(False, "--onnx", help="run the export stage's ONNX file with onnxruntime"),
         export: Path = Path("data/export")) -> None:
    """Print one line per review: its source, the predicted label and that label's probability (tab-separated)."""
    reviews = read_reviews(inputs or [], column)
    p = load_params(params)
    texts, batch_size = [r.text for r in reviews], batch_size or p.evaluate.batch_size
    probabilities = (classify_onnx(export, texts, batch_size) if onnx else
                     classify(model, checkpoint, texts, p.data.max_length, batch_size))
    for review, probs in zip(reviews, probabilities):
        label = int(probs.argmax())
        print(f"{review.source}\t{label}\t{probs[label]:.4f}")


if __name__ == "__main__":
    cli()
