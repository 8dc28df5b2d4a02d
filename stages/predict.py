"""Label new reviews with the trained classifier (data/train, or data/export/model.onnx with --onnx): not a DVC
stage, a command to use the model. It reads nothing of params.yaml: reviews are tokenized as training's were, by
what the pipeline wrote (the tokenizer, and the truncation in data/tokenized/summary.json or the export)."""

from pathlib import Path

import typer

from longformer.pipeline.cli import app, user_errors
from longformer.pipeline.export import read_json
from longformer.pipeline.predict import classify, classify_onnx, read_reviews

cli = app(__doc__)


@cli.command()
@user_errors
def main(inputs: list[str] = typer.Argument(None, help="text files (one review each), .csv/.parquet files, or - "
                                                       "for standard input (one review per line; the default)"),
         column: str = typer.Option("text", help="the review column of .csv/.parquet inputs"),
         model: Path = Path("data/train"), checkpoint: Path = Path("data/checkpoint"),
         summary: Path = typer.Option(Path("data/tokenized/summary.json"),
                                      help="the tokenize stage's summary: the truncation training used"),
         batch_size: int = typer.Option(8, min=1, help="reviews per batch"),
         precision: str = typer.Option("auto", help="auto (bf16 where the CPU computes it natively), fp32 or bf16"),
         onnx: bool = typer.Option(False, "--onnx", help="run the export stage's ONNX file with onnxruntime"),
         export: Path = Path("data/export")) -> None:
    """Print one line per review: its source, the predicted label and that label's probability (tab-separated)."""
    reviews = read_reviews(inputs or [], column)
    texts = [review.text for review in reviews]
    if onnx:
        probabilities = classify_onnx(export, texts, batch_size)
    else:
        probabilities = classify(model, checkpoint, texts, read_json(summary, "tokenize")["max_length"], batch_size,
                                 precision)
    for review, probs in zip(reviews, probabilities):
        label = int(probs.argmax())
        print(f"{review.source}\t{label}\t{probs[label]:.4f}")


if __name__ == "__main__":
    cli()
