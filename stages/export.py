"""Stage 7: the trained classifier where users deploy it -> data/export: hf/ (transformers, with a model card) and
model.onnx (onnxruntime)."""

import time
from pathlib import Path

import typer

from longformer.pipeline.cli import app, user_errors
from longformer.pipeline.export import HF_DIR, ONNX_FILE, export
from longformer.pipeline.params import load_params

cli = app(__doc__)


@cli.command()
@user_errors
def main(params: Path = Path("params.yaml"), model: Path = Path("data/train"),
         checkpoint: Path = Path("data/checkpoint"), summary: Path = Path("data/tokenized/summary.json"),
         metrics: Path = Path("metrics/test.json"), pretrained: Path = Path("metrics/pretrain.json"),
         out: Path = Path("data/export")) -> None:
    """Write a transformers LongformerForSequenceClassification directory (with tokenizer and model card) and an
    ONNX file of the whole classifier (dynamic batch and length)."""
    p = load_params(params)
    start = time.perf_counter()
    for warning in export(model, checkpoint, summary, metrics, pretrained, p, out):
        typer.secho(f"warning: {warning}", err=True, fg=typer.colors.YELLOW)
    megabytes = (out / ONNX_FILE).stat().st_size / 2**20
    print(f"{model} -> {out / HF_DIR} (transformers, model card README.md), {out / ONNX_FILE} ({megabytes:.1f} MB); "
          f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    cli()
