"""Stage 6: the trained classifier on the test set -> metrics/test.json and metrics/predictions.csv."""

import time
from pathlib import Path

from longformer.pipeline.allocator import keep_freed_memory
from longformer.pipeline.cli import app, user_errors
from longformer.pipeline.distributed import is_main_process, relaunch_under_torchrun
from longformer.pipeline.evaluate import evaluate
from longformer.pipeline.params import load_params

cli = app(__doc__)


@cli.command()
@user_errors
def main(params: Path = Path("params.yaml"), model: Path = Path("data/train"), data: Path = Path("data/tokenized"),
         metrics: Path = Path("metrics/test.json"), predictions: Path = Path("metrics/predictions.csv")) -> None:
    """Accuracy, loss and F1 on the test set (scikit-learn), and actual/predicted pairs for a confusion plot."""
    p = load_params(params)
    if relaunch_under_torchrun(p.train.nproc, "stages.evaluate"):
        return
    keep_freed_memory()  # every step allocates the same buffers again: reuse them, no page faults
    start = time.perf_counter()
    result = evaluate(model, data, metrics, predictions, p.evaluate.batch_size, p.train.precision)
    if is_main_process():
        print(f"test accuracy {result['accuracy']:.4f}, loss {result['loss']:.4f}, F1 {result['f1']:.4f} "
              f"on {result['reviews']} reviews, in {result['precision']} ({time.perf_counter() - start:.0f} s); "
              f"confusion matrix {result['confusion_matrix']}")


if __name__ == "__main__":
    cli()
