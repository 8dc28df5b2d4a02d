"""The export stage's work: the trained classifier where users deploy it, in data/export/:

* `hf/`: a transformers `LongformerForSequenceClassification` directory (config with the label names, weights,
  tokenizer truncating as training did) and its model card, `README.md`;
* `model.onnx`: the whole classifier for onnxruntime, any batch and length (`longformer.onnx`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
import warnings
from pathlib import Path

import yaml

from longformer.config import HeadConfig, LongformerConfig
from longformer.errors import ConfigError, MissingInputError, PartialExportWarning, reading, written_by
from longformer.hf import is_hub_id
from longformer.model import LongformerClassifier
from longformer.onnx import export_onnx
from longformer.pipeline.params import Params

HF_DIR = "hf"
ONNX_FILE = "model.onnx"
MODEL_CARD = "README.md"


def export(train_dir: str | Path, checkpoint_dir: str | Path, summary_file: str | Path, metrics_file: str | Path,
           pretrain_file: str | Path, params: Params, out_dir: str | Path, lock_file: str | Path = "dvc.lock"
           ) -> list[str]:
    """Write out_dir (replacing it whole, only once everything is written). Returns the warnings, one line each."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir} is a file: the export goes to a directory; remove the file or give another "
                          "--out")
    with written_by("train"):
        classifier = LongformerClassifier.load(train_dir)
    summary = read_json(summary_file, "tokenize")
    metrics = read_json(metrics_file, "evaluate")
    pretrained = read_json(pretrain_file, "pretrain")
    source = read_json(Path(checkpoint_dir) / "config.json", "download")
    if len(params.export.labels) != classifier.head_config.num_labels:
        raise ConfigError(f"export.labels names {len(params.export.labels)} classes, but the trained classifier in "
                          f"{train_dir} has {classifier.head_config.num_labels}")

    staging = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PartialExportWarning)
        head_written = classifier.save_hf(staging / HF_DIR, tokenizer=checkpoint_dir, labels=params.export.labels,
                                          tokenizer_max_length=summary["max_length"])
    card = model_card(classifier, params, source, summary, metrics, pretrained, head_written, provenance(lock_file))
    (staging / HF_DIR / MODEL_CARD).write_text(card)
    export_onnx(classifier, staging / ONNX_FILE)
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    said = [str(w.message) for w in caught if issubclass(w.category, PartialExportWarning)]
    if not head_written:
        said.append(f"{out_dir / HF_DIR} is an encoder, not a classifier (its model card says so); the whole "
                    f"classifier is {out_dir / ONNX_FILE}. For a transformers classifier, train with head.dim=0 and "
                    "head.activation=tanh")
    return said


def read_json(path: str | Path, stage: str) -> dict:
    with written_by(stage):
        if not Path(path).is_file():
            raise MissingInputError(f"{path} not found")
        with reading(path):
            return json.loads(Path(path).read_text())


def provenance(lock_file: str | Path) -> dict[str, str]:
    """The git revision of the working tree (marked when it has uncommitted changes) and the sha256 of dvc.lock."""
    def git(*args: str) -> str | None:
        try:
            result = subprocess.run(["git", *args], capture_output=True, text=True, timeout=30)
        except OSError:  # no git
            return None
        return result.stdout.strip() if result.returncode == 0 else None

    revision = git("rev-parse", "HEAD")
    if revision and git("status", "--porcelain", "--untracked-files=no"):
        revision += " (with uncommitted changes)"
    lock = Path(lock_file)
    digest = hashlib.sha256(lock.read_bytes()).hexdigest() if lock.is_file() else None
    return {"git": revision or "unknown (not a git working tree)", "dvc.lock": digest or "none (no dvc.lock yet)"}


def how_made_long(source: dict, classifier: LongformerClassifier, pretrained: dict) -> str:
    """The base model's story: converted or made long, then pretrained (metrics/pretrain.json) or not."""
    config = classifier.config
    windows = sorted(set(config.attention_window))
    window_text = f"attention window {windows[0]}" if len(windows) == 1 else \
        f"attention windows {', '.join(map(str, config.attention_window))} (one per layer)"
    family = source.get("model_type", "longformer")
    if family == "longformer":
        made = f"a Longformer checkpoint, converted as it is: {config.max_length} tokens, {window_text}."
    else:
        made = (f"a {family} checkpoint made long the way the Longformer was made from RoBERTa (Beltagy et al., "
                f"2020, section 5): its {LongformerConfig.from_hf_dict(source).max_length} position embeddings "
                f"copied over and over up to {config.max_length} positions, the global query/key/value projections "
                f"started as copies of the local ones, {window_text}.")
    return f"{made} {how_pretrained(pretrained)}"


