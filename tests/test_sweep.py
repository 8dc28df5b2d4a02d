"""Queued experiments: where a queued run keeps its resumable state, the paired errors, the comparison table. The
kill-and-resume of a real queue is in test_pipeline.py."""

import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from longformer.errors import DataError
from longformer.pipeline.loop import resume_file
from longformer.pipeline.metrics import PairedDifference
from longformer.pipeline.sweep import Experiment, Row, flat, markdown_table, override, queued_targets


def test_a_run_outside_a_queue_keeps_its_state_in_the_workspace(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert resume_file(Path(".resume/train"), {"params": "a"}) == Path(".resume/train/state.pt")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # dvc repro, dvc exp run in the workspace
    assert resume_file(Path(".resume/train"), {"params": "a"}) == Path(".resume/train/state.pt")


def test_a_queued_run_keeps_its_state_in_the_repository_one_folder_per_identity(monkeypatch, tmp_path):
    """DVC runs a queued experiment in .dvc/tmp/exps/tmpXXXX, deleted when it is killed, and sets DVC_ROOT to the
    repository."""
    workspace = tmp_path / ".dvc/tmp/exps/tmp1234"
    workspace.mkdir(parents=True)
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    a = resume_file(Path(".resume/train"), {"params": "a", "data": "d"})
    assert a.parent.parent == tmp_path / ".resume/train" and a.name == "state.pt"
    assert resume_file(Path(".resume/train"), {"data": "d", "params": "a"}) == a  # the same run
    assert resume_file(Path(".resume/train"), {"params": "b", "data": "d"}) != a  # another
    assert resume_file(tmp_path / "elsewhere", {"params": "a"}) == tmp_path / "elsewhere/state.pt"  # as given


def test_paired_difference_counts_the_disagreements():
    a = np.array([True] * 90 + [False] * 10)
    b = np.array([True] * 80 + [False] * 10 + [True] * 5 + [False] * 5)  # A alone right on 10, B alone on 5
    d = PairedDifference.of(a, b)
    assert (d.n, d.only_a, d.only_b) == (100, 10, 5)
    assert d.accuracy_a == 0.9 and d.accuracy_b == 0.85 and d.difference == pytest.approx(0.05)
    # the standard error of the mean of per-example differences (+1 / -1 / 0), with n in the denominator
    per_example = a.astype(int) - b.astype(int)
    assert d.standard_error == pytest.approx(per_example.std() / np.sqrt(100))
    assert d.z == pytest.approx(0.05 / d.standard_error)
    assert PairedDifference.of(a, a).z == 0.0


@pytest.mark.parametrize("value", [0.5, 5.0e-05, 3, "tanh", "../shared/imdb", ["negative", "positive"], True, 0])
def test_overrides_read_back_as_the_queued_value(value):
    """`-S key=value` as dvc reads it (YAML) gives back the value the experiment was queued with."""
    key, text = override("head.x", value).split("=", 1)
    assert key == "head.x" and yaml.safe_load(text) == value


def test_flat_names_params_as_dvc_does():
    assert flat({"head": {"dim": 0, "act": "tanh"}, "export": {"labels": ["a", "b"]}}) == {
        "head.dim": 0, "head.act": "tanh", "export.labels": ["a", "b"]}


def test_the_table_marks_differences_of_two_standard_errors():
    def experiment(name: str, dropout: float, accuracy: float) -> Experiment:
        return Experiment(name, "0" * 40, {"head.dropout": dropout},
                          {"val_accuracy": accuracy, "val_loss": 0.3, "test": {"accuracy": accuracy - 0.01}})

    right = np.ones(1000, dtype=bool)
    worse = right.copy()
    worse[:30] = False
    rows = [Row(experiment("ref", 0.1, 1.0), {"head.dropout": 0.1}, None, None),
            Row(experiment("drop", 0.5, 0.97), {"head.dropout": 0.5}, PairedDifference.of(worse, right), None)]
    table = markdown_table(rows).splitlines()
    assert table[0] == ("| experiment | head.dropout | val accuracy | val loss | Δ val (points) | test accuracy | "
                        "Δ test (points) |")
    assert table[2] == "| ref | 0.1 | 1.0000 | 0.3000 | reference | 0.9900 |  |"
    assert table[3] == "| drop | 0.5 | 0.9700 | 0.3000 | -3.00 ± 0.54 ** | 0.9600 |  |"


def test_a_requeued_experiment_keeps_the_stages_and_flags_it_was_queued_with(tmp_path):
    """`dvc exp run --queue --downstream train` stores its arguments in the queued commit; they come back as flags."""
    git = lambda *args: subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True,  # noqa: E731
                                       text=True).stdout.strip()
    git("init", "-q")
    (tmp_path / "params.yaml").write_text("a: 1\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "without")
    without = git("rev-parse", "HEAD")
    (tmp_path / ".dvc/tmp").mkdir(parents=True)
    kwargs = {"run_env": {}, "targets": ["train"], "single_item": False, "force": False, "downstream": True}
    (tmp_path / ".dvc/tmp/repro.dat").write_bytes(pickle.dumps({"args": (), "kwargs": kwargs}))
    git("add", "-f", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "queued")
    assert queued_targets(tmp_path, git("rev-parse", "HEAD")) == ["--downstream", "train"]
    with pytest.raises(DataError, match="holds no .dvc/tmp/repro.dat"):
        queued_targets(tmp_path, without)
