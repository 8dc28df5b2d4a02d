"""Fine-tuning: AdamW, linear warmup then decay, label smoothing, gradient accumulation, best-by-validation,
resumable after an interruption.

* `longformer.pipeline.step.optimizer_step`: one optimizer step over a group of batches (also what `bench/` times);
* `ResumeState`: everything an interrupted run needs to go on, saved every `train.resume_every` steps;
* `Run`: the optimizer, schedule, position and logging of one run; `train`: the loop, epoch by epoch.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from longformer import weights
from longformer.config import HeadConfig
from longformer.errors import TrainingError, written_by
from longformer.model import LongformerClassifier, LongformerModel
from longformer.pipeline.batching import collate, length_bucketed_batches
from longformer.pipeline.data import check_labels, load_tokenized
from longformer.pipeline.distributed import Processes
from longformer.pipeline.inference import autocast, predict_logits
from longformer.pipeline.metrics import classification_metrics
from longformer.pipeline.params import TrainParams
from longformer.pipeline.step import (NonFiniteLossError, make_optimizer, optimizer_step,
                                      warmup_then_linear_decay)


def file_tree_digest(directory: Path) -> str:
    """sha256 over the names and contents of every file below `directory`."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(directory)).encode())
        with open(path, "rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()


def run_identity(model_dir: Path, data_dir: Path, head: HeadConfig, params: TrainParams) -> dict[str, str]:
    """What a run is: its params and the content of its inputs. Resume state of any other run is discarded."""
    settings = json.dumps([asdict(head), asdict(params)], sort_keys=True).encode()
    return {"params": hashlib.sha256(settings).hexdigest(), "model": file_tree_digest(model_dir),
            "data": file_tree_digest(data_dir)}


def step_groups(batches: list[list[int]], grad_accum: int, procs: Processes) -> list[list[list[int]]]:
    """Per optimizer step, this process's batches: steps take grad_accum * world batches, process r every
    world-th from r. A short last step borrows batches from the epoch's start so all processes get as many."""
    per_step = grad_accum * procs.world
    groups = []
    for start in range(0, len(batches), per_step):
        step = batches[start:start + per_step]
        if procs.world > 1 and len(step) % procs.world:
            step = step + batches[:procs.world - len(step) % procs.world]
        groups.append(step[procs.rank::procs.world])
    return groups


@dataclass
class Position:
    """Where training stands: the next optimizer step runs batch group `group` of epoch `epoch`."""

    step: int = 0
    epoch: int = 0
    group: int = 0


@dataclass
class Best:
    """The best validation so far: its metrics and the weights that reached them (on the CPU)."""

    metrics: dict = field(default_factory=lambda: {"val_accuracy": -1.0})
    weights: dict[str, Tensor] | None = None

    def update(self, model: nn.Module, metrics: dict[str, float], position: Position) -> None:
        if metrics["accuracy"] > self.metrics["val_accuracy"]:
            self.metrics = dict(val_accuracy=metrics["accuracy"], val_loss=metrics["loss"], step=position.step,
                                epoch=position.epoch + 1)
            self.weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    def write(self, model: LongformerClassifier, out_dir: Path) -> None:
        """The best weights, as `model.save` writes a classifier, into out_dir (nothing before the first
        validation); the model itself keeps its weights."""
        if self.weights is not None:
            weights.save(out_dir, model.config, self.weights, model.head_config)


@dataclass
class ResumeState:
    """Everything an interrupted run needs to end exactly where an uninterrupted one would. Tensors and plain data
    only, so `torch.load(weights_only=True)` reads it and nothing in it runs."""

    identity: dict[str, str]  # what the run is: see run_identity
    model: dict
    optimizer: dict
    scheduler: dict
    rng: list[Tensor]  # every process's CPU RNG state
    cuda_rng: list[Tensor | None]
    position: Position
    best: Best
    live: dict[str, bytes]  # dvclive's files so far

    @classmethod
    def capture(cls, identity: dict[str, str], model: nn.Module, optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LRScheduler, position: Position, best: Best, metrics_dir: Path,
                procs: Processes) -> ResumeState | None:
        """The state now; every process must call it (each gives its RNG states), the main one gets it."""
        rng = procs.gather(torch.get_rng_state())
        cuda_rng = procs.gather(torch.cuda.get_rng_state() if torch.cuda.is_available() else None)
        if not procs.main:
            return None
        return cls(identity, model.state_dict(), optimizer.state_dict(), scheduler.state_dict(), rng, cuda_rng,
                   position, best, snapshot(metrics_dir))

    def apply(self, model: nn.Module, optimizer: torch.optim.Optimizer,
              scheduler: torch.optim.lr_scheduler.LRScheduler, procs: Processes, metrics_dir: Path) -> None:
        """Put the run back as it was: weights, optimizer, scheduler, this process's RNG, dvclive's files."""
        model.load_state_dict(self.model)
        optimizer.load_state_dict(self.optimizer)
        scheduler.load_state_dict(self.scheduler)
        torch.set_rng_state(self.rng[procs.rank])
        if torch.cuda.is_available():
            torch.cuda.set_rng_state(self.cuda_rng[procs.rank])
        if procs.main:
            restore(self.live, metrics_dir)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {f.name: getattr(self, f.name) for f in fields(self)}  # not asdict: it would deep-copy every tensor
        state |= {"position": asdict(self.position), "best": {"metrics": self.best.metrics,
                                                              "weights": self.best.weights}}
        weights.write_atomic(path, lambda tmp: torch.save(state, tmp))  # a kill never leaves a torn state file

    @classmethod
    def load(cls, path: Path, identity: dict[str, str], described: dict[str, str], say: bool) -> ResumeState | None:
        """The state an interrupted run left in `path`, if it is this run's and readable; else None, and (if `say`)
        one line on why it is discarded. `described` names each part of the identity."""
        if not path.is_file():
            return None
        try:
            state = torch.load(path, weights_only=True)
            changed = [described[part] for part in identity if state["identity"].get(part) != identity[part]]
            state["position"], state["best"] = Position(**state["position"]), Best(**state["best"])
            resumed = cls(**state)
        except Exception as error:  # torn, truncated or foreign: any unpickling error
            if say:
                print(f"warning: discarding {path}, which cannot be read ({type(error).__name__}: "
                      f"{str(error)[:200]}); training starts afresh", file=sys.stderr)
            return None
        if changed:
            if say:
                print(f"discarding {path}: it belongs to another run ({', '.join(changed)} changed since); "
                      "training starts afresh")
            return None
        return resumed


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def restore(files: dict[str, bytes], directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    for name, content in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(content)


def open_live(metrics_dir: Path, resumed: bool):
    """dvclive, for the main process. dvc.yaml declares metrics and plots itself, and no experiment is created
    behind the user's back."""
    from dvclive import Live

    return Live(str(metrics_dir), dvcyaml=False, save_dvc_exp=False, report=None, resume=resumed)


@dataclass
class Run:
    """One run's optimizer, schedule and position, its best validation, its dvclive logger and its resumable state.
    The model and its DDP wrapper (`forward`, the same module on one process) are what the steps train."""

    model: LongformerClassifier
    forward: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    total_steps: int
    procs: Processes
    identity: dict[str, str]
    resume_file: Path
    metrics_dir: Path
    position: Position = field(default_factory=Position)
    best: Best = field(default_factory=Best)
    live: Any = None  # dvclive's Live, on the main process

    def resume(self, described: dict[str, str]) -> None:
        """Go on from the resumable state if it is this run's (`described` names each part of the identity);
        then open dvclive."""
        resumed = ResumeState.load(self.resume_file, self.identity, described, self.procs.main)
        if resumed:
            resumed.apply(self.model, self.optimizer, self.scheduler, self.procs, self.metrics_dir)
            self.position, self.best = resumed.position, resumed.best
            if self.procs.main:
                print(f"resuming an interrupted run from {self.resume_file}: optimizer step {self.position.step} "
                      f"of {self.total_steps}, epoch {self.position.epoch + 1}")
        self.live = open_live(self.metrics_dir, resumed is not None) if self.procs.main else None

    def log(self, metrics: dict[str, float]) -> None:
        if self.live:
            self.live.step = self.position.step  # the x of every curve: optimizer steps done, as in best["step"]
            for name, value in metrics.items():
                self.live.log_metric(name, value)

    def save_state(self) -> None:
        """The resumable state, written atomically (every process must call it)."""
        state = ResumeState.capture(self.identity, self.model, self.optimizer, self.scheduler, self.position,
                                    self.best, self.metrics_dir, self.procs)
        if state:
            state.save(self.resume_file)

    def finish(self, out_dir: Path) -> None:
        """The best weights to out_dir, the summary to dvclive; a finished run leaves nothing to resume."""
        if self.procs.main:
            self.best.write(self.model, out_dir)
            self.live.summary["best"] = dict(self.best.metrics)
            self.live.end()
            shutil.rmtree(self.resume_file.parent, ignore_errors=True)
        del self.forward  # a DDP wrapper holds the process group, which close() frees
        self.procs.close()


def start_run(model: LongformerClassifier, params: TrainParams, train_rows: int, identity: dict[str, str],
              resume_dir: Path, metrics_dir: Path, procs: Processes) -> Run:
    """The optimizer and its warmup-then-decay schedule over all epochs; the model wrapped for DDP on several
    processes."""
    # An optimizer step takes grad_accum batches on each process: grad_accum * nproc in all.
    steps_per_epoch = math.ceil(math.ceil(train_rows / params.batch_size) / (params.grad_accum * procs.world))
    total_steps = params.epochs * steps_per_epoch
    optimizer = make_optimizer(model, params.lr, params.weight_decay, params.adam_eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_then_linear_decay(total_steps, math.ceil(params.warmup_ratio * total_steps)))
    # The classifier's last layer never uses its sliding-window q/k/v projection: DDP must know.
    forward = DistributedDataParallel(model, find_unused_parameters=True) if procs.world > 1 else model
    return Run(model, forward, optimizer, scheduler, total_steps, procs, identity, resume_dir / "state.pt",
               metrics_dir)


def train(model_dir: str | Path, data_dir: str | Path, out_dir: str | Path, metrics_dir: str | Path,
          head: HeadConfig, params: TrainParams, resume_dir: str | Path = ".resume/train") -> dict[str, float]:
    """Fine-tune encoder + head; the best weights by validation accuracy go to `out_dir`.

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
    with written_by("convert"):
        model = LongformerClassifier.from_encoder(LongformerModel.load(model_dir), head).to(procs.device)
    model.encoder.gradient_checkpointing = params.gradient_checkpointing
    run = start_run(model, params, len(train_set), run_identity(model_dir, data_dir, head, params), Path(resume_dir),
                    metrics_dir, procs)
    run.resume({"params": "the head.* or train.* params", "model": f"the model in {model_dir}",
                "data": f"the tokenized data in {data_dir}"})
    rows, labels = train_set["input_ids"], train_set["label"]
    model.train()
    while run.position.epoch < params.epochs:
        train_epoch(run, rows, labels, val_set, params, out_dir)
    run.finish(out_dir)
    return run.best.metrics


def train_epoch(run: Run, rows: list[list[int]], labels: list[int], val_set: Dataset, params: TrainParams,
                out_dir: Path) -> None:
    """The rest of the current epoch, from the run's position: optimizer steps, validations, resumable states."""
    position = run.position
    batches = length_bucketed_batches([len(r) for r in rows], params.batch_size, shuffle=True,
                                      seed=params.seed + position.epoch)
    groups = step_groups(batches, params.grad_accum, run.procs)
    progress = tqdm(total=len(groups), initial=position.group, desc=f"epoch {position.epoch + 1}/{params.epochs}",
                    unit="step", disable=None if run.procs.main else True)
    for group in groups[position.group:]:
        loss = take_step(run, [collate([rows[i] for i in batch], [labels[i] for i in batch],
                                       run.model.config.pad_token_id) for batch in group], params, out_dir)
        run.log({"train/loss": loss, "train/lr": run.scheduler.get_last_lr()[0]})
        progress.update()
        progress.set_postfix(loss=f"{loss:.4f}", best_val=f"{max(run.best.metrics['val_accuracy'], 0):.4f}")
        epoch_end = position.group == len(groups)
        if epoch_end or (params.eval_every and position.step % params.eval_every == 0):
            validate(run, val_set, params.batch_size)
        if run.live:
            run.live.next_step()  # writes this step's metrics and plots
        if epoch_end:
            position.epoch, position.group = position.epoch + 1, 0
        if epoch_end or position.step % params.resume_every == 0:
            run.save_state()
    progress.close()


def take_step(run: Run, batches: list[dict[str, Tensor]], params: TrainParams, out_dir: Path) -> float:
    """One optimizer step over this process's batches; the loss averaged over the processes. A non-finite loss
    stops the run with the best weights so far in out_dir."""
    device = run.procs.device
    batches = [{k: v.to(device) for k, v in batch.items()} for batch in batches]
    try:
        loss = optimizer_step(run.forward, batches, run.optimizer, run.scheduler, params.label_smoothing,
                              params.max_grad_norm, autocast=lambda: autocast(device))
    except NonFiniteLossError as error:
        if run.procs.main:
            run.best.write(run.model, out_dir)
        raise TrainingError(
            f"{error} at optimizer step {run.position.step + 1} (epoch {run.position.epoch + 1}); training stopped. "
            f"The best weights so far are in {out_dir}, the last good resumable state in {run.resume_file}. "
            "Try a lower train.lr or train.max_grad_norm.") from None
    run.position.step += 1
    run.position.group += 1
    return run.procs.mean(loss)


def validate(run: Run, val_set: Dataset, batch_size: int) -> None:
    """Accuracy and loss on the validation split, logged; the best weights kept."""
    logits = predict_logits(run.model, val_set, batch_size, "validate", run.procs)
    metrics = classification_metrics(np.asarray(val_set["label"]), logits)
    run.log({"val/accuracy": metrics["accuracy"], "val/loss": metrics["loss"]})
    run.best.update(run.model, metrics, run.position)