def how_pretrained(pretrained: dict) -> str:
    """What the pretrain stage did, from its metrics."""
    if not pretrained.get("steps"):
        return "No masked-LM pretraining after the conversion: fine-tuned directly on the task."
    before, after = pretrained["before"]["loss"], pretrained["after"]["loss"]
    precision = f", in {pretrained['precision']}" if "precision" in pretrained else ""  # recorded since 2026-12-07
    return (f"Then {pretrained['steps']} steps of masked-LM pretraining on the training texts (sequences of "
            f"{pretrained['sequence_length']} tokens{precision}), keeping the weights of step "
            f"{pretrained['best_step']}: held-out masked-LM loss {before:.4f} -> {after:.4f}.")


def card_metadata(params: Params, head_written: bool) -> dict:
    """The model card's YAML header: what the hub indexes the model by. A directory without the head is an encoder
    (feature extraction), whatever the ONNX file beside it classifies."""
    task = "text-classification" if head_written else "feature-extraction"
    meta = {"library_name": "transformers", "pipeline_tag": task, "tags": ["longformer", task, "long-document"],
            "metrics": ["accuracy", "f1"]}
    if is_hub_id(params.model.checkpoint):
        meta["base_model"] = params.model.checkpoint
    if params.data.dataset == "imdb":
        meta["datasets"] = ["imdb"]
    return meta


def model_card(classifier: LongformerClassifier, params: Params, source: dict, summary: dict, metrics: dict,
               pretrained: dict, head_written: bool, origin: dict[str, str]) -> str:
    """The model's README.md in the Hugging Face hub's convention: metadata, then what it is, how it was made,
    on what data, with which params, its test metrics and where it came from."""
    checkpoint, config, head = params.model.checkpoint, classifier.config, classifier.head_config
    sizes, truncated = (", ".join(f"{split} {summary[split][key]:,}" for split in ("train", "validation", "test"))
                        for key in ("reviews", "truncated"))
    results = "\n".join(f"| {name} | {metrics[name]:.4f} |" for name in ("accuracy", "f1", "loss") if name in metrics)
    every_param = yaml.safe_dump(dataclasses.asdict(params), sort_keys=False).strip()
    labels = ", ".join(f"{i} = {name}" for i, name in enumerate(params.export.labels))
    return f"""---
{yaml.safe_dump(card_metadata(params, head_written), sort_keys=False).strip()}
---

# Longformer {"classifier" if head_written else "encoder of a classifier"} ({checkpoint}, {config.max_length} tokens)

{what_it_is(config, head, labels, head_written)}

## Base model

`{checkpoint}`: {how_made_long(source, classifier, pretrained)}

## Data

`{params.data.dataset}`: {sizes} reviews, tokenized to at most {summary['max_length']} tokens (truncated: {truncated}).

## Training

Head: Linear({config.hidden_size}, {head.dim}) -> dropout {head.dropout} -> {head.activation} -> dropout ->
Linear({head.dim}, {head.num_labels}); the weights kept are those of the best validation accuracy. Every param:

```yaml
{every_param}
```

## Test results

On {metrics.get('reviews', summary['test']['reviews']):,} test reviews, {computed_in(metrics)}:

| metric | value |
|---|---:|
{results}

## Provenance

- git revision: {origin['git']}
- dvc.lock sha256 (as the export stage found it): {origin['dvc.lock']}
"""


def computed_in(metrics: dict) -> str:
    """The precision the test metrics were computed in, where the evaluate stage recorded it."""
    exports = "both exports hold fp32 weights and compute in fp32"
    if "precision" not in metrics:
        return f"in a precision the metrics do not record ({exports})"
    return (f"the classifier computing in {metrics['precision']} (train.precision as the machine that evaluated it "
            f"resolved it; {exports})")


def what_it_is(config: LongformerConfig, head: HeadConfig, labels: str, head_written: bool) -> str:
    """The card's opening: what `hf/` holds and how to run it, and the ONNX file beside it."""
    onnx = (f"`../model.onnx` is the {'same' if head_written else 'whole'} classifier for onnxruntime: `input_ids` and "
            f"`attention_mask` (int64, batch x length, any length up to {config.max_length}) in, `logits` out "
            f"(labels: {labels}).")
    if not head_written:
        return f"""This directory holds the **encoder only**: a transformers `LongformerModel`
({config.num_layers} layers, hidden {config.hidden_size}), with no classification head. The classifier was trained
with the head Linear({config.hidden_size}, {head.dim}) -> {head.activation} -> Linear({head.dim},
{head.num_labels}), which transformers' Longformer head (dense(hidden -> hidden) -> tanh -> out_proj) cannot
hold; a `text-classification` pipeline on this directory would put a random head on it. {onnx}

```python
from transformers import AutoModel
encoder = AutoModel.from_pretrained("path/to/hf")  # features: last_hidden_state
```"""
    return f"""A long-document classifier: a Longformer encoder ({config.num_layers} layers, hidden
{config.hidden_size}) with a classification head on the first token, which has global attention. Labels: {labels}.

```python
from transformers import pipeline

classify = pipeline("text-classification", model="path/to/hf", truncation=True)  # truncates as in training
classify("A long review ...", top_k=None)
```

{onnx}"""
