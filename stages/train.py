"""Stage 5: fine-tune encoder + classification head -> data/train (the best weights), metrics/train (dvclive),
metrics/validation-predictions.csv (the best weights' predictions on the validation reviews)."""

import time
from pathlib import Path

from longformer.pipeline.allocator import keep_freed_memory
from longformer.pipeline.cli import app, user_errors
from longformer.pipeline.distributed import is_main_process, relaunch_under_torchrun
from longformer.pipeline.params import load_params
from longformer.pipeline.train import train

cli = app(__doc__)


@cli.command()
@user_errors
def main(params: Path = Path("params.yaml"), model: Path = Path("data/pretrained"), data: Path = Path("data/tokenized"),
         out: Path = Path("data/train"), metrics: Path = Path("metrics/train"),
         predictions: Path = Path("metrics/validation-predictions.csv")) -> None:
    """Train with the head.* and train.* params; keep the weights with the best validation accuracy."""
    p = load_params(params)
    if relaunch_under_torchrun(p.train.nproc, "stages.train"):
        return
    keep_freed_memory()  # every step allocates the same buffers again: reuse them, no page faults
    start = time.perf_counter()
    best = train(model, data, out, metrics, p.head, p.train, predictions_file=predictions)
    if is_main_process():
        print(f"best validation accuracy {best['val_accuracy']:.4f} at epoch {best['epoch']} (step {best['step']}); "
              f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    cli()
