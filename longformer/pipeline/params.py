"""params.yaml -> validated dataclasses; a misspelled key or a bad value is a clear error."""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from longformer.config import HeadConfig, is_integer, is_window
from longformer.errors import ConfigError, MissingInputError

# train.precision: auto = bf16 on CUDA and on CPUs that compute bf16 natively, fp32 elsewhere (pipeline/precision.py)
PRECISIONS = ("auto", "fp32", "bf16")
TINY = "tiny"  # model.checkpoint's offline default: a small random Longformer, the only encoder without pretraining
# The highest learning rate a pretrained encoder is trained at: above it, the tiny random encoder's rates (5e-4, the
# offline default's) undo the pretraining, quietly (minilm, 2,000 IMDb reviews: 3 points of accuracy lost).
PRETRAINED_MAX_LR = 1e-4
# What to set instead: the README's fine-tuning rate, and no pretraining (the README's recipes), or a rate within bounds
PRETRAINED_FIXES = {"train.lr": "-S train.lr=5e-05", "pretrain.lr": "-S pretrain.steps=0 (or pretrain.lr at most 1e-4)"}


@dataclass
class ModelParams:
    checkpoint: str = TINY  # `tiny`, `minilm` (offline), a hub id (allenai/longformer-base-4096) or a directory
    max_length: int = 0  # tokens the converted model takes; 0 = the checkpoint's own (a BERT/RoBERTa: extend it)
    attention_window: int | list = 0  # one window, or one per layer; 0 = the checkpoint's (a BERT/RoBERTa: 512)

    def __post_init__(self) -> None:
        if not is_integer(self.max_length, 0):
            raise ConfigError(f"model.max_length must be a positive number of tokens (0 = the checkpoint's), "
                              f"got {self.max_length!r}")
        window = self.attention_window
        windows = window if isinstance(window, list) else [window]
        if window != 0 or isinstance(window, bool):
            if not windows or not all(is_window(w) for w in windows):
                raise ConfigError(f"model.attention_window must be a positive even number of tokens, or a list of "
                                  f"one per layer (0 = the checkpoint's), got {window!r}")

    def conversion(self) -> dict:
        """Keyword arguments of `convert_hf_checkpoint`: None where the checkpoint's own value is kept."""
        return {"max_length": self.max_length or None, "attention_window": self.attention_window or None}


@dataclass
class DataParams:
    dataset: str = "sample"  # sample | imdb (the hub's) | a directory with train and test files
    max_length: int = 1024
    val_size: float = 0.1
    limit: int = 0  # at most this many train and test reviews (stratified); 0 = all
    test_limit: int = 0  # at most this many test reviews; 0 = as `limit`
    seed: int = 0

    def __post_init__(self) -> None:
        if not is_integer(self.max_length, 8):
            raise ConfigError(f"data.max_length must be an integer >= 8, got {self.max_length!r}")
        if not 0.0 < self.val_size < 1.0:
            raise ConfigError(f"data.val_size must be a fraction in (0, 1), got {self.val_size!r}")
        for name in ("limit", "test_limit"):
            value = getattr(self, name)
            if not is_integer(value, 0):
                raise ConfigError(f"data.{name} must be a non-negative integer (0 = all), got {value!r}")


