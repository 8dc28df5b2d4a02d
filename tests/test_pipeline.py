"""The DVC pipeline end to end on the offline default, and the stages on real IMDb reviews."""

import dataclasses
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from longformer import weights
from longformer.config import HeadConfig
from longformer.hf import convert_hf_checkpoint
from longformer.pipeline.data import load_raw, save_tokenized, tokenize
from longformer.pipeline.sample import sample_corpus, sample_review
from longformer.pipeline.download import download_checkpoint
from longformer.pipeline.evaluate import evaluate
from longformer.pipeline.params import DataParams, TrainParams, load_params
from longformer.pipeline.precision import resolve_precision
from longformer.pipeline.train import train
from tests.helpers import ROOT, SHARED_IMDB

pytestmark = pytest.mark.slow  # stages as subprocesses, trainings

ENV = os.environ | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
                    "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                    "GIT_COMMITTER_EMAIL": "t@t"}


def run(cmd: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, shell=True, cwd=cwd, env=ENV, capture_output=True, text=True)
    assert result.returncode == 0 or not check, f"{cmd} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def sh(cmd: str, cwd: Path) -> str:
    result = run(cmd, cwd)
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A fresh git repo holding the project's tracked sources (no data, metrics or lock file)."""
    dest = tmp_path_factory.mktemp("project")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for name in files:
        if name.startswith("metrics/") or name == "dvc.lock" or not (ROOT / name).is_file():
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, dest / name)
    sh("git init -q && git add -A && git commit -qm init", dest)
    return dest


# An experiment one epoch keeps short: the end-to-end test runs it whole, the kill-and-resume test kills it mid-epoch
KILLED_PARAMS = "-S head.dropout=0.2 -S train.epochs=1"


def stages_run(log: str) -> set[str]:
    return {s for s in ("download", "convert", "tokenize", "baseline", "pretrain", "train", "evaluate", "export")
            if f"Running stage '{s}'" in log}


def test_dvc_repro_then_experiment(project):
    log = sh("dvc repro", project)
    assert stages_run(log) == {"download", "convert", "tokenize", "baseline", "pretrain", "train", "evaluate", "export"}
    assert "WARNING" not in log, log
    test = json.loads((project / "metrics/test.json").read_text())
    assert test["accuracy"] >= 0.9 and 0 < test["loss"] < math.log(2) and test["f1"] >= 0.9
    assert test["reviews"] == 1000
    precision = resolve_precision("auto", torch.device("cpu"))  # what this CPU computes in: said by every stage
    assert test["precision"] == precision
    baseline = json.loads((project / "metrics/baseline.json").read_text())
    assert baseline["reviews"] == 1000 and baseline["accuracy"] >= 0.9 and baseline["train_reviews"] == 2700
    trained = json.loads((project / "metrics/train/metrics.json").read_text())
    assert trained["best"]["val_accuracy"] >= 0.9 and trained["step"] > 0 and trained["precision"] == precision
    assert (project / "metrics/train/plots/metrics/train/loss.tsv").is_file()
    assert len((project / "metrics/predictions.csv").read_text().splitlines()) == 1001
    assert sorted(p.name for p in (project / "data/model").iterdir()) == ["config.json", "lm_head.safetensors",
                                                                          "model.safetensors"]
    pretrained = json.loads((project / "metrics/pretrain.json").read_text())
    for when in ("before", "after"):
        assert list(pretrained[when]["by_position"]) == ["0-511", "512-1023"]  # the tiny model's 1024 positions
    assert pretrained["after"]["loss"] < pretrained["before"]["loss"] and pretrained["steps"] == 20
    assert pretrained["precision"] == precision
    assert (project / "metrics/pretrain/plots/metrics/train/loss.tsv").is_file()

    predict_trained_model(project)
    exported_model_predicts_as_ours(project)
    edits_make_only_the_stages_that_run_them_stale(project)

    sh("git add -A && git commit -qm baseline", project)
    log = sh(f"dvc exp run -n whole {KILLED_PARAMS}", project)  # the kill-and-resume test's experiment run whole
    assert stages_run(log) == {"train", "evaluate", "export"}
    experiments = json.loads(run("dvc exp show --json", project).stdout)
    dropouts = []
    for commit in experiments:
        for exp in [commit] + [e for group in commit.get("experiments") or [] for e in group["revs"]]:
            params = (exp.get("data") or {}).get("params", {}).get("params.yaml", {}).get("data", {})
            if params:
                dropouts.append(params["head"]["dropout"])
    assert 0.1 in dropouts and 0.2 in dropouts
    diff = sh("dvc metrics diff", project)  # the workspace holds the experiment's results
    assert "metrics/test.json" in diff
    sh("dvc plots diff HEAD -o plots_html", project)
    assert (project / "plots_html/index.html").is_file()
    assert "WARNING" not in log, log
    log = sh("dvc exp run pretrain -S pretrain.steps=0", project)  # the documented recipes skip pretraining
    assert stages_run(log) == {"pretrain"} and "WARNING" not in log, log


