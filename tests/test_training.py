"""Training that survives: a SIGKILLed run resumes to the same result; determinism; a NaN loss stops cleanly."""

import json
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from longformer.config import HeadConfig
from longformer.errors import TrainingError
from longformer.pipeline.params import TrainParams
from longformer.pipeline.train import train
from tests.helpers import finish, kill_at_step, prepare_inputs, start_stage

pytestmark = pytest.mark.slow  # stages as subprocesses, trainings

TRAIN = dict(epochs=2, batch_size=4, grad_accum=2, eval_every=10, resume_every=5, lr=5e-4)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    return prepare_inputs(tmp_path_factory.mktemp("inputs"), limit=160)


def train_stage(workdir: Path, inputs: Path, train_params: dict):
    return start_stage("stages.train", workdir, inputs, {"head": {"dim": 32}, "train": train_params})


def results(workdir: Path) -> tuple[dict, dict]:
    weights = load_file(workdir / "data/train/model.safetensors")
    metrics = json.loads((workdir / "metrics/train/metrics.json").read_text())
    return weights, metrics


def test_killed_run_resumes_to_the_same_result(inputs, tmp_path):
    finish(train_stage(tmp_path / "straight", inputs, TRAIN))
    expected_weights, expected_metrics = results(tmp_path / "straight")
    assert not (tmp_path / "straight/.resume/train").exists()  # a finished run leaves nothing to resume

    killed = tmp_path / "killed"
    process = train_stage(killed, inputs, TRAIN)
    steps_done = kill_at_step(process, killed / ".resume/train/state.pt", 10)  # mid-epoch, a few checkpoints in
    assert 10 <= steps_done and not (killed / "data/train/model.safetensors").exists()

    output = finish(train_stage(killed, inputs, TRAIN))
    assert "resuming an interrupted run" in output and f"optimizer step {steps_done}" in output
    weights, metrics = results(killed)
    assert metrics == expected_metrics
    for name, tensor in expected_weights.items():
        assert torch.equal(weights[name], tensor), name
    for curve in ("train/loss", "val/accuracy"):
        assert ((killed / f"metrics/train/plots/metrics/{curve}.tsv").read_text()
                == (tmp_path / f"straight/metrics/train/plots/metrics/{curve}.tsv").read_text())
    assert not (killed / ".resume/train").exists()


def test_state_of_other_params_is_discarded(inputs, tmp_path):
    interrupted_run(tmp_path, inputs)
    output = finish(train_stage(tmp_path, inputs, TRAIN | {"lr": 1e-4}))
    assert "(the head.* or train.* params changed since)" in output and "resuming" not in output


def test_same_seed_same_metrics(inputs, tmp_path):
    runs = []
    for name in ("a", "b"):
        best = train(inputs / "data/model", inputs / "data/tokenized", tmp_path / name, tmp_path / f"{name}_live",
                     HeadConfig(dim=32), TrainParams(**TRAIN | {"epochs": 1}), resume_dir=tmp_path / f"{name}_resume")
        runs.append((best, (tmp_path / f"{name}_live/metrics.json").read_text()))
    assert runs[0] == runs[1]


@pytest.mark.parametrize("eval_every, said", [
    (1, r"the weights of the best validation so far \(step 1\) are in .*out, "),
    (0, r"no weights were written to .*out \(no validation had run\), "),
])
def test_nan_loss_stops_with_the_step_and_says_what_it_kept(inputs, tmp_path, eval_every, said):
    params = TrainParams(**TRAIN | {"lr": 1e30, "max_grad_norm": 1e30, "eval_every": eval_every})
    with pytest.raises(TrainingError, match=r"the loss is (nan|inf|-inf) at optimizer step \d+ .*training stopped: "
                                            + said):
        train(inputs / "data/model", inputs / "data/tokenized", tmp_path / "out", tmp_path / "live",
              HeadConfig(dim=32), params, resume_dir=tmp_path / "resume")
    assert (tmp_path / "out/model.safetensors").is_file() == bool(eval_every)


def test_a_killed_worker_stops_the_run_which_then_resumes(inputs, tmp_path):
    """train.nproc=2 on the CPU (gloo): SIGKILL one process mid-epoch; the stage exits with one error line within a
    minute, and re-running resumes and ends with the metrics and weights of an uninterrupted 2-process run."""
    import psutil

    two = TRAIN | {"nproc": 2, "grad_accum": 1, "epochs": 1}  # 18 steps: resumable states at 5, 10 and 15
    finish(train_stage(tmp_path / "straight", inputs, two))
    expected_weights, expected_metrics = results(tmp_path / "straight")

    killed = tmp_path / "killed"
    process = train_stage(killed, inputs, two)
    state = killed / ".resume/train/state.pt"
    while process.poll() is None and not (state.is_file() and torch.load(state)["position"]["step"] >= 5):
        time.sleep(0.05)
    workers = [p for p in psutil.Process(process.pid).children(recursive=True) if "stages.train" in p.cmdline()]
    victim = next(p for p in workers if p.environ().get("RANK") == "1")
    victim.send_signal(signal.SIGKILL)
    killed_at = time.time()
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 1 and time.time() - killed_at < 60, output
    assert "Traceback" not in output and output.count("error: ") == 1, output
    assert "error: process 1 of 2 died (SIGKILL)" in output
    steps_done = torch.load(state)["position"]["step"]

    output = finish(train_stage(killed, inputs, two))
    assert f"resuming an interrupted run from .resume/train/state.pt: optimizer step {steps_done}" in output
    weights, metrics = results(killed)
    assert metrics == expected_metrics
    for name, tensor in expected_weights.items():
        assert torch.equal(weights[name], tensor), name


def interrupted_run(workdir: Path, inputs: Path) -> Path:
    """A training run SIGKILLed once it has written its first resumable state; returns that state's path."""
    process = train_stage(workdir, inputs, TRAIN)
    state = workdir / ".resume/train/state.pt"
    while process.poll() is None and not state.is_file():
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return state


def test_state_of_other_weights_of_the_same_shape_is_discarded(inputs, tmp_path):
    """The resume state is tied to the content of the inputs, not their size: a model re-converted with other
    values (same shapes, same file size) starts afresh, and the stage says what changed."""
    (tmp_path / "data").mkdir()
    shutil.copytree(inputs / "data/model", tmp_path / "data/pretrained")
    (tmp_path / "data/tokenized").symlink_to(inputs / "data/tokenized")
    interrupted_run(tmp_path, inputs)
    weights = tmp_path / "data/pretrained/model.safetensors"
    size = weights.stat().st_size
    save_file({name: tensor * 1.01 for name, tensor in load_file(weights).items()}, weights)
    assert weights.stat().st_size == size
    output = finish(train_stage(tmp_path, inputs, TRAIN))
    assert "discarding .resume/train/state.pt: it belongs to another run (the model in data/pretrained changed" in output
    assert "resuming" not in output


def test_unreadable_state_is_discarded_with_a_warning(inputs, tmp_path):
    state = interrupted_run(tmp_path, inputs)
    with open(state, "r+b") as f:
        f.truncate(1000)
    output = finish(train_stage(tmp_path, inputs, TRAIN))
    assert "warning: discarding .resume/train/state.pt, which cannot be read" in output
    assert "training starts afresh" in output and "resuming" not in output
    assert (tmp_path / "data/train/model.safetensors").is_file()
