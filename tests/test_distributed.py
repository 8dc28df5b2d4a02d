"""torchrun with 2 gloo processes on the CPU gives what one process gives with the same global batch, and
exits cleanly."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.helpers import finish, prepare_inputs, start_stage

pytestmark = pytest.mark.slow  # stages as subprocesses, trainings

# 16 training reviews, batches of 4: one optimizer step of all 4 batches, whether one process accumulates
# 4 batches or each of 2 processes accumulates 2. Dropout 0, so that the processes' RNGs do not matter.
# Adam's first step is about lr * sign(gradient), which turns rounding noise in near-zero gradients into
# +-lr; with eps = 1 and lr = 1 the step is about the gradient itself, so equal weights mean equal gradients.
HEAD = {"dim": 32, "dropout": 0.0}
ONE_PROCESS = {"epochs": 1, "batch_size": 4, "grad_accum": 4, "nproc": 1, "warmup_ratio": 0.0, "lr": 1.0,
               "adam_eps": 1.0, "weight_decay": 0.0, "max_grad_norm": 1.0e9}
TWO_PROCESSES = ONE_PROCESS | {"grad_accum": 2, "nproc": 2}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    inputs = prepare_inputs(tmp_path_factory.mktemp("inputs"), limit=20, val_size=0.2, dropout=0.0)
    out = {}
    for name, train in (("one", ONE_PROCESS), ("two", TWO_PROCESSES)):
        workdir = tmp_path_factory.mktemp(name)
        for stage in ("stages.train", "stages.evaluate"):
            finish(start_stage(stage, workdir, inputs, {"head": HEAD, "train": train}))
        out[name] = workdir
    return out


def test_one_step_gives_the_same_weights(runs):
    one, two = (load_file(runs[k] / "data/train/model.safetensors") for k in ("one", "two"))
    assert json.loads((runs["two"] / "metrics/train/metrics.json").read_text())["step"] == 1  # one optimizer step
    initial = load_file(runs["one"] / "data/model/model.safetensors")
    moved = (one["encoder.layers.0.ffn_in.weight"] - initial["layers.0.ffn_in.weight"]).abs().max()
    assert moved > 1e-4  # the step changed the weights well beyond the tolerance
    for name in one:
        assert (one[name] - two[name]).abs().max() <= 1e-6, name


def test_metrics_are_the_same(runs):
    for path in ("metrics/train/metrics.json", "metrics/test.json"):
        one, two = (json.loads((runs[k] / path).read_text()) for k in ("one", "two"))
        flat_one, flat_two = (json.dumps(m, sort_keys=True) for m in (one, two))
        assert one.keys() == two.keys(), path
        for key in one:
            if isinstance(one[key], dict):
                for sub in one[key]:
                    assert one[key][sub] == pytest.approx(two[key][sub], abs=1e-6), (path, key, sub, flat_one, flat_two)
            else:
                assert one[key] == pytest.approx(two[key], abs=1e-6), (path, key)
    predictions = [(runs[k] / "metrics/predictions.csv").read_text() for k in ("one", "two")]
    assert predictions[0] == predictions[1] and len(predictions[0].splitlines()) == 21  # header + 20, no duplicates


CLOSE_A_TRAINING_GROUP = """
import os
import torch
from torch.nn.parallel import DistributedDataParallel
from longformer.pipeline.distributed import Processes

procs = Processes.from_env()
ddp = DistributedDataParallel(torch.nn.Linear(4, 4))
ddp(torch.randn(2, 4)).sum().backward()
procs.mean(1.0)
del ddp
procs.close()
threads = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
# one file per process: two processes' prints into one pipe can interleave
with open(os.path.join(os.path.dirname(__file__), f"rank{procs.rank}.txt"), "w") as out:
    out.write(repr([t for t in threads if "gloo" in t]))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads the threads from Linux's /proc")
def test_close_joins_gloos_threads(tmp_path):
    """A gloo worker thread still alive when Python shuts down can abort the process as it releases a finished
    collective's tensors (it did, now and then, at the end of a two-process training run): close() must free the
    process group, and with it those threads, even after DistributedDataParallel has used it."""
    script = tmp_path / "close.py"
    script.write_text(CLOSE_A_TRAINING_GROUP)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                             str(script)], capture_output=True, text=True, timeout=300,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stdout + result.stderr
    for rank in (0, 1):
        assert (tmp_path / f"rank{rank}.txt").read_text() == "[]", rank  # the gloo threads left