def edits_make_only_the_stages_that_run_them_stale(project: Path) -> None:
    """`dvc status` after an edit of fine-tuning, of the loop it shares with pretraining, then of the attention
    kernel: exactly the stages that run the file are stale (the later ones follow when an output changes); download,
    convert, tokenize and baseline are not."""
    for edited, runs_it in (("longformer/pipeline/train.py", {"train"}),
                            ("longformer/pipeline/loop.py", {"pretrain", "train"}),
                            ("longformer/kernels/banded.py", {"pretrain", "train", "evaluate", "export"})):
        source = (project / edited).read_text()
        (project / edited).write_text(source + "# an edit\n")
        try:
            stale = set(json.loads(run("dvc status --json", project).stdout))
        finally:
            (project / edited).write_text(source)
        assert stale == runs_it, (edited, stale)
    assert json.loads(run("dvc status --json", project).stdout) == {}


def predict_trained_model(project: Path) -> None:
    """`python -m stages.predict` labels reviews from a text file, a CSV column and standard input, in input order,
    as the trained classifier does on the test set."""
    rng = random.Random(7)
    reviews = [sample_review(rng) for _ in range(6)]
    (project / "one.txt").write_text(reviews[0][0])
    (project / "more.csv").write_text("review,stars\n" + "".join(f'"{text}",5\n' for text, _ in reviews[1:4]))
    stdin = "\n".join(text for text, _ in reviews[4:]) + "\n"
    result = subprocess.run([sys.executable, "-m", "stages.predict", "one.txt", "more.csv", "-", "--column", "review"],
                            cwd=project, env=ENV, input=stdin, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = [line.split("\t") for line in result.stdout.splitlines()]
    assert [source for source, _, _ in lines] == ["one.txt", "more.csv:1", "more.csv:2", "more.csv:3", "stdin:1",
                                                   "stdin:2"]
    assert [int(label) for _, label, _ in lines] == [label for _, label in reviews]  # an easy set: all right
    from longformer.pipeline.predict import classify

    expected = classify(project / "data/train", project / "data/checkpoint", [text for text, _ in reviews], 1024)
    assert [float(probability) for _, _, probability in lines] == [round(float(p.max()), 4) for p in expected]

    # After training, params.yaml no longer describes the model (an edit, another experiment's params): predict reads
    # how training tokenized from what the pipeline wrote, so it prints the same.
    shipped = (project / "params.yaml").read_text()
    params = yaml.safe_load(shipped)
    params["data"]["max_length"] = 16
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    try:
        again = subprocess.run([sys.executable, "-m", "stages.predict", "one.txt", "more.csv", "-", "--column",
                                "review"], cwd=project, env=ENV, input=stdin, capture_output=True, text=True)
    finally:
        (project / "params.yaml").write_text(shipped)
    assert again.returncode == 0 and again.stdout == result.stdout, again.stderr


def exported_model_predicts_as_ours(project: Path) -> None:
    """data/export: transformers' text-classification pipeline on hf/ gives the labels and probabilities of our
    classifier (what `python -m stages.predict` runs), and `python -m stages.predict --onnx` those of
    `python -m stages.predict`."""
    from transformers import pipeline

    from longformer.pipeline.predict import classify

    rng = random.Random(11)
    texts = [sample_review(rng)[0] for _ in range(8)]
    texts.append(" ".join([texts[0]] * 8))  # longer than the model's 1,024 tokens: truncated as training did
    expected = classify(project / "data/train", project / "data/checkpoint", texts, max_length=1024,
                        precision="fp32")  # the fp32 oracle
    outputs = pipeline("text-classification", model=str(project / "data/export/hf"), truncation=True)(texts, top_k=None)
    theirs = np.array([[next(o["score"] for o in out if o["label"] == name) for name in ("negative", "positive")]
                       for out in outputs])
    np.testing.assert_allclose(theirs, expected, rtol=0, atol=1e-5)
    card = (project / "data/export/hf/README.md").read_text()
    assert "pipeline_tag: text-classification" in card and "| accuracy | 1.0000 |" in card
    assert "label_smoothing: 0.1" in card and "dvc.lock sha256" in card
    assert "Then 20 steps of masked-LM pretraining" in " ".join(card.split())

    # the ONNX file with a tokenizer that would not truncate: cut at the model's length, as our path cuts
    unlimited = project / "export-unlimited"
    shutil.copytree(project / "data/export", unlimited)
    tokenizer_config = unlimited / "hf/tokenizer_config.json"
    tokenizer_config.write_text(json.dumps(json.loads(tokenizer_config.read_text()) | {"model_max_length": 10**6}))
    stdin = "\n".join(texts) + "\n"
    printed = [subprocess.run([sys.executable, "-m", "stages.predict", *args], cwd=project, env=ENV, input=stdin,
                              capture_output=True, text=True, check=True).stdout
               for args in (["--precision", "fp32"], ["--onnx"], ["--onnx", "--export", str(unlimited)])]
    ours, onnx, onnx_unlimited = ([line.split("\t") for line in out.splitlines()] for out in printed)
    assert onnx_unlimited == onnx
    assert [label for _, label, _ in onnx] == [label for _, label, _ in ours] == [str(p.argmax()) for p in expected]
    assert all(abs(float(a) - float(b)) <= 2e-4 for (_, _, a), (_, _, b) in zip(ours, onnx))  # printed to 4 digits
    bf16 = classify(project / "data/train", project / "data/checkpoint", texts, max_length=1024, precision="bf16")
    assert (bf16.argmax(1) == expected.argmax(1)).all() and np.abs(bf16 - expected).max() <= 0.01  # bf16's bound


def committed_baseline(project: Path) -> None:
    """The workspace as the baseline commit holds it, a `dvc repro` of the offline default (made if none was)."""
    if run("git cat-file -e HEAD:dvc.lock", project, check=False).returncode:
        sh("dvc repro && git add -A && git commit -qm baseline", project)
    sh("git reset -q --hard && dvc checkout -q", project)


def kill_everything_in(project: Path) -> None:
    """What a stopped machine does to a queue: SIGKILL to its worker, the experiment and every stage process."""
    import psutil

    for process in psutil.process_iter(["cwd"]):
        if process.pid != os.getpid() and str(process.info["cwd"] or "").startswith(str(project)):
            process.kill()


def wait_for(condition, what: str, every: float, timeout: float = 600) -> None:
    """Poll condition every `every` seconds: a dvc command costs a second of CPU, taken from the run waited for."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


def queue_is_done(project: Path) -> bool:
    status = sh("dvc queue status", project)
    return not any(state in status for state in ("Running", "Queued"))


def committed_experiments(project: Path) -> set[str]:
    """The names of the experiments DVC has committed (refs/exps): a git call, where a dvc one costs seconds of CPU."""
    refs = run("git for-each-ref --format='%(refname)' refs/exps", project).stdout.split()
    return {ref.rsplit("/", 1)[1] for ref in refs}


def finished(project: Path) -> dict[str, dict]:
    """Finished experiments by name: their train metrics and the rev that holds their files."""
    shown = json.loads(run("dvc exp show --json", project).stdout)
    return {exp["name"]: {"rev": exp["rev"], "train": exp["data"]["metrics"]["metrics/train/metrics.json"]["data"]}
            for commit in shown for group in commit.get("experiments") or [] for exp in group["revs"]
            if not exp.get("error") and (exp.get("data") or {}).get("metrics")}


def test_a_killed_queued_experiment_resumes_and_ends_as_if_never_stopped(project):
    """A queued experiment killed with its whole machine mid-training, queued again by `stages.sweep resume`, goes
    on from its last state and ends with the metrics and validation predictions of the same experiment run whole;
    the experiment that finished before keeps its results, and one with other params queued meanwhile starts
    afresh. Experiments differing only in train.resume_every compute the same: DVC's run cache cannot stand in."""
    committed_baseline(project)
    if "whole" not in committed_experiments(project):  # the end-to-end test's experiment, where it ran first
        sh(f"dvc exp run --queue train -n whole {KILLED_PARAMS}", project)
    sh(f"dvc exp run --queue train -n killed {KILLED_PARAMS} -S train.resume_every=40", project)
    sh("dvc queue start > /dev/null 2>&1", project)  # its worker would hold a pipe until the queue is done
    states = lambda: list((project / ".resume/train").glob("*/state.pt"))  # noqa: E731
    wait_for(lambda: states() and "whole" in committed_experiments(project), "the killed run's first resumable state",
             every=0.5)
    kill_everything_in(project)
    assert "Running" in sh("dvc queue status", project)  # nothing was left to tell DVC
    killed_state = states()
    assert len(killed_state) == 1 and killed_state[0].stat().st_size > 0

    sh("dvc exp run --queue train -n other -S head.dropout=0.3 -S train.epochs=1", project)
    log = sh("python -m stages.sweep resume", project)
    assert "queued again: killed -S head.dropout=0.2 -S train.epochs=1 -S train.resume_every=40 train" in log, log
    wait_for(lambda: {"killed", "other"} <= committed_experiments(project), "the queue's experiments", every=1,
             timeout=300)  # a failed one never comes
    wait_for(lambda: queue_is_done(project), "the queue", every=1)  # its copies of the repository removed
    assert "Failed" not in sh("dvc queue status", project)
    assert "resuming" not in sh("dvc queue logs other", project)  # its own identity: the killed state is not its
    killed_log = sh("dvc queue logs killed", project)
    assert "resuming an interrupted run" in killed_log
    assert "Running stage 'evaluate'" not in killed_log  # queued up to train, queued again up to train
    assert not states()  # finished runs leave no state behind
    assert not list((project / ".dvc/tmp/exps").glob("tmp*"))  # nor copies of the repository

    experiments = finished(project)
    assert set(experiments) >= {"whole", "killed", "other"}
    assert experiments["killed"]["train"] == experiments["whole"]["train"]  # best, last step's loss and lr
    predictions = [sh(f"git show {experiments[name]['rev']}:metrics/validation-predictions.csv", project)
                   for name in ("whole", "killed")]
    assert predictions[0] == predictions[1] and len(predictions[0].splitlines()) == 301  # 10% of 3,000 reviews
    table = sh("python -m stages.sweep compare whole killed other --reference whole", project)
    assert "| whole | 0.2 | 200 |" in table and "| killed | 0.2 | 40 |" in table and "+0.00 ± 0.00" in table


def test_bad_param_is_a_clear_error_and_touches_nothing(project, tmp_path):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["head"]["dropout"] = 1.5
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(params))
    result = run(f"python -m stages.train --params {bad} --out {tmp_path / 'out'}", project, check=False)
    assert result.returncode == 1
    assert "head.dropout must be in [0, 1), got 1.5" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not SHARED_IMDB.is_dir(), reason="needs ../shared/imdb")
