"""Queued experiments (`dvc exp run --queue`) after a stop, and a set of experiments compared.

* `resume_queue`: the experiments a stop killed run again, each from its last resumable state (`loop.resume_file`
  keeps a queued run's state outside the temporary copy DVC runs it in);
* `compare`: each experiment's changed params, validation and test accuracy, and its difference from a reference
  experiment with the paired standard error (the same reviews under both), as a markdown table; `plot_curves`: their
  validation curves in one PNG.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from longformer.errors import DataError
from longformer.pipeline.metrics import PairedDifference, read_predictions

VALIDATION_PREDICTIONS = "metrics/validation-predictions.csv"
TEST_PREDICTIONS = "metrics/predictions.csv"
VALIDATION_CURVES = {"accuracy": "metrics/train/plots/metrics/val/accuracy.tsv",
                     "loss": "metrics/train/plots/metrics/val/loss.tsv"}


def dvc(*args: str, root: Path) -> str:
    """A dvc command in `root`; its output, or a DataError with dvc's own message."""
    result = subprocess.run(["dvc", *args], cwd=root, capture_output=True, text=True)
    if result.returncode:
        raise DataError(f"dvc {' '.join(args)} failed: {(result.stderr or result.stdout).strip()[-2000:]}")
    return result.stdout


def git_blob(root: Path, rev: str, path: str) -> bytes | None:
    """A file's bytes as commit `rev` holds it; None where it holds none."""
    result = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=root, capture_output=True)
    return result.stdout if result.returncode == 0 else None


def git_show(root: Path, rev: str, path: str) -> str | None:
    """A text file as commit `rev` holds it; None where it holds none."""
    blob = git_blob(root, rev, path)
    return None if blob is None else blob.decode()


def flat(tree: dict, prefix: str = "") -> dict[str, object]:
    """{"head": {"dim": 0}} -> {"head.dim": 0}."""
    out = {}
    for key, value in tree.items():
        out |= flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
    return out


