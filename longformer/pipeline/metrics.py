"""Classification metrics (scikit-learn's), the same for every model the pipeline scores."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

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


def write_predictions(path: str | Path, actual: list[int], predicted: list[int]) -> None:
    """Each example's label and predicted class, in the split's order: a CSV with columns actual,predicted."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["actual", "predicted"])
        writer.writerows(zip(actual, predicted))


def read_predictions(path: str | Path) -> np.ndarray:
    """(N, 2): actual, predicted, as `write_predictions` wrote them."""
    return np.loadtxt(path, delimiter=",", skiprows=1, dtype=int, ndmin=2).reshape(-1, 2)


@dataclass
class PairedDifference:
    """Accuracy of A minus accuracy of B on the same examples, with its paired standard error: only the examples on
    which the two disagree count (McNemar's), so it is far smaller than either accuracy's own error."""

    n: int
    accuracy_a: float
    accuracy_b: float
    only_a: int  # examples A gets right and B wrong
    only_b: int

    @classmethod
    def of(cls, a_right: np.ndarray, b_right: np.ndarray) -> PairedDifference:
        """From each example's correctness (booleans) under A and under B."""
        return cls(len(a_right), float(a_right.mean()), float(b_right.mean()), int((a_right & ~b_right).sum()),
                   int((~a_right & b_right).sum()))

    @property
    def difference(self) -> float:
        return (self.only_a - self.only_b) / self.n

    @property
    def standard_error(self) -> float:
        return float(np.sqrt(self.only_a + self.only_b - (self.only_a - self.only_b) ** 2 / self.n) / self.n)

    @property
    def z(self) -> float:
        """difference / standard_error (0 where the two never disagree)."""
        return self.difference / self.standard_error if self.standard_error else 0.0
