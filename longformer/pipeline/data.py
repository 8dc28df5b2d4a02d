"""Datasets: the offline sample, local files or the hub's `imdb`; tokenization and splits; the tokenize stage's
output."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

from longformer.errors import ConfigError, DataError, MissingInputError, reading, written_by
from longformer.pipeline.params import DataParams
from longformer.pipeline.sample import sample_splits

SAMPLE = "sample"  # data.dataset of the offline sample
SPLITS = ("train", "validation", "test")
FILE_BUILDERS = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json"}


# ---------------------------------------------------------------------------------------------------------------
# Loading raw text

def sample_dataset(num_train: int = 3000, num_test: int = 1000, seed: int = 0) -> DatasetDict:
    """The offline sample (`longformer.pipeline.sample`) as train and test datasets."""
    return DatasetDict({split: Dataset.from_dict({"text": texts, "label": labels})
                        for split, (texts, labels) in sample_splits(num_train, num_test, seed).items()})


def load_raw(dataset: str) -> DatasetDict:
    """`sample`, a local directory with train.* and test.* files, or a hub dataset id (e.g. `imdb`)."""
    if dataset == SAMPLE:
        raw = sample_dataset()
    elif Path(dataset).is_dir():
        raw = _load_directory(Path(dataset))
    elif Path(dataset).exists() or "/" in dataset and dataset.startswith((".", "/")):
        raise DataError(f"data.dataset {dataset!r} must be '{SAMPLE}', a directory with train and test files "
                        "(parquet, csv, json or jsonl), or a hub dataset id such as 'imdb'")
    else:
        try:
            raw = load_dataset(dataset)
        except Exception as error:  # datasets raises many types for an unreachable hub
            raise DataError(f"could not load dataset {dataset!r} from the Hugging Face hub "
                            f"({type(error).__name__}: {error}). Offline, point data.dataset at a local directory "
                            "with train and test files that have `text` and `label` columns") from error
    _check_columns(raw, dataset)
    return DatasetDict({split: raw[split] for split in ("train", "test")})


def _load_directory(directory: Path) -> DatasetDict:
    files = {}
    for split in ("train", "test"):
        found = sorted(p for p in directory.iterdir() if p.stem == split and p.suffix in FILE_BUILDERS)
        if not found:
            raise DataError(f"{directory} has no {split} file: expected {split}.parquet, .csv, .json or .jsonl")
        files[split] = found[0]
    splits = {}
    for split, path in files.items():  # one by one: a broken file is named, not mixed into a schema error
        try:
            splits[split] = load_dataset(FILE_BUILDERS[path.suffix], data_files=str(path), split="train")
        except Exception as error:
            cause = f" ({error.__cause__})" if error.__cause__ else ""
            raise DataError(f"could not read {path}: {error}{cause}; expected at least one row with `text` and "
                            "`label` columns") from error
    return DatasetDict(splits)


def _check_columns(raw: DatasetDict, name: str) -> None:
    for split in ("train", "test"):
        if split not in raw:
            raise DataError(f"dataset {name!r} has no {split!r} split")
        missing = {"text", "label"} - set(raw[split].column_names)
        if missing:
            raise DataError(f"dataset {name!r} ({split}) lacks the column(s) {sorted(missing)}; "
                            f"it has {raw[split].column_names}")
        if len(raw[split]) == 0:
            raise DataError(f"dataset {name!r} has an empty {split!r} split")
        labels = raw[split]["label"]
        if any(label is None or not isinstance(label, (int, np.integer)) or label < 0 for label in labels):
            raise DataError(f"dataset {name!r} ({split}) has rows without a valid label (integers 0, 1, ...)")


# ---------------------------------------------------------------------------------------------------------------
# Tokenization

def _stratified_subset(indices: np.ndarray, labels: np.ndarray, size: int | float, seed: int) -> np.ndarray:
    """A seeded, label-stratified subset of `indices` (`size` a count or a fraction)."""
    if isinstance(size, int) and size >= len(indices):
        return indices
    # Imported here: sklearn.model_selection imports scipy.stats, which takes seconds, and predict, pretrain and
    # export import this module without splitting anything.
    from sklearn.model_selection import train_test_split

    stratify = labels if np.bincount(labels).min() >= 2 else None
    subset, _ = train_test_split(indices, train_size=size, stratify=stratify, random_state=seed)
    return np.sort(subset)


def truncate(ids: list[int], max_length: int) -> list[int]:
    """At most max_length token ids, the last one (</s> or [SEP]) kept."""
    return ids if len(ids) <= max_length else ids[:max_length - 1] + ids[-1:]


def token_ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Each review's token ids, special tokens added, whole (`truncate` cuts them)."""
    return tokenizer(list(texts), add_special_tokens=True, verbose=False)["input_ids"]


