"""A classifier's logits over a dataset, batched by length and shared out over the processes: what validation,
evaluation and prediction run."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from datasets import Dataset
from torch import Tensor, nn
from tqdm import tqdm

from longformer.model import LongformerClassifier
from longformer.pipeline.batching import inference_batches
from longformer.pipeline.distributed import Processes
from longformer.pipeline.precision import autocast


@contextmanager
def evaluating(model: nn.Module) -> Iterator[torch.device]:
    """The model in eval mode and without autograd inside the block (its device given), its mode restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield next(model.parameters()).device
    finally:
        model.train(was_training)


def predict_logits(model: LongformerClassifier, data: Dataset, batch_size: int, desc: str = "predict",
                   procs: Processes = Processes(), precision: str = "fp32") -> np.ndarray:
    """Logits (N, num_labels) of the dataset's `input_ids`, in its order, on every process; computed in `precision`
    (resolved: "fp32" or "bf16")."""
    with evaluating(model) as device:
        def logits_of(input_ids: Tensor, attention_mask: Tensor) -> np.ndarray:
            with autocast(device, precision):
                return model(input_ids.to(device), attention_mask.to(device)).float().cpu().numpy()

        return batch_logits(logits_of, data["input_ids"], batch_size, model.config.pad_token_id,
                            model.head_config.num_labels, desc, procs)


def batch_logits(logits_of: Callable[[Tensor, Tensor], np.ndarray], rows: Sequence[Sequence[int]], batch_size: int,
                 pad_token_id: int, num_labels: int, desc: str = "predict", procs: Processes = Processes()
                 ) -> np.ndarray:
    """`logits_of(input_ids, attention_mask)` over `rows` (token id lists) -> (N, num_labels), in rows' order, on
    every process. Batches of similar length for speed; with several processes each predicts every world-th batch
    and the results are gathered, so every review is counted exactly once."""
    mine: list[tuple[list[int], np.ndarray]] = []
    share = len(range(procs.rank, math.ceil(len(rows) / batch_size), procs.world))
    batches = inference_batches(rows, batch_size, pad_token_id, procs.rank, procs.world)
    for indices, batch in tqdm(batches, total=share, desc=desc, leave=False, disable=None):
        mine.append((indices, logits_of(batch["input_ids"], batch["attention_mask"])))
    logits = np.zeros((len(rows), num_labels), dtype=np.float32)
    for part in procs.gather(mine):
        for indices, values in part:
            logits[indices] = values
    return logits
