"""The training loop that fine-tuning (`longformer.pipeline.train`) and masked-LM pretraining
(`longformer.pipeline.pretrain`) share: AdamW, linear warmup then decay, gradient accumulation, best-by-validation,
DDP, resumable after an interruption.

* `longformer.pipeline.step.optimizer_step`: one optimizer step over a group of batches (also what `bench/` times);
* `Objective`: what a run trains for (its batches, loss and validation);
* `ResumeState`: everything an interrupted run needs to go on, saved every `resume_every` steps;
* `Run`: the optimizer, schedule, position and logging of one run; `train_to_end`: the loop, epoch by epoch.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from longformer import weights
from longformer.errors import TrainingError
from longformer.pipeline.distributed import Processes
from longformer.pipeline.precision import autocast
from longformer.pipeline.step import (LossFunction, NonFiniteLossError, make_optimizer, optimizer_step,
                                      warmup_then_linear_decay)


def file_tree_digest(directory: Path) -> str:
    """sha256 over the names and contents of every file below `directory`."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(directory)).encode())
        with open(path, "rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()


def run_identity(settings: list[dict], inputs: dict[str, Path]) -> dict[str, str]:
    """What a run is: its params and the content of its input directories. Resume state of any other run is
    discarded."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return {"params": digest} | {name: file_tree_digest(path) for name, path in inputs.items()}


def steps_per_epoch(examples: int, params: LoopParams, procs: Processes) -> int:
    """Optimizer steps in an epoch: each takes grad_accum batches on each process, grad_accum * nproc in all."""
    return math.ceil(math.ceil(examples / params.batch_size) / (params.grad_accum * procs.world))


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


class LoopParams(Protocol):
    """The settings the loop reads: `TrainParams` and `PretrainParams` have them."""

    batch_size: int
    grad_accum: int
    lr: float
    weight_decay: float
    adam_eps: float
    warmup_ratio: float
    max_grad_norm: float
    eval_every: int
    resume_every: int


class Objective(Protocol):
    """What a run trains for: the batches of each epoch, their loss, and the validation that picks the best
    weights by `metric`."""

    metric: ClassVar[str]
    higher_is_better: ClassVar[bool]
    loss: LossFunction
    predictions: list[int] | None  # the last validation's prediction for each validation example, if it makes them

    def batches(self, epoch: int) -> list[list[int]]:
        """The epoch's batches, as indices of the training examples."""

    def collate(self, batch: list[int], epoch: int) -> dict[str, Tensor]:
        """A batch's tensors, as `loss` takes them."""

    def validate(self, model: nn.Module, procs: Processes, precision: str) -> dict:
        """Validation metrics (the model run in the resolved `precision`): numbers, or dicts of numbers."""


@dataclass
class Best:
    """The best validation so far: its metrics (`val_*`, step, epoch; empty before the first), its predictions (see
    `Objective`) and the weights that reached them (on the CPU)."""

    metrics: dict = field(default_factory=dict)
    weights: dict[str, Tensor] | None = None
    predictions: list[int] | None = None

    def update(self, model: nn.Module, metrics: dict, position: Position, objective: Objective) -> None:
        value, best = metrics[objective.metric], self.metrics.get(f"val_{objective.metric}")
        if best is None or (value > best if objective.higher_is_better else value < best):
            self.metrics = {f"val_{k}": v for k, v in metrics.items()} | dict(step=position.step,
                                                                              epoch=position.epoch + 1)
            self.weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            self.predictions = objective.predictions

    def write(self, model: nn.Module, out_dir: Path) -> None:
        """The best weights, as `model.save` writes them, into out_dir (nothing before the first validation); the
        model itself keeps its weights."""
        if self.weights is not None:
            model.save(out_dir, self.weights)


@dataclass
class ResumeState:
    """Everything an interrupted run needs to end exactly where an uninterrupted one would. Tensors and plain data
    only, so `torch.load(weights_only=True)` reads it and nothing in it runs."""

    identity: dict[str, str]  # what the run is: see run_identity
    precision: str  # what it computed in: "fp32" or "bf16" (train.precision resolved)
    model: dict
    optimizer: dict
    scheduler: dict
    rng: list[Tensor]  # every process's CPU RNG state
    cuda_rng: list[Tensor | None]
    position: Position
    best: Best
    notes: dict  # what the run measured besides its curves (pretraining's "before")
    live: dict[str, bytes]  # dvclive's files so far

    @classmethod
    def capture(cls, run: Run) -> ResumeState | None:
        """The run's state now; every process must call it (each gives its RNG states), the main one gets it."""
        rng = run.procs.gather(torch.get_rng_state())
        cuda_rng = run.procs.gather(torch.cuda.get_rng_state() if torch.cuda.is_available() else None)
        if not run.procs.main:
            return None
        return cls(run.identity, run.precision, run.model.state_dict(), run.optimizer.state_dict(),
                   run.scheduler.state_dict(), rng, cuda_rng, run.position, run.best, run.notes,
                   snapshot(run.metrics_dir))

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
        state |= {"position": asdict(self.position), "best": {"metrics": self.best.metrics, "weights": self.best.weights,
                                                              "predictions": self.best.predictions}}
        weights.write_atomic(path, lambda tmp: torch.save(state, tmp))  # a kill never leaves a torn state file

    @classmethod
    def load(cls, path: Path, identity: dict[str, str], precision: str, described: dict[str, str],
             say: bool) -> ResumeState | None:
        """The state an interrupted run left in `path`, if it is this run's, in this `precision`, and readable; else
        None, and (if `say`) one line on why it is discarded. `described` names each part of the identity."""
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
        if resumed.precision != precision:
            if say:
                print(f"discarding {path}: it was computed in {resumed.precision}, this run computes in {precision} "
                      "(train.precision); training starts afresh")
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

    model: nn.Module  # a LongformerClassifier or LongformerForMaskedLM: what `save` writes
    forward: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    total_steps: int
    steps_per_epoch: int
    procs: Processes
    identity: dict[str, str]
    precision: str  # "fp32" or "bf16": train.precision resolved
    resume_file: Path
    metrics_dir: Path
    position: Position = field(default_factory=Position)
    best: Best = field(default_factory=Best)
    notes: dict = field(default_factory=dict)
    live: Any = None  # dvclive's Live, on the main process

    def resume(self, described: dict[str, str]) -> bool:
        """Go on from the resumable state if it is this run's (`described` names each part of the identity);
        then open dvclive. Returns whether it resumed."""
        resumed = ResumeState.load(self.resume_file, self.identity, self.precision, described, self.procs.main)
        if resumed:
            resumed.apply(self.model, self.optimizer, self.scheduler, self.procs, self.metrics_dir)
            self.position, self.best, self.notes = resumed.position, resumed.best, resumed.notes
            if self.procs.main:
                print(f"resuming an interrupted run from {self.resume_file}: optimizer step {self.position.step} "
                      f"of {self.total_steps}, epoch {self.position.epoch + 1}")
        self.live = open_live(self.metrics_dir, resumed is not None) if self.procs.main else None
        return resumed is not None

    def log(self, metrics: dict[str, float]) -> None:
        if self.live:
            self.live.step = self.position.step  # the x of every curve: optimizer steps done, as in best["step"]
            for name, value in metrics.items():
                self.live.log_metric(name, value)

    def save_state(self) -> None:
        """The resumable state, written atomically (every process must call it)."""
        state = ResumeState.capture(self)
        if state:
            state.save(self.resume_file)

    def finish(self, out_dir: Path) -> None:
        """The best weights to out_dir, the summary to dvclive; a finished run leaves nothing to resume."""
        if self.procs.main:
            self.best.write(self.model, out_dir)
            self.live.summary["best"] = dict(self.best.metrics)
            self.live.summary["precision"] = self.precision  # what the metrics were computed in
            self.live.end()
            shutil.rmtree(self.resume_file.parent, ignore_errors=True)
        del self.forward  # a DDP wrapper holds the process group, which close() frees
        self.procs.close()


def resume_file(resume_dir: Path, identity: dict[str, str]) -> Path:
    """Where a run keeps its resumable state: `resume_dir/state.pt`. A queued DVC experiment runs in a temporary copy
    of the repository, which DVC deletes when the run is killed; its state goes to the repository's own `resume_dir`
    (DVC_ROOT, which DVC sets to it), one folder per run identity, where the experiment queued again finds it and
    experiments running side by side keep theirs apart."""
    root = os.environ.get("DVC_ROOT")
    if resume_dir.is_absolute() or not root or Path(root).resolve() == Path.cwd().resolve():
        return resume_dir / "state.pt"
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return Path(root) / resume_dir / key / "state.pt"


def start_run(model: nn.Module, params: LoopParams, total_steps: int, epoch_steps: int, identity: dict[str, str],
              precision: str, resume_dir: Path, metrics_dir: Path, procs: Processes) -> Run:
    """The optimizer and its warmup-then-decay schedule over `total_steps`; the model wrapped for DDP on several
    processes; the steps computed in `precision` (resolved)."""
    optimizer = make_optimizer(model, params.lr, params.weight_decay, params.adam_eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_then_linear_decay(total_steps, math.ceil(params.warmup_ratio * total_steps)))
    # The global q/k/v projections go unused (local-only attention; the classifier's last layer): DDP must know.
    forward = DistributedDataParallel(model, find_unused_parameters=True) if procs.world > 1 else model
    return Run(model, forward, optimizer, scheduler, total_steps, epoch_steps, procs, identity, precision,
               resume_file(resume_dir, identity), metrics_dir)


def train_to_end(run: Run, objective: Objective, params: LoopParams, out_dir: Path) -> None:
    """Optimizer steps from the run's position to its last, epoch by epoch."""
    run.model.train()
    while run.position.step < run.total_steps:
        train_epoch(run, objective, params, out_dir)


def train_epoch(run: Run, objective: Objective, params: LoopParams, out_dir: Path) -> None:
    """The rest of the current epoch, from the run's position: optimizer steps, validations, resumable states. A
    run's last epoch ends at its last step."""
    position = run.position
    groups = step_groups(objective.batches(position.epoch), params.grad_accum, run.procs)
    groups = groups[:position.group + run.total_steps - position.step]
    epochs = math.ceil(run.total_steps / run.steps_per_epoch)
    progress = tqdm(total=len(groups), initial=position.group, desc=f"epoch {position.epoch + 1}/{epochs}",
                    unit="step", disable=None if run.procs.main else True)
    for group in groups[position.group:]:
        loss = take_step(run, objective, [objective.collate(batch, position.epoch) for batch in group], out_dir,
                         params.max_grad_norm)
        run.log({"train/loss": loss, "train/lr": run.scheduler.get_last_lr()[0]})
        progress.update()
        best = run.best.metrics.get(f"val_{objective.metric}")
        progress.set_postfix(loss=f"{loss:.4f}", **{} if best is None else {f"best_{objective.metric}": f"{best:.4f}"})
        epoch_end = position.group == len(groups)
        if epoch_end or (params.eval_every and position.step % params.eval_every == 0):
            validate(run, objective)
        if run.live:
            run.live.next_step()  # writes this step's metrics and plots
        if epoch_end:
            position.epoch, position.group = position.epoch + 1, 0
        if epoch_end or position.step % params.resume_every == 0:
            run.save_state()
    progress.close()


def take_step(run: Run, objective: Objective, batches: list[dict[str, Tensor]], out_dir: Path,
              max_grad_norm: float) -> float:
    """One optimizer step over this process's batches; the loss averaged over the processes. A non-finite loss
    stops the run with the best weights so far in out_dir."""
    try:
        loss = step_on(run.procs.device, run.precision, run.forward, batches, run.optimizer, run.scheduler,
                       objective.loss, max_grad_norm)
    except NonFiniteLossError as error:
        if run.procs.main:
            run.best.write(run.model, out_dir)
        kept = (f"the weights of the best validation so far (step {run.best.metrics['step']}) are in {out_dir}"
                if run.best.weights is not None else f"no weights were written to {out_dir} (no validation had run)")
        raise TrainingError(
            f"{error} at optimizer step {run.position.step + 1} (epoch {run.position.epoch + 1}); training stopped: "
            f"{kept}, the last good resumable state in {run.resume_file}. Try a lower lr or max_grad_norm.") from None
    run.position.step += 1
    run.position.group += 1
    return run.procs.mean(loss)


def step_on(device: torch.device, precision: str, model: nn.Module, batches: list[dict[str, Tensor]],
            optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler | None,
            loss_of: LossFunction, max_grad_norm: float) -> float:
    """`optimizer_step` with the batches moved to `device` and the forward computed in `precision` (resolved)."""
    batches = [{k: v.to(device) for k, v in batch.items()} for batch in batches]
    return optimizer_step(model, batches, optimizer, scheduler, loss_of, max_grad_norm,
                          autocast=lambda: autocast(device, precision))


def validate(run: Run, objective: Objective) -> None:
    """The objective's validation, logged; the best weights kept."""
    metrics = objective.validate(run.model, run.procs, run.precision)
    run.log(flat_metrics(metrics, "val/"))
    run.best.update(run.model, metrics, run.position, objective)


def flat_metrics(metrics: dict, prefix: str = "") -> dict[str, float]:
    """{"loss": 1.0, "by_position": {"0-511": 2.0}} -> {"loss": 1.0, "by_position/0-511": 2.0}."""
    flat = {}
    for name, value in metrics.items():
        flat |= flat_metrics(value, f"{prefix}{name}/") if isinstance(value, dict) else {f"{prefix}{name}": value}
    return flat