def tokenize_reviews(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids as the tokenize stage makes them: special tokens added, at most max_length, the last one kept."""
    return [truncate(ids, max_length) for ids in token_ids(tokenizer, texts)]


def tokenize(raw: DatasetDict, tokenizer, params: DataParams, model_max_length: int) -> tuple[DatasetDict, dict]:
    """Raw text -> train / validation / test with `input_ids` (truncated to max_length), `label` and `text`."""
    if params.max_length > model_max_length:
        raise ConfigError(f"data.max_length={params.max_length} is above what the converted model takes "
                          f"({model_max_length} tokens): lower it, or extend a BERT or RoBERTa checkpoint with "
                          "model.max_length")
    texts, labels = {}, {}
    for split in ("train", "test"):
        split_labels = np.asarray(raw[split]["label"])
        keep = np.arange(len(split_labels))
        limit = (params.test_limit or params.limit) if split == "test" else params.limit
        if limit:
            keep = _stratified_subset(keep, split_labels, limit, params.seed)
        texts[split] = [text or "" for text in raw[split].select(keep)["text"]]  # None counts as empty
        labels[split] = split_labels[keep]
    train_idx = np.arange(len(labels["train"]))
    if len(train_idx) < 4:
        raise DataError(f"the training split has {len(train_idx)} reviews: too few to hold out a validation set")
    val_idx = np.setdiff1d(train_idx, _stratified_subset(train_idx, labels["train"], 1 - params.val_size, params.seed))
    fit_idx = np.setdiff1d(train_idx, val_idx)
    parts = {"train": ("train", fit_idx), "validation": ("train", val_idx), "test": ("test", None)}

    out, summary = {}, {"dataset": params.dataset, "max_length": params.max_length}
    for split, (source, index) in parts.items():
        split_texts = texts[source] if index is None else [texts[source][i] for i in index]
        split_labels = labels[source] if index is None else labels[source][index]
        full = token_ids(tokenizer, split_texts)  # truncated below
        lengths = np.array([len(ids) for ids in full])
        ids = [truncate(x, params.max_length) for x in full]
        # The text stays beside its tokens: baselines and error analysis read exactly these reviews.
        out[split] = Dataset.from_dict({"input_ids": ids, "label": split_labels.astype(np.int64),
                                        "text": split_texts})
        summary[split] = {
            "reviews": len(ids),
            "labels": {int(k): int(v) for k, v in zip(*np.unique(split_labels, return_counts=True))},
            "tokens_p50_p90_p99_max": [int(np.percentile(lengths, q)) for q in (50, 90, 99)] + [int(lengths.max())],
            "truncated": int((lengths > params.max_length).sum()),
            "empty": int(sum(1 for t in split_texts if not t.strip())),
        }
    return DatasetDict(out), summary


def check_labels(labels: np.ndarray, num_labels: int, where: str) -> None:
    """Labels must be 0..num_labels-1, the head's outputs: a clear error before any training, not an IndexError."""
    found = np.unique(labels)
    if found.size and (found.min() < 0 or found.max() >= num_labels):
        shown = ", ".join(map(str, found[:10].tolist())) + (", ..." if found.size > 10 else "")
        raise DataError(f"{where} has the labels {shown}, but head.num_labels={num_labels} takes labels 0 to "
                        f"{num_labels - 1}: set head.num_labels={int(found.max()) + 1} "
                        f"(dvc exp run -S head.num_labels={int(found.max()) + 1}) or relabel the data")


def save_tokenized(data: DatasetDict, summary: dict, out_dir: str | Path) -> None:
    out_dir = Path(out_dir)
    data.save_to_disk(out_dir)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def load_tokenized(directory: str | Path, split: str) -> Dataset:
    path = Path(directory) / split
    with written_by("tokenize"):
        if not path.is_dir():
            raise MissingInputError(f"{path} not found")
        with reading(path):
            return load_from_disk(str(path))
