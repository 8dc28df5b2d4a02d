"""Fine-tuning: AdamW, linear warmup then decay, label smoothing, gradient accumulation, best-by-validation."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from dvclive import Live
from tqdm import tqdm

from longformer.batching import collate, length_bucketed_batches
from longformer.checkpoint import load_encoder, save_classifier
from longformer.data import load_tokenized
from longformer.evaluate import autocast, classification_metrics, predict
from longformer.model import HeadConfig, LongformerClassifier


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss)."""


@dataclass
class TrainParams:
    epochs: int = 2
    batch_size: int = 8
    grad_accum: int = 2
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1  # fraction of the optimizer steps with a linear warmup
    label_smoothing: float = 0.1
    max_grad_norm: float = 1.0
    eval_every: int = 100  # optimizer steps between validations (and at every epoch end); 0 = epoch ends only
    gradient_checkpointing: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "grad_accum"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"train.{name} must be a positive integer, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"train.lr must be positive, got {self.lr!r}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"train.label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if self.weight_decay < 0 or self.max_grad_norm <= 0 or self.eval_every < 0:
            raise ValueError("train.weight_decay and train.eval_every must be >= 0, train.max_grad_norm > 0")


def warmup_then_linear_decay(total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return factor


def make_optimizer(model: torch.nn.Module, params: TrainParams) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases and LayerNorm weights (the 1-d tensors)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": params.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=params.lr)


def train(model_dir: str | Path, data_dir: str | Path, out_dir: str | Path, metrics_dir: str | Path,
          head: HeadConfig, params: TrainParams) -> dict[str, float]:
    """Fine-tune encoder + head; keeps the best checkpoint by validation accuracy in `out_dir`."""
    torch.manual_seed(params.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = LongformerClassifier.from_encoder(load_encoder(model_dir), head).to(device)
    model.encoder.gradient_checkpointing = params.gradient_checkpointing
    train_set, val_set = load_tokenized(data_dir, "train"), load_tokenized(data_dir, "validation")
    rows, labels = train_set["input_ids"], train_set["label"]
    val_labels = np.asarray(val_set["label"])
    lengths = [len(r) for r in rows]

    batches_per_epoch = math.ceil(len(rows) / params.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / params.grad_accum)
    total_steps = params.epochs * steps_per_epoch
    optimizer = make_optimizer(model, params)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_then_linear_decay(total_steps, math.ceil(params.warmup_ratio * total_steps)))

    # dvc.yaml declares metrics and plots itself; never create experiments behind the user's back.
    live = Live(str(metrics_dir), dvcyaml=False, save_dvc_exp=False, report=None)
    best = {"val_accuracy": -1.0}
    step = 0

    def validate(epoch: int) -> None:
        metrics = classification_metrics(predict(model, val_set, params.batch_size, desc="validate"), val_labels)
        live.log_metric("val/accuracy", metrics["accuracy"])
        live.log_metric("val/loss", metrics["loss"])
        if metrics["accuracy"] > best["val_accuracy"]:
            best.update(val_accuracy=metrics["accuracy"], val_loss=metrics["loss"], step=step, epoch=epoch)
            save_classifier(model, out_dir)

    model.train()
    for epoch in range(params.epochs):
        batches = length_bucketed_batches(lengths, params.batch_size, shuffle=True, seed=params.seed + epoch)
        progress = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{params.epochs}", unit="step", disable=None)
        for start in range(0, len(batches), params.grad_accum):
            group = batches[start:start + params.grad_accum]
            group_loss = 0.0
            for batch_idx in group:
                batch = collate([rows[i] for i in batch_idx], [labels[i] for i in batch_idx],
                                model.config.pad_token_id)
                batch = {k: v.to(device) for k, v in batch.items()}
                with autocast(device):
                    logits = model(batch["input_ids"], batch["attention_mask"])
                loss = model.loss(logits, batch["labels"], params.label_smoothing)
                if not torch.isfinite(loss):
                    raise TrainingError(f"the loss is {loss.item()} at optimizer step {step + 1} (epoch {epoch + 1}); "
                                        f"stopped. The best checkpoint so far is kept in {out_dir}. "
                                        "Try a lower train.lr or train.max_grad_norm.")
                (loss / len(group)).backward()
                group_loss += loss.item() / len(group)
            torch.nn.utils.clip_grad_norm_(model.parameters(), params.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            live.log_metric("train/loss", group_loss)
            live.log_metric("train/lr", scheduler.get_last_lr()[0])
            progress.update()
            progress.set_postfix(loss=f"{group_loss:.4f}", best_val=f"{max(best['val_accuracy'], 0):.4f}")
            epoch_end = start + params.grad_accum >= len(batches)
            if epoch_end or (params.eval_every and step % params.eval_every == 0):
                validate(epoch + 1)
            live.next_step()  # dvclive's step is the optimizer step
        progress.close()
    live.summary["best"] = dict(best)
    live.end()
    return best
