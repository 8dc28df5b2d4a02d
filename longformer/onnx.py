"""The classifier as one ONNX file, and onnxruntime to run it.

`export_onnx` writes the whole classifier: `input_ids` and `attention_mask` (int64, batch x length) in, `logits`
out, with the first token global as in training. Batch and length are dynamic: one graph, traced at one length,
serves every length from 1 token to the model's maximum, because what is exported has no branch on the length
(`FirstTokenGlobal`); the maximum is in the file's metadata (`max_length`), and `OnnxClassifier` refuses a longer
input with a clear error instead of onnxruntime's. Needs the `onnx` extra (onnx, onnxscript for torch's exporter,
onnxruntime), imported when used.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from longformer import kernels
from longformer.attention import AttentionMasks
from longformer.errors import DataError
from longformer.model import LongformerClassifier

INPUT_NAMES = ["input_ids", "attention_mask"]
OUTPUT_NAMES = ["logits"]
MAX_LENGTH_KEY = "max_length"  # the metadata entry that holds the longest input the model takes, in tokens


class FirstTokenGlobal(nn.Module):
    """The classifier as it is exported: the first token is the one global token, and the masks are built from
    `attention_mask` alone, with no host sync and the same blocked attention layout at every length."""

    def __init__(self, classifier: LongformerClassifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        masks = AttentionMasks.first_token_global(attention_mask, fixed_layout=True)
        first = self.classifier.encoder.encode(input_ids, masks, global_only=True)[:, 0]  # (B, hidden)
        return self.classifier.head(first)


def example_length(classifier: LongformerClassifier) -> int:
    """A length to trace with: several attention blocks in every layer where the model is long enough, so that no
    size is fixed at 1 block; not a multiple of any block, so that padding is traced."""
    return min(classifier.config.max_length, 2 * max(classifier.config.attention_window) + 3)


def export_onnx(classifier: LongformerClassifier, path: str | Path) -> None:
    """Write `classifier` (eval mode, fp32) as an ONNX file of dynamic batch and length."""
    path = Path(path)
    model = FirstTokenGlobal(classifier).eval()
    input_ids = torch.full((2, example_length(classifier)), 5, dtype=torch.long)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, -3:] = 0  # a padded row
    dynamic = {0: torch.export.Dim.DYNAMIC, 1: torch.export.Dim.DYNAMIC}
    was_training = classifier.training
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed": not needed here
    try:
        with kernels.disabled(), torch.no_grad(), warnings.catch_warnings():  # the reference model: plain torch ops
            warnings.simplefilter("ignore", FutureWarning)  # the exporter's own deprecations
            program = torch.onnx.export(model, (input_ids, attention_mask), dynamo=True, verbose=False,
                                        input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
                                        dynamic_shapes=(dynamic, dynamic))
    finally:
        classifier.train(was_training)
    program.model.metadata_props[MAX_LENGTH_KEY] = str(classifier.config.max_length)
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path))


class OnnxClassifier:
    """An exported classifier run by onnxruntime on the CPU: `logits(input_ids, attention_mask)` -> (B, labels)."""

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads() or os.cpu_count() or 1
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.num_labels = self.session.get_outputs()[0].shape[1]
        saved = self.session.get_modelmeta().custom_metadata_map.get(MAX_LENGTH_KEY)
        self.max_length = int(saved) if saved else None  # None: a file exported before the metadata was written

    def logits(self, input_ids: np.ndarray | Tensor, attention_mask: np.ndarray | Tensor) -> np.ndarray:
        """(B, n) ids and mask -> (B, labels) logits; n at most `max_length` (a DataError beyond it)."""
        feed = {name: np.asarray(value, dtype=np.int64) for name, value in zip(INPUT_NAMES,
                                                                               (input_ids, attention_mask))}
        length = feed["input_ids"].shape[1]
        if self.max_length is not None and length > self.max_length:
            raise DataError(f"input has {length} tokens; this model takes at most {self.max_length}: truncate it")
        return self.session.run(OUTPUT_NAMES, feed)[0]
