"""A classifier's logits over a dataset, batched by length and shared out over the processes: what validation,
evaluation and prediction run."""

from __future__ import annotations

import math

import numpy as np
import torch
from datasets import Dataset
from tqdm import tqdm

from longformer.model import LongformerClassifier
from longformer.pipeline.batching import inference_batches
from longformer.pipeline.distributed import Processes
from longformer.pipeline.precision import autocast


@torch.no_grad()
def predict_logits(model: LongformerClassifier, data: Dataset, batch_size: int, desc: str = "predict",
                   procs: Processes = Processes(), precision: str = "fp32") -> np.ndarray:
    """Logits (N, num_labels) of the dataset's `input_ids`, in its order, on every process; computed in `precision`
    (resolved: "fp32" or "bf16").

    Batches of similar length for speed; with several processes each predicts every world-th batch and
    the results are gathered, so every review is counted exactly once.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rows = data["input_ids"]
    batches = inference_batches(rows, batch_size, model.config.pad_token_id, procs.rank, procs.world)
    mine: list[tuple[list[int], np.ndarray]] = []
    share = len(range(procs.rank, math.ceil(len(rows) / batch_size), procs.world))
    for indices, batch in tqdm(batches, total=share, desc=desc, leave=False, disable=None):
        with autocast(device, precision):
            out = model(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        mine.append((indices, out.float().cpu().numpy()))
    model.train(was_training)
    logits = np.zeros((len(rows), model.head_config.num_labels), dtype=np.float32)
    for part in procs.gather(mine):
        for indices, values in part:
            logits[indices] = values
    return logits