def override(key: str, value: object) -> str:
    """`key=value` as `dvc exp run -S` reads it (YAML flow style: numbers, strings, lists)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return f"{key}={text.removesuffix('...').strip()}"


# ---------------------------------------------------------------------------------------------------------------
# Resuming a queue after a stop

@dataclass
class Requeued:
    name: str
    overrides: list[str]
    targets: list[str]  # `dvc exp run` flags and stages, as it was queued with


# `dvc exp run` options that DVC keeps with a queued experiment (in its commit's .dvc/tmp/repro.dat), by flag
_REPRO_FLAGS = {"single_item": "--single-item", "force": "--force", "pipeline": "--pipeline",
                "all_pipelines": "--all-pipelines", "downstream": "--downstream", "recursive": "--recursive",
                "force_downstream": "--force-downstream", "pull": "--pull", "allow_missing": "--allow-missing"}


def queued_targets(root: Path, stash_rev: str) -> list[str]:
    """The flags and stages an experiment was queued with (`dvc exp run --queue train` -> ["train"]), from the
    arguments DVC stored in its queued commit."""
    import pickle

    packed = git_blob(root, stash_rev, ".dvc/tmp/repro.dat")
    if packed is None:
        raise DataError(f"queued experiment {stash_rev[:7]} holds no .dvc/tmp/repro.dat: queue it again yourself")
    options = pickle.loads(packed)["kwargs"]  # written by DVC in this repository
    flags = [flag for key, flag in _REPRO_FLAGS.items() if options.get(key)]
    return flags + list(options.get("targets") or [])


def resume_queue(root: Path, jobs: int = 1, start: bool = True) -> list[Requeued]:
    """Run again every queued experiment that a stop killed, from its last resumable state.

    A killed worker leaves its experiment "Failed" (`dvc queue status`); a stopped machine leaves it "Running" with no
    worker alive, which `dvc queue kill` turns into "Failed". Each failed experiment is then queued again under its
    own name with the params it was queued with (`-S`, against the workspace's params.yaml) and its targets and
    flags (`dvc exp run --queue train` stays up to `train`), its failed entry removed, and (if `start`)
    `dvc queue start --jobs jobs` runs the queue. Experiments that finished keep their results; those still queued
    stay queued.
    """
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        queue = repo.experiments.celery_queue
        if not queue.worker_status():  # no worker alive: whatever shows as running was stopped
            orphans = [entry.name or entry.stash_rev for entry in queue.iter_active()]
            if orphans:
                queue.kill(orphans, force=True)
            for workspace in (root / ".dvc/tmp/exps").glob("tmp*"):  # the stopped runs' copies of the repository
                shutil.rmtree(workspace, ignore_errors=True)
        failed = [(entry.name or entry.stash_rev, entry.stash_rev) for entry, _ in queue.iter_failed()]
    current = flat(yaml.safe_load((root / "params.yaml").read_text()))
    requeued = []
    for name, stash_rev in failed:
        queued_params = flat(yaml.safe_load(git_show(root, stash_rev, "params.yaml") or "{}"))
        overrides = [override(key, value) for key, value in queued_params.items() if current.get(key) != value]
        targets = queued_targets(root, stash_rev)
        dvc("queue", "remove", name, root=root)
        dvc("exp", "run", "--queue", "--name", name, *[arg for o in overrides for arg in ("-S", o)], *targets,
            root=root)
        requeued.append(Requeued(name, overrides, targets))
    if start:  # its workers go on in the background and would hold any pipe they were given
        started = subprocess.run(["dvc", "queue", "start", "--jobs", str(jobs)], cwd=root, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        if started.returncode:
            raise DataError(f"dvc queue start --jobs {jobs} failed (exit code {started.returncode}): run it yourself")
    return requeued


# ---------------------------------------------------------------------------------------------------------------
# Comparing experiments

@dataclass
class Experiment:
    """A finished experiment: its commit, params and metrics."""

    name: str
    rev: str
    params: dict[str, object]  # params.yaml, flat
    metrics: dict  # metrics/train/metrics.json's "best"; "test": metrics/test.json where this experiment was tested

    def predictions(self, root: Path, path: str) -> np.ndarray | None:
        text = git_show(root, self.rev, path)
        return None if text is None else read_predictions(io.StringIO(text))

    def curve(self, root: Path, metric: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(steps, values) of a validation curve."""
        text = git_show(root, self.rev, VALIDATION_CURVES[metric])
        if not text:
            return None
        rows = np.loadtxt(io.StringIO(text), delimiter="\t", skiprows=1, ndmin=2)
        return rows[:, 0], rows[:, 1]


def tested(root: Path, rev: str) -> bool:
    """Whether commit `rev`'s test metrics are of its own trained weights: its dvc.lock's evaluate stage took the
    data/train its train stage made (an experiment run up to `train` only carries its baseline's test.json)."""
    lock = yaml.safe_load(git_show(root, rev, "dvc.lock") or "{}").get("stages", {})
    trained = [o.get("md5") for o in lock.get("train", {}).get("outs", []) if o["path"] == "data/train"]
    evaluated = [d.get("md5") for d in lock.get("evaluate", {}).get("deps", []) if d["path"] == "data/train"]
    return bool(trained) and trained == evaluated


def finished_experiments(root: Path) -> list[Experiment]:
    """Every finished experiment (`dvc exp list --all-commits`: those with a commit of their own), with its params,
    best validation and, where it was tested, test metrics, as its commit holds them."""
    found = []
    for line in dvc("exp", "list", "--all-commits", root=root).splitlines():
        if not line.startswith("\t"):
            continue  # a baseline commit's line
        rev, _, name = line.strip().partition(" ")
        rev = subprocess.run(["git", "rev-parse", rev], cwd=root, capture_output=True, text=True).stdout.strip()
        params = yaml.safe_load(git_show(root, rev, "params.yaml") or "{}")
        trained = json.loads(git_show(root, rev, "metrics/train/metrics.json") or "{}")
        if "best" not in trained:
            continue  # not a fine-tuning experiment (e.g. `dvc exp run pretrain`)
        metrics = dict(trained["best"])
        if tested(root, rev):
            metrics["test"] = json.loads(git_show(root, rev, "metrics/test.json"))
        found.append(Experiment(name.strip("[]") or rev[:7], rev, flat(params), metrics))
    return found


@dataclass
class Row:
    experiment: Experiment
    changed: dict[str, object]
    validation: PairedDifference | None  # against the reference; None for the reference itself
    test: PairedDifference | None


def compare(root: Path, names: list[str], reference: str) -> list[Row]:
    """The named experiments (all finished ones if none are named), each against `reference` on the same reviews."""
    experiments = {e.name: e for e in finished_experiments(root)}
    missing = [n for n in [reference, *names] if n not in experiments]
    if missing:
        raise DataError(f"no finished experiment named {', '.join(missing)}; finished: {', '.join(experiments)}")
    chosen = [experiments[n] for n in names] if names else list(experiments.values())
    chosen = [experiments[reference]] + [e for e in chosen if e.name != reference]
    keys = [k for k in chosen[0].params if len({json.dumps(e.params.get(k)) for e in chosen}) > 1]
    ref = chosen[0]
    rows = []
    for exp in chosen:
        changed = {k: exp.params.get(k) for k in keys}
        paired = [None, None]
        if exp is not ref:
            for i, path in enumerate((VALIDATION_PREDICTIONS, TEST_PREDICTIONS)):
                if path == TEST_PREDICTIONS and not ("test" in exp.metrics and "test" in ref.metrics):
                    continue
                a, b = exp.predictions(root, path), ref.predictions(root, path)
                if a is None or b is None:
                    continue
                if a.shape != b.shape or not (a[:, 0] == b[:, 0]).all():
                    raise DataError(f"{exp.name} and {reference} were not scored on the same reviews ({path}): "
                                    "compare experiments with the same data.* params")
                paired[i] = PairedDifference.of(a[:, 0] == a[:, 1], b[:, 0] == b[:, 1])
        rows.append(Row(exp, changed, *paired))
    return rows


def _points(d: PairedDifference | None) -> str:
    if d is None:
        return ""
    mark = " **" if abs(d.z) >= 2 else ""
    return f"{100 * d.difference:+.2f} ± {100 * d.standard_error:.2f}{mark}"


def markdown_table(rows: list[Row]) -> str:
    """The comparison as a markdown table: differences in accuracy points ± paired standard error, ** where they
    exceed two standard errors."""
    keys = list(rows[0].changed)
    head = ["experiment", *keys, "val accuracy", "val loss", "Δ val (points)", "test accuracy", "Δ test (points)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i <= len(keys) else "---:"
                                                           for i in range(len(head))) + "|"]
    for row in rows:
        m = row.experiment.metrics
        test = m.get("test", {}).get("accuracy")
        cells = [row.experiment.name, *(json.dumps(v) if not isinstance(v, str) else v for v in row.changed.values()),
                 f"{m['val_accuracy']:.4f}", f"{m['val_loss']:.4f}", _points(row.validation) or "reference",
                 "" if test is None else f"{test:.4f}", _points(row.test) if row.validation else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(root: Path, rows: list[Row], out: Path) -> None:
    """The experiments' validation accuracy and loss by optimizer step, overlaid, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for axis, metric in zip(axes, VALIDATION_CURVES):
        for row in rows:
            curve = row.experiment.curve(root, metric)
            if curve is not None:
                axis.plot(*curve, marker="o", markersize=3, label=row.experiment.name)
        axis.set_xlabel("optimizer step")
        axis.set_ylabel(f"validation {metric}")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
