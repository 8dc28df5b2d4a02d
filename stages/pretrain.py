"""Stage 4: continued masked-LM pretraining of the converted encoder on the training texts -> data/pretrained,
metrics/pretrain.json (held-out loss before and after, by position), metrics/pretrain (dvclive)."""

import json
import time
from pathlib import Path

from longformer.pipeline.allocator import keep_freed_memory
from longformer.pipeline.cli import app, user_errors
from longformer.pipeline.distributed import is_main_process, relaunch_under_torchrun
from longformer.pipeline.params import load_params
from longformer.pipeline.pretrain import pretrain, skip

cli = app(__doc__)


@cli.command()
@user_errors
def main(params: Path = Path("params.yaml"), model: Path = Path("data/model"),
         checkpoint: Path = Path("data/checkpoint"), data: Path = Path("data/tokenized"),
         out: Path = Path("data/pretrained"), metrics: Path = Path("metrics/pretrain.json"),
         live: Path = Path("metrics/pretrain")) -> None:
    """Masked-LM training with the pretrain.* params (pretrain.steps=0: none, the converted encoder goes on
    unchanged); the encoder with the lowest held-out loss is what the train stage fine-tunes."""
    p = load_params(params)
    if p.pretrain.steps == 0:
        skip(model, out, metrics, live)
        print(f"pretrain.steps=0: {model} -> {out} unchanged")
        return
    if relaunch_under_torchrun(p.train.nproc, "stages.pretrain"):
        return
    keep_freed_memory()  # every step allocates the same buffers again: reuse them, no page faults
    start = time.perf_counter()
    result = pretrain(model, checkpoint, data, out, metrics, live, p.pretrain, p.train.precision)
    if is_main_process():
        seconds = time.perf_counter() - start
        print(json.dumps({k: result[k] for k in ("before", "after")}, indent=2))
        print(f"{result['tokens_trained']:,} tokens trained in {seconds:.0f} s by this run, in {result['precision']} "
              f"(with the held-out measurements): {result['tokens_trained'] / seconds:.0f} tokens/s; held-out loss "
              f"{result['before']['loss']:.4f} -> {result['after']['loss']:.4f}")


if __name__ == "__main__":
    cli()
