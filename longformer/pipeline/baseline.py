"""A classic baseline on the same reviews: TF-IDF features and logistic regression (scikit-learn)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score
from sklearn.pipeline import make_pipeline

from longformer.errors import DataError
from longformer.pipeline.data import load_tokenized
from longformer.pipeline.metrics import classification_metrics

C_GRID = (0.25, 1.0, 4.0, 16.0)  # inverse regularisation strengths tried; the best on the validation split is kept


def tfidf_logistic_regression(c: float):
    """Word uni- and bigrams, sublinear term frequencies: the usual strong linear baseline for sentiment."""
    return make_pipeline(TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, strip_accents="unicode"),
                         LogisticRegression(C=c, max_iter=1000))


def run_baseline(data_dir: str | Path, metrics_file: str | Path) -> dict:
    """Fit on the tokenize stage's train split, choose C on its validation split, score the test split."""
    start = time.perf_counter()
    splits = {name: load_tokenized(data_dir, name) for name in ("train", "validation", "test")}
    texts = {name: split["text"] for name, split in splits.items()}
    labels = {name: np.asarray(split["label"]) for name, split in splits.items()}
    fitted = {c: tfidf_logistic_regression(c).fit(texts["train"], labels["train"]) for c in C_GRID}
    val_accuracy = {c: accuracy_score(labels["validation"], model.predict(texts["validation"]))
                    for c, model in fitted.items()}
    best_c = max(C_GRID, key=lambda c: val_accuracy[c])
    model = fitted[best_c]
    if not np.array_equal(model.classes_, np.arange(len(model.classes_))):  # column c of its scores must be class c
        raise DataError(f"the train split of {data_dir} has the labels {model.classes_.tolist()}: expected 0, 1, ...")
    metrics = classification_metrics(labels["test"], model.predict_log_proba(texts["test"])) | {
        "reviews": len(labels["test"]), "train_reviews": len(labels["train"]), "C": best_c,
        "val_accuracy": float(val_accuracy[best_c])}
    Path(metrics_file).parent.mkdir(parents=True, exist_ok=True)
    Path(metrics_file).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics | {"seconds": time.perf_counter() - start}
