"""Bad input as a new user would give it: one readable line (no traceback), exit 1, nothing touched."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from longformer.pipeline.data import sample_dataset, tokenize
from longformer.errors import ConfigError
from longformer.pipeline.params import DataParams, parse_params
from tests.helpers import finish, prepare_inputs, run_stage_here, start_stage

pytestmark = pytest.mark.slow  # stages as subprocesses, trainings

GOOD = {"model": {"checkpoint": "tiny"}, "data": {"dataset": "sample", "max_length": 512},
        "head": {"dim": 32}, "train": {"epochs": 1}}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    return prepare_inputs(tmp_path_factory.mktemp("inputs"), limit=40)


def with_value(group: str, key: str, value) -> dict:
    params = json.loads(json.dumps(GOOD))
    params.setdefault(group, {})[key] = value
    return params


# Stages that set process-wide state (glibc's allocator) run as processes; the others' command lines run in this
# process, where a failing stage's time is not mostly Python's startup (test_pipeline runs one through a process).
OWN_PROCESS = ("stages.train", "stages.evaluate")


def fails_cleanly(module: str, workdir: Path, inputs: Path, params: dict, *args: str) -> str:
    """Exit status 1 from the one `error:` line, no traceback."""
    if module in OWN_PROCESS:
        process = start_stage(module, workdir, inputs, params, *args)
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 1, output
    else:
        result = run_stage_here(module, workdir, inputs, params, *args)
        output = result.output
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (output, result.exception)
    assert "Traceback" not in output and output.count("error: ") == 1, output
    return output


@pytest.mark.parametrize("group, key, value, message", [
    ("head", "dropout", 1.5, "head.dropout must be in [0, 1), got 1.5"),
    ("head", "activation", "swish", "head.activation must be one of ['gelu', 'relu', 'tanh'], got 'swish'"),
    ("head", "dim", -1, "head.dim must be a positive integer (or 0: the hidden size), got -1"),
    ("train", "batch_size", 0, "train.batch_size must be a positive integer, got 0"),
    ("head", "dropot", 0.1, "unknown parameter head.dropot in params.yaml; head takes: dim, dropout, activation"),
    ("train", "lr", "fast", "train.lr must be of type float, got 'fast'"),
    ("pretrain", "steps", -1, "pretrain.steps must be an integer >= 0, got -1"),
    ("pretrain", "mask_prob", 1.0, "pretrain.mask_prob must be a fraction in (0, 1), got 1.0"),
    ("pretrain", "mask_prob", 0, "pretrain.mask_prob must be a fraction in (0, 1), got 0"),
])
def test_bad_params_are_named_with_the_fix(group, key, value, message):
    """What a stage prints on a bad param (test_pipeline runs one through a stage: one error line, nothing written)."""
    with pytest.raises(ConfigError) as raised:
        parse_params(with_value(group, key, value))
    assert message in str(raised.value)


@pytest.mark.parametrize("changes, message", [
    ({}, "model.checkpoint=minilm is a pretrained encoder, and train.lr=0.0005, pretrain.lr=0.0005 would undo its "
         "pretraining (rates above 0.0001 are for the offline default's random encoder): set -S train.lr=5e-05 and "
         "-S pretrain.steps=0 (or pretrain.lr at most 1e-4)"),
    ({"train": {"lr": 5e-5}}, "and pretrain.lr=0.0005 would undo its pretraining"),
])
def test_a_pretrained_encoder_at_the_random_encoders_rates_is_stopped(changes, message):
    """The offline default's rates suit its random encoder; switching model.checkpoint alone would quietly damage a
    pretrained one (minilm: 3 points of accuracy): a clear error says what to set."""
    params = {"model": {"checkpoint": "minilm"}} | changes
    with pytest.raises(ConfigError) as raised:
        parse_params(params)
    assert message in str(raised.value)
    parse_params(params | {"train": {"lr": 5e-5}, "pretrain": {"steps": 0}})  # the README's recipes: fine
    parse_params(params | {"train": {"lr": 5e-5}, "pretrain": {"lr": 1e-4}})
    parse_params({"model": {"checkpoint": "tiny"}})  # the random encoder: its own rates


def test_max_length_above_the_checkpoint(inputs, tmp_path):
    stage_inputs(tmp_path, inputs, "stages.tokenize")
    output = fails_cleanly("stages.tokenize", tmp_path, inputs, with_value("data", "max_length", 5000))
    assert "data.max_length=5000 is above what the converted model takes (1024 tokens)" in output
    assert "model.max_length" in output
    assert not (tmp_path / "data/tokenized").exists()


@pytest.mark.parametrize("content, message", [
    ("text,label\n", "train.csv: Instruction \"train\" corresponds to no data!; expected at least one row"),
    ("text\nsome review\n", "lacks the column(s) ['label']"),
    ("text,label\ngreat film,\n", "rows without a valid label"),
])
def test_unusable_dataset_files(inputs, tmp_path, content, message):
    data = tmp_path / "reviews"
    data.mkdir()
    (data / "train.csv").write_text(content)
    (data / "test.csv").write_text("text,label\nfine,1\n")
    stage_inputs(tmp_path, inputs, "stages.tokenize")
    output = fails_cleanly("stages.tokenize", tmp_path, inputs, with_value("data", "dataset", str(data)))
    assert message in output


def test_checkpoint_with_missing_tensor(inputs, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in (inputs / "checkpoint").iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    state = load_file(broken / "model.safetensors")
    del state["longformer.encoder.layer.0.attention.self.query_global.bias"]  # a LongformerForMaskedLM's
    save_file(state, broken / "model.safetensors")
    (tmp_path / "data").mkdir()
    output = fails_cleanly("stages.convert", tmp_path, inputs, GOOD, "--checkpoint", str(broken))
    assert "missing tensors: longformer.encoder.layer.0.attention.self.query_global.bias" in output.replace("\n", "")
    assert not (tmp_path / "data/model/model.safetensors").exists()


def test_hub_id_while_offline(inputs, tmp_path):
    params = with_value("model", "checkpoint", "allenai/longformer-base-4096")
    params |= {"train": {"lr": 3e-5}, "pretrain": {"steps": 0}}  # a pretrained encoder's rates
    output = fails_cleanly("stages.download", tmp_path, inputs, params)
    assert "could not fetch 'allenai/longformer-base-4096'" in output and "local directory" in output


def test_empty_and_too_long_reviews_are_kept_and_counted(inputs):
    from transformers import AutoTokenizer

    raw = sample_dataset(num_train=40, num_test=10)
    raw["test"] = raw["test"].map(lambda row, i: {"text": "" if i == 0 else row["text"]}, with_indices=True)
    data, summary = tokenize(raw, AutoTokenizer.from_pretrained(inputs / "checkpoint"), DataParams(max_length=64),
                             1024)
    tokenizer = AutoTokenizer.from_pretrained(inputs / "checkpoint")
    too_long = sum(len(ids) > 64 for ids in tokenizer(list(raw["test"]["text"]))["input_ids"])
    assert summary["test"]["empty"] == 1 and summary["test"]["reviews"] == 10
    assert summary["test"]["truncated"] == too_long > 0
    assert data["test"][0]["input_ids"] == [0, 2]  # <s></s>
    assert max(len(ids) for ids in data["test"]["input_ids"]) == 64
    assert all(ids[-1] == 2 for ids in data["test"]["input_ids"])  # truncation keeps </s>


@pytest.fixture(scope="module")
def gpt2_checkpoint(tmp_path_factory) -> Path:
    from transformers import GPT2Config, GPT2Model

    directory = tmp_path_factory.mktemp("gpt2")
    GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=32)).save_pretrained(directory)
    return directory


@pytest.mark.parametrize("model_params, message", [
    ({"attention_window": 5}, "model.attention_window must be a positive even number of tokens"),
    ({"attention_window": [64, 0]}, "model.attention_window must be a positive even number of tokens"),
    ({"attention_window": -2}, "got -2"),
    ({"max_length": 256}, "model.max_length=256 is shorter than data.max_length=512"),
    ({"max_length": 2048}, "is a Longformer trained on 1024 positions; it cannot take max_length=2048"),
    ({"attention_window": [64, 64, 64]}, "attention_window has 3 entries but the model has 2 layers"),
])
def test_bad_long_model_params_stop_the_convert_stage(inputs, tmp_path, model_params, message):
    (tmp_path / "data").mkdir()
    params = json.loads(json.dumps(GOOD))
    params["model"].update(model_params)
    output = fails_cleanly("stages.convert", tmp_path, inputs, params, "--checkpoint", str(inputs / "checkpoint"))
    assert message in output.replace("\n", "")
    assert not (tmp_path / "data/model").exists()


def test_a_family_that_cannot_be_converted(inputs, tmp_path, gpt2_checkpoint):
    (tmp_path / "data").mkdir()
    output = fails_cleanly("stages.convert", tmp_path, inputs, GOOD, "--checkpoint", str(gpt2_checkpoint))
    assert "is a 'gpt2' checkpoint, which cannot be turned into a Longformer" in output.replace("\n", "")
    assert "longformer, roberta, xlm-roberta, camembert, bert" in output.replace("\n", "")
    assert not (tmp_path / "data/model").exists()


@pytest.mark.parametrize("case, message", [
    ("empty stdin", "no review to label"),
    ("blank file", "no review to label"),
    ("unreadable file", "cannot read"),
    ("csv without the column", "has no 'text' column"),
    ("no trained model", "data/train/config.json not found: run the train stage (dvc repro train) first"),
    ("onnx without the export", "data/export/model.onnx not found: make it with `dvc repro export`"),
])
def test_predict_bad_input(inputs, tmp_path, case, message):
    (tmp_path / "review.txt").write_text("A fine film.")
    (tmp_path / "blank.txt").write_text("  \n")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00bad")
    (tmp_path / "reviews.csv").write_text("review\nGreat.\n")
    args = {"empty stdin": [], "blank file": ["blank.txt"], "unreadable file": ["binary.txt"],
            "csv without the column": ["reviews.csv"], "no trained model": ["review.txt"],
            "onnx without the export": ["--onnx", "review.txt"]}[case]
    output = fails_cleanly("stages.predict", tmp_path, inputs, GOOD, *args)
    assert message in output.replace("\n", "")


@pytest.mark.parametrize("case, message", [
    ("no trained model", "data/train/config.json not found: run the train stage (dvc repro train) first"),
    ("output is a file", "data/export is a file: the export goes to a directory"),
])
def test_export_bad_input(inputs, tmp_path, case, message):
    (tmp_path / "data").mkdir()
    if case == "output is a file":
        (tmp_path / "data/export").write_text("not a directory")
    output = fails_cleanly("stages.export", tmp_path, inputs, GOOD)
    assert message in output.replace("\n", "")
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == (["export"] if case == "output is a file" else [])
    assert not (tmp_path / "data/export").is_dir()


def test_labels_beyond_the_head_stop_training_before_it_starts(inputs, tmp_path):
    """In a git repository with packed objects, as a project is: dvclive reads it with dulwich, whose objects, if
    still alive at interpreter shutdown, print "Exception ignored" tracebacks after the error."""
    git = "git -c user.name=t -c user.email=t@t"
    subprocess.run(f"git init -q && {git} commit -q --allow-empty -m init && git gc -q", shell=True, cwd=tmp_path,
                   check=True)
    assert list((tmp_path / ".git/objects/pack").glob("*.idx"))
    data = tmp_path / "reviews"
    data.mkdir()
    rows = "".join(f"review number {i} is {'good' if i % 3 else 'bad'},{i % 3}\n" for i in range(30))
    (data / "train.csv").write_text("text,label\n" + rows)
    (data / "test.csv").write_text("text,label\n" + rows)
    stage_inputs(tmp_path, inputs, "stages.tokenize")
    params = with_value("data", "dataset", str(data))
    finish(start_stage("stages.tokenize", tmp_path, inputs, params))
    output = fails_cleanly("stages.train", tmp_path, inputs, params)
    assert "has the labels 0, 1, 2, but head.num_labels=2 takes labels 0 to 1: set head.num_labels=3" in output
    assert not (tmp_path / "data/train").exists() and not (tmp_path / "metrics").exists()


STAGE_FILES = {  # what each stage reads from data/, and what it writes
    "stages.convert": (("checkpoint",), "data/model"),
    "stages.tokenize": (("checkpoint", "model"), "data/tokenized"),
    "stages.train": (("pretrained", "tokenized"), "data/train"),
    "stages.evaluate": (("train", "tokenized"), "metrics/test.json"),
}


def stage_inputs(workdir: Path, inputs: Path, stage: str, damaged: str | None = None) -> None:
    """data/ as the stage finds it after the earlier stages, linked; `damaged` a copy instead (to be damaged)."""
    (workdir / "data").mkdir()
    for name in STAGE_FILES[stage][0]:
        source = {"checkpoint": inputs / "checkpoint", "pretrained": inputs / "data/model"}.get(name,
                                                                                               inputs / "data" / name)
        if name == damaged:
            shutil.copytree(source, workdir / "data" / name)
        else:
            (workdir / "data" / name).symlink_to(source)


def truncate(path: Path, size: int = 100) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


@pytest.mark.parametrize("stage, file, named, rebuild", [
    ("stages.convert", "checkpoint/model.safetensors", "checkpoint", "dvc repro -f download"),
    ("stages.tokenize", "checkpoint/tokenizer.json", "checkpoint", "dvc repro -f download"),
    ("stages.train", "pretrained/model.safetensors", "pretrained/model.safetensors", "dvc repro -f pretrain"),
    ("stages.tokenize", "model/config.json", "model/config.json", "dvc repro -f convert"),
    ("stages.train", "tokenized/train/data-00000-of-00001.arrow", "tokenized/train", "dvc repro -f tokenize"),
    ("stages.evaluate", "train/model.safetensors", "train/model.safetensors", "dvc repro -f train"),
])
def test_unreadable_inputs_are_named_with_the_command_that_rebuilds_them(trained, tmp_path, stage, file, named,
                                                                           rebuild):
    stage_inputs(tmp_path, trained, stage, damaged=file.split("/")[0])
    truncate(tmp_path / "data" / file)
    output = fails_cleanly(stage, tmp_path, trained, GOOD)
    assert f"data/{named} cannot be read" in output and f"rebuild it with `{rebuild}`" in output, output
    assert not (tmp_path / STAGE_FILES[stage][1]).exists()


@pytest.fixture(scope="module")
def trained(inputs, tmp_path_factory) -> Path:
    """The inputs plus data/train, as the train stage leaves it."""
    workdir = tmp_path_factory.mktemp("trained")
    finish(start_stage("stages.train", workdir, inputs, GOOD))
    shutil.copytree(workdir / "data/train", inputs / "data/train")
    return inputs
