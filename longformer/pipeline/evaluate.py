"""The evaluate stage's work: a trained classifier's metrics and predictions on the test split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sklearn.metrics import confusion_matrix

from longformer.errors import written_by
from longformer.model import LongformerClassifier
from longformer.pipeline.data import check_labels, load_tokenized
from longformer.pipeline.distributed import Processes
from longformer.pipeline.inference import predict_logits
from longformer.pipeline.metrics import classification_metrics, write_predictions
from longformer.pipeline.precision import resolve_precision


def evaluate(train_dir: str | Path, data_dir: str | Path, metrics_file: str | Path, predictions_file: str | Path,
             batch_size: int = 8, precision: str = "auto") -> dict[str, float]:
    """The trained classifier on the test set, run in `precision` (train.precision) -> metrics JSON and an
    actual/predicted CSV (confusion plot).

    Under torchrun the test set is split over the processes; the main process writes the files.
    """
    procs = Processes.from_env()
    with written_by("train"):
        model = LongformerClassifier.load(train_dir).to(procs.device)
    test = load_tokenized(data_dir, "test")
    labels = np.asarray(test["label"])
    check_labels(labels, model.head_config.num_labels, f"the test split of {data_dir}")
    precision = resolve_precision(precision, procs.device)
    logits = predict_logits(model, test, batch_size, "test", procs, precision)
    metrics = classification_metrics(labels, logits) | {"reviews": len(labels), "precision": precision}
    if procs.main:
        Path(metrics_file).parent.mkdir(parents=True, exist_ok=True)
        Path(metrics_file).write_text(json.dumps(metrics, indent=2) + "\n")
        write_predictions(predictions_file, labels.tolist(), logits.argmax(axis=1).tolist())
    procs.close()
    metrics["confusion_matrix"] = confusion_matrix(labels, logits.argmax(axis=1)).tolist()
    return metrics
