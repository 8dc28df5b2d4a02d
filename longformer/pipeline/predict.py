"""Label new reviews with a trained classifier (ours, or the exported ONNX file on onnxruntime): reviews from text
files, a CSV/parquet column or standard input."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset

from longformer.errors import DataError, MissingInputError, written_by
from longformer.hf import load_tokenizer
from longformer.model import LongformerClassifier
from longformer.onnx import OnnxClassifier
from longformer.pipeline.data import tokenize_reviews
from longformer.pipeline.distributed import Processes
from longformer.pipeline.export import HF_DIR, ONNX_FILE
from longformer.pipeline.inference import batch_logits, predict_logits
from longformer.pipeline.precision import resolve_precision

TABLE_SUFFIXES = (".csv", ".parquet")


@dataclass
class Review:
    source: str  # where it came from: a file, file:row, or stdin:line
    text: str


def read_reviews(inputs: Sequence[str], column: str = "text") -> list[Review]:
    """Each text file is one review; a .csv or .parquet file gives one review per row of `column`; `-` (or no
    input at all) reads standard input, one review per non-empty line."""
    reviews: list[Review] = []
    for name in inputs or ["-"]:
        if name == "-":
            reviews += [Review(f"stdin:{i}", line) for i, line in enumerate(sys.stdin.read().splitlines(), 1)
                        if line.strip()]
        elif name.endswith(TABLE_SUFFIXES):
            reviews += _read_table(Path(name), column)
        else:
            try:
                reviews.append(Review(name, Path(name).read_text(encoding="utf-8")))
            except (OSError, UnicodeDecodeError) as error:
                raise DataError(f"cannot read {name}: {error}; give UTF-8 text files, .csv or .parquet files, "
                                "or - for standard input") from error
    if not any(review.text.strip() for review in reviews):
        raise DataError("no review to label: give text files (one review each), .csv or .parquet files with a "
                        f"{column!r} column, or reviews on standard input, one per line")
    return reviews


def _read_table(path: Path, column: str) -> list[Review]:
    import pandas as pd

    try:
        table = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    except Exception as error:  # pandas raises many types for unreadable files
        raise DataError(f"cannot read {path}: {error}") from error
    if column not in table.columns:
        raise DataError(f"{path} has no {column!r} column (it has {', '.join(map(str, table.columns))}); "
                        "name the review column with --column")
    return [Review(f"{path}:{i}", "" if text is None or text != text else str(text))  # NaN for empty cells
            for i, text in enumerate(table[column].tolist(), 1)]


def classify(train_dir: str | Path, tokenizer_dir: str | Path, texts: Sequence[str], max_length: int,
             batch_size: int = 8, precision: str = "auto") -> np.ndarray:
    """Class probabilities (N, num_labels) of the trained classifier in `train_dir`, in the order of `texts`;
    reviews are tokenized as the tokenize stage does (truncated to max_length, the last special token kept) and
    predicted in length-bucketed batches, in `precision` (as train.precision)."""
    with written_by("train"):
        model = LongformerClassifier.load(train_dir)
    with written_by("download"):
        tokenizer = load_tokenizer(tokenizer_dir)
    ids = tokenize_reviews(tokenizer, texts, min(max_length, model.config.max_length))
    procs = Processes()  # one process, on the GPU where there is one
    logits = predict_logits(model, Dataset.from_dict({"input_ids": ids}), batch_size, procs=procs,
                            precision=resolve_precision(precision, procs.device))
    return torch.from_numpy(logits).softmax(dim=1).numpy()


def classify_onnx(export_dir: str | Path, texts: Sequence[str], batch_size: int = 8) -> np.ndarray:
    """`classify` with the export stage's ONNX file on onnxruntime, tokenized by the exported tokenizer, which
    truncates as training did."""
    onnx_file, hf_dir = Path(export_dir) / ONNX_FILE, Path(export_dir) / HF_DIR
    if not onnx_file.is_file():
        raise MissingInputError(f"{onnx_file} not found: make it with `dvc repro export` (or python -m stages.export)")
    with written_by("export"):
        tokenizer = load_tokenizer(hf_dir)
        session = OnnxClassifier(onnx_file)
    limits = [tokenizer.model_max_length] + ([session.max_length] if session.max_length else [])
    ids = tokenize_reviews(tokenizer, texts, min(limits))  # never past the model, whatever the tokenizer says
    logits = batch_logits(session.logits, ids, batch_size, tokenizer.pad_token_id, session.num_labels)
    return torch.from_numpy(logits).softmax(dim=1).numpy()

