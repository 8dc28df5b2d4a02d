"""Classification metrics (scikit-learn's), the same for every model the pipeline scores."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score


def classification_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Accuracy, cross-entropy loss and F1 (binary with two classes, else macro-averaged) of scores (N, classes):
    logits or log-probabilities, whose column c is class c."""
    predictions = scores.argmax(axis=1)
    loss = F.cross_entropy(torch.from_numpy(scores), torch.from_numpy(np.asarray(labels, dtype=np.int64))).item()
    average = "binary" if scores.shape[1] == 2 else "macro"
    return {"accuracy": float(accuracy_score(labels, predictions)), "loss": loss,
            "f1": float(f1_score(labels, predictions, average=average))}