def test_stages_on_real_imdb_subset(tmp_path):
    """Tokenize (local-directory loader), then a short train and evaluate on real IMDb reviews."""
    download_checkpoint("tiny", tmp_path / "checkpoint", sample_corpus())
    config, state, _ = convert_hf_checkpoint(tmp_path / "checkpoint")
    weights.save(tmp_path / "model", config, state)

    from transformers import AutoTokenizer

    params = DataParams(dataset=str(SHARED_IMDB), max_length=256, limit=120, seed=0)
    raw = load_raw(params.dataset)
    assert len(raw["train"]) == len(raw["test"]) == 25_000
    data, summary = tokenize(raw, AutoTokenizer.from_pretrained(tmp_path / "checkpoint"), params, config.max_length)
    assert summary["train"]["reviews"] + summary["validation"]["reviews"] == 120
    assert summary["test"]["reviews"] == 120 and summary["test"]["labels"] == {0: 60, 1: 60}
    assert 0 < summary["test"]["truncated"] < 120  # IMDb reviews are often longer than 256 tokens
    assert max(len(ids) for ids in data["test"]["input_ids"]) == 256
    save_tokenized(data, summary, tmp_path / "tokenized")

    best = train(tmp_path / "model", tmp_path / "tokenized", tmp_path / "train", tmp_path / "live",
                 HeadConfig(dim=32), TrainParams(epochs=1, batch_size=4, grad_accum=2, eval_every=5),
                 predictions_file=tmp_path / "validation.csv")
    validation = np.loadtxt(tmp_path / "validation.csv", delimiter=",", skiprows=1, dtype=int)  # the best's
    assert validation[:, 0].tolist() == data["validation"]["label"]
    assert (validation[:, 0] == validation[:, 1]).mean() == best["val_accuracy"]
    logged = np.loadtxt(tmp_path / "live/plots/metrics/val/accuracy.tsv", skiprows=1, ndmin=2)  # step, accuracy
    assert len(logged) == 3  # 108 reviews / (4 x 2) = 14 steps: validated at steps 5, 10 and the epoch's end 14
    assert best["val_accuracy"] == logged[:, 1].max() and best["step"] == logged[logged[:, 1].argmax(), 0]
    metrics = evaluate(tmp_path / "train", tmp_path / "tokenized", tmp_path / "test.json", tmp_path / "pred.csv")
    assert metrics["reviews"] == 120 and np.isfinite(metrics["loss"])
    pairs = np.loadtxt(tmp_path / "pred.csv", delimiter=",", skiprows=1, dtype=int)  # actual, predicted
    assert sorted(pairs[:, 0].tolist()) == sorted(data["test"]["label"])
    assert metrics["accuracy"] == (pairs[:, 0] == pairs[:, 1]).mean()
    assert json.loads((tmp_path / "test.json").read_text())["accuracy"] == metrics["accuracy"]


def test_shipped_params_set_every_parameter():
    """params.yaml is valid and lists every parameter the stages read (DVC tracks only what it lists), nothing else."""
    params = load_params(ROOT / "params.yaml")
    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())
    for group in dataclasses.fields(params):
        assert set(shipped[group.name]) == {f.name for f in dataclasses.fields(getattr(params, group.name))}, group.name
    assert set(shipped) == {group.name for group in dataclasses.fields(params)}


def test_params_read_floats_as_dvc_writes_them(tmp_path):
    """`dvc exp run -S train.lr=5.0e-05` leaves `lr: 5e-05` in params.yaml: a number in YAML 1.2 (DVC's reading)."""
    (tmp_path / "params.yaml").write_text("train:\n  lr: 5e-05\n  adam_eps: 1e-8\n")
    params = load_params(tmp_path / "params.yaml")
    assert params.train.lr == 5e-05 and params.train.adam_eps == 1e-08
