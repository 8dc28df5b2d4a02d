"""Predictions and metrics (scikit-learn) for a trained classifier."""

from __future__ import annotations

import csv
import json
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score
from tqdm import tqdm

from longformer.errors import written_by
from longformer.model import LongformerClassifier
from longformer.pipeline.batching import collate, length_bucketed_batches
from longformer.pipeline.data import check_labels, load_tokenized
from longformer.pipeline.distributed import Processes


def autocast(device: torch.device):
    """bf16 autocast on CUDA; plain fp32 elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


@torch.no_grad()
def predict(model: LongformerClassifier, data: Dataset, batch_size: int, desc: str = "predict",
            procs: Processes = Processes()) -> np.ndarray:
    """Logits (N, num_labels) in the dataset's order, on every process.

    Batches of similar length for speed; with several processes each predicts every world-th batch and
    the results are gathered, so every review is counted exactly once.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rows, labels = data["input_ids"], data["label"]
    batches = length_bucketed_batches([len(r) for r in rows], batch_size, shuffle=False)[procs.rank::procs.world]
    mine: list[tuple[list[int], np.ndarray]] = []
    for batch_idx in tqdm(batches, desc=desc, leave=False, disable=None):
        batch = collate([rows[i] for i in batch_idx], [labels[i] for i in batch_idx], model.config.pad_token_id)
        with autocast(device):
            out = model(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        mine.append((batch_idx, out.float().cpu().numpy()))
    model.train(was_training)
    logits = np.zeros((len(rows), model.head_config.num_labels), dtype=np.float32)
    for part in procs.gather(mine):
        for batch_idx, values in part:
            logits[batch_idx] = values
    return logits


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    predictions = logits.argmax(axis=1)
    loss = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)).item()
    average = "binary" if logits.shape[1] == 2 else "macro"
    return {"accuracy": float(accuracy_score(labels, predictions)), "loss": loss,
            "f1": float(f1_score(labels, predictions, average=average))}


def evaluate(train_dir: str | Path, data_dir: str | Path, metrics_file: str | Path, predictions_file: str | Path,
             batch_size: int = 8) -> dict[str, float]:
    """The trained classifier on the test set -> metrics JSON and an actual/predicted CSV (confusion plot).

    Under torchrun the test set is split over the processes; the main process writes the files.
    """
    procs = Processes.from_env()
    with written_by("train"):
        model = LongformerClassifier.load(train_dir).to(procs.device)
    test = load_tokenized(data_dir, "test")
    labels = np.asarray(test["label"])
    check_labels(labels, model.head_config.num_labels, f"the test split of {data_dir}")
    logits = predict(model, test, batch_size, desc="test", procs=procs)
    metrics = classification_metrics(logits, labels) | {"reviews": len(labels)}
    if procs.main:
        Path(metrics_file).parent.mkdir(parents=True, exist_ok=True)
        Path(metrics_file).write_text(json.dumps(metrics, indent=2) + "\n")
        with open(predictions_file, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["actual", "predicted"])
            writer.writerows(zip(labels.tolist(), logits.argmax(axis=1).tolist()))
    procs.close()
    metrics["confusion_matrix"] = confusion_matrix(labels, logits.argmax(axis=1)).tolist()
    return metrics
