"""Fine-tuning: encoder + classification head, label-smoothed cross-entropy, the best weights by validation accuracy;
the loop (resume, DDP, dvclive) is `longformer.pipeline.loop`'s."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from datasets import Dataset
from torch import Tensor, nn

from longformer.config import HeadConfig
from longformer.errors import written_by
from longformer.model import LongformerClassifier, LongformerModel
from longformer.pipeline.batching import collate, length_bucketed_batches
from longformer.pipeline.data import check_labels, load_tokenized
from longformer.pipeline.distributed import Processes
from longformer.pipeline.inference import predict_logits
from longformer.pipeline.loop import run_identity, start_run, steps_per_epoch, train_to_end
from longformer.pipeline.metrics import classification_metrics, write_predictions
from longformer.pipeline.params import TrainParams
from longformer.pipeline.precision import resolve_precision
from longformer.pipeline.step import classification_loss


@dataclass
class Classification:
    """Fine-tuning: label-smoothed cross-entropy on length-bucketed batches; validation accuracy picks the best."""

    rows: list[list[int]]
    labels: list[int]
    val_set: Dataset
    pad_token_id: int
    params: TrainParams
    metric: ClassVar[str] = "accuracy"
    higher_is_better: ClassVar[bool] = True
    predictions: list[int] | None = None  # the last validation's, in the validation split's order

    def __post_init__(self) -> None:
        self.loss = classification_loss(self.params.label_smoothing)

    def batches(self, epoch: int) -> list[list[int]]:
        return length_bucketed_batches([len(r) for r in self.rows], self.params.batch_size, shuffle=True,
                                       seed=self.params.seed + epoch)

    def collate(self, batch: list[int], epoch: int) -> dict[str, Tensor]:
        return collate([self.rows[i] for i in batch], [self.labels[i] for i in batch], self.pad_token_id)

    def validate(self, model: nn.Module, procs: Processes, precision: str) -> dict:
        logits = predict_logits(model, self.val_set, self.params.batch_size, "validate", procs, precision)
        metrics = classification_metrics(np.asarray(self.val_set["label"]), logits)
        self.predictions = logits.argmax(axis=1).tolist()
        return {"accuracy": metrics["accuracy"], "loss": metrics["loss"]}


def train(model_dir: str | Path, data_dir: str | Path, out_dir: str | Path, metrics_dir: str | Path,
          head: HeadConfig, params: TrainParams, resume_dir: str | Path = ".resume/train",
          predictions_file: str | Path | None = None) -> dict[str, float]:
    """Fine-tune encoder + head; the best weights by validation accuracy go to `out_dir`, their predictions on the
    validation reviews to `predictions_file` (actual,predicted: what `bench/paired_accuracy.py` and
    `longformer.pipeline.compare` pair experiments by).

    Every `resume_every` optimizer steps and at each epoch end, a `ResumeState` is written atomically to
    `resume_dir/state.pt`. Re-running with the same params and inputs after an interruption resumes from there
    and ends exactly where an uninterrupted one would; a finished run removes it.
    """
    model_dir, data_dir, out_dir, metrics_dir = map(Path, (model_dir, data_dir, out_dir, metrics_dir))
    procs = Processes.from_env()
    train_set, val_set = load_tokenized(data_dir, "train"), load_tokenized(data_dir, "validation")
    for split, data in (("train", train_set), ("validation", val_set)):
        check_labels(np.asarray(data["label"]), head.num_labels, f"the {split} split of {data_dir}")
    torch.manual_seed(params.seed)  # the same initial head on every process
    with written_by("pretrain"):
        model = LongformerClassifier.from_encoder(LongformerModel.load(model_dir), head).to(procs.device)
    model.encoder.gradient_checkpointing = params.gradient_checkpointing
    objective = Classification(train_set["input_ids"], train_set["label"], val_set, model.config.pad_token_id, params)
    epoch_steps = steps_per_epoch(len(train_set), params, procs)
    settings = [asdict(head), {k: v for k, v in asdict(params).items() if k != "precision"}]  # resolved: see Run
    identity = run_identity(settings, {"model": model_dir, "data": data_dir})
    run = start_run(model, params, params.epochs * epoch_steps, epoch_steps, identity,
                    resolve_precision(params.precision, procs.device), Path(resume_dir), metrics_dir, procs)
    run.resume({"params": "the head.* or train.* params", "model": f"the model in {model_dir}",
                "data": f"the tokenized data in {data_dir}"})
    train_to_end(run, objective, params, out_dir)
    if predictions_file is not None and run.best.predictions is None:  # a state saved before states kept them
        model.load_state_dict(run.best.weights)
        objective.validate(model, procs, run.precision)
        run.best.predictions = objective.predictions
    run.finish(out_dir)
    if procs.main and predictions_file is not None:
        write_predictions(predictions_file, val_set["label"], run.best.predictions)
    return run.best.metrics