@dataclass
class TrainParams:
    epochs: int = 2
    batch_size: int = 8
    grad_accum: int = 2
    lr: float = 5e-4
    weight_decay: float = 0.01
    adam_eps: float = 1e-8
    warmup_ratio: float = 0.1  # fraction of the optimizer steps with a linear warmup
    label_smoothing: float = 0.1
    max_grad_norm: float = 1.0
    eval_every: int = 100  # optimizer steps between validations (and at every epoch end); 0 = epoch ends only
    resume_every: int = 200  # optimizer steps between saves of the resumable state (and at every epoch end)
    nproc: int = 1  # processes (GPUs, or CPU processes with gloo) on this node; > 1 runs under torch's launcher
    precision: str = "auto"  # of pretrain, train, evaluate: auto (bf16 where computed natively) | fp32 | bf16
    gradient_checkpointing: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"train.precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        for name in ("epochs", "batch_size", "grad_accum", "nproc"):
            value = getattr(self, name)
            if not is_integer(value, 1):
                raise ConfigError(f"train.{name} must be a positive integer, got {value!r}")
        if not self.lr > 0 or not self.adam_eps > 0:
            raise ConfigError(f"train.lr and train.adam_eps must be positive, got {self.lr!r} and {self.adam_eps!r}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"train.label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if self.weight_decay < 0 or self.max_grad_norm <= 0 or self.eval_every < 0 or self.resume_every < 1:
            raise ConfigError("train.weight_decay and train.eval_every must be >= 0, train.max_grad_norm > 0, "
                              "train.resume_every >= 1")


@dataclass
class PretrainParams:
    """Continued masked-LM pretraining of the converted encoder on the training split's texts."""

    steps: int = 20  # optimizer steps; 0 = none: the converted encoder goes on unchanged
    batch_size: int = 4  # sequences per batch
    grad_accum: int = 1
    max_length: int = 0  # tokens per sequence; 0 = the model's
    mask_prob: float = 0.15  # of the ordinary tokens: 80% become the mask token, 10% a random one, 10% stay
    lr: float = 5e-4
    weight_decay: float = 0.01
    adam_eps: float = 1e-6
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    head_warmup_steps: int = 10  # steps of a new masked-LM head alone before "before" is measured
    head_warmup_lr: float = 1e-3  # their learning rate (constant): a new head starts far from trained
    eval_every: int = 0  # optimizer steps between held-out measurements (and at the end); 0 = at the end only
    resume_every: int = 100
    gradient_checkpointing: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        for name, at_least in (("steps", 0), ("batch_size", 1), ("grad_accum", 1), ("max_length", 0),
                               ("head_warmup_steps", 0), ("eval_every", 0), ("resume_every", 1)):
            value = getattr(self, name)
            if not is_integer(value, at_least):
                raise ConfigError(f"pretrain.{name} must be an integer >= {at_least}, got {value!r}")
        if 0 < self.max_length < 8:
            raise ConfigError(f"pretrain.max_length must be at least 8 tokens (0 = the model's), got {self.max_length}")
        if not 0.0 < self.mask_prob < 1.0:
            raise ConfigError(f"pretrain.mask_prob must be a fraction in (0, 1), got {self.mask_prob!r}")
        if not min(self.lr, self.head_warmup_lr, self.adam_eps, self.max_grad_norm) > 0:
            raise ConfigError("pretrain.lr, pretrain.head_warmup_lr, pretrain.adam_eps and pretrain.max_grad_norm "
                              "must be positive")
        if not 0.0 <= self.warmup_ratio < 1.0 or self.weight_decay < 0:
            raise ConfigError(f"pretrain.warmup_ratio must be in [0, 1) and pretrain.weight_decay >= 0, got "
                              f"{self.warmup_ratio!r} and {self.weight_decay!r}")


@dataclass
class EvaluateParams:
    batch_size: int = 8  # reviews per batch on the test set (length-bucketed)

    def __post_init__(self) -> None:
        if not is_integer(self.batch_size, 1):
            raise ConfigError(f"evaluate.batch_size must be a positive integer, got {self.batch_size!r}")


@dataclass
class ExportParams:
    labels: list = field(default_factory=lambda: ["negative", "positive"])  # class names, label 0 first

    def __post_init__(self) -> None:
        if (not self.labels or not all(isinstance(x, str) and x.strip() for x in self.labels)
                or len(set(self.labels)) != len(self.labels)):
            raise ConfigError(f"export.labels must be distinct non-empty names, one per class, got {self.labels!r}")


@dataclass
class Params:
    model: ModelParams = field(default_factory=ModelParams)
    data: DataParams = field(default_factory=DataParams)
    pretrain: PretrainParams = field(default_factory=PretrainParams)
    head: HeadConfig = field(default_factory=HeadConfig)
    train: TrainParams = field(default_factory=TrainParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    export: ExportParams = field(default_factory=ExportParams)

    def __post_init__(self) -> None:
        if len(self.export.labels) != self.head.num_labels:
            raise ConfigError(f"export.labels names {len(self.export.labels)} classes but head.num_labels is "
                              f"{self.head.num_labels}: give one name per class")
        if self.model.max_length and self.model.max_length < self.data.max_length:
            raise ConfigError(f"model.max_length={self.model.max_length} is shorter than data.max_length="
                              f"{self.data.max_length}: the model could not read the reviews as tokenized. Raise "
                              "model.max_length or lower data.max_length")
        self.check_pretrained_rates()
        if self.model.max_length and self.pretrain.max_length > self.model.max_length:
            raise ConfigError(f"pretrain.max_length={self.pretrain.max_length} is beyond model.max_length="
                              f"{self.model.max_length}: the model cannot read such sequences. Lower it (0 = the "
                              "model's length)")

    def check_pretrained_rates(self) -> None:
        """A pretrained encoder is never trained at the tiny random encoder's rates: a clear error instead."""
        if self.model.checkpoint == TINY:
            return
        rates = {"train.lr": self.train.lr, "pretrain.lr": self.pretrain.lr if self.pretrain.steps else 0.0}
        too_high = [name for name, rate in rates.items() if rate > PRETRAINED_MAX_LR]
        if too_high:
            found = ", ".join(f"{name}={rates[name]:g}" for name in too_high)
            fixes = " and ".join(PRETRAINED_FIXES[name] for name in too_high)
            raise ConfigError(f"model.checkpoint={self.model.checkpoint} is a pretrained encoder, and {found} would "
                              f"undo its pretraining (rates above {PRETRAINED_MAX_LR:g} are for the offline default's "
                              f"random encoder): set {fixes}")


def _typed(group: str, cls: type, values: dict) -> object:
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown parameter {group}.{key} in params.yaml; {group} takes: {', '.join(known)}")
        expected = hints[key]
        ok = (isinstance(value, bool) if expected is bool else
              isinstance(value, (int, float)) and not isinstance(value, bool) if expected is float else
              is_integer(value) if expected is int else
              isinstance(value, expected))
        if not ok:
            raise ConfigError(f"{group}.{key} must be of type {expected.__name__}, got {value!r}")
    return cls(**values)


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML reads YAML 1.1, where `5e-05` (no dot) is a string; DVC writes floats so (`-S train.lr=5.0e-05` comes
    out as 5e-05) and reads them as YAML 1.2 numbers, as this loader does."""


_Yaml12Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
                                    list("-+0123456789."))


def parse_params(raw: dict | None) -> Params:
    raw = raw or {}
    groups = {f.name: f.default_factory for f in dataclasses.fields(Params)}
    unknown = set(raw) - set(groups)
    if unknown:
        raise ConfigError(f"unknown parameter group(s) {sorted(unknown)} in params.yaml; known: {', '.join(groups)}")
    return Params(**{name: _typed(name, type(factory()), raw.get(name) or {}) for name, factory in groups.items()})


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path} not found: run the stages from the project root")
    try:
        raw = yaml.load(path.read_text(), Loader=_Yaml12Loader)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from error
    return parse_params(raw)
