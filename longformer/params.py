"""params.yaml -> validated dataclasses; a misspelled key or a bad value is a clear error."""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from longformer.errors import ConfigError

from longformer.data import DataParams
from longformer.model import HeadConfig
from longformer.train import TrainParams


def _is_positive_even(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0 and value % 2 == 0


@dataclass
class ModelParams:
    checkpoint: str = "tiny"  # `tiny`, `minilm` (offline), a hub id (allenai/longformer-base-4096) or a directory
    max_length: int = 0  # tokens the converted model takes; 0 = the checkpoint's own (a BERT/RoBERTa: extend it)
    attention_window: int | list = 0  # one window, or one per layer; 0 = the checkpoint's (a BERT/RoBERTa: 512)

    def __post_init__(self) -> None:
        if not isinstance(self.max_length, int) or isinstance(self.max_length, bool) or self.max_length < 0:
            raise ConfigError(f"model.max_length must be a positive number of tokens (0 = the checkpoint's), "
                              f"got {self.max_length!r}")
        window = self.attention_window
        windows = window if isinstance(window, list) else [window]
        if window != 0 or isinstance(window, bool):
            if not windows or not all(_is_positive_even(w) for w in windows):
                raise ConfigError(f"model.attention_window must be a positive even number of tokens, or a list of "
                                  f"one per layer (0 = the checkpoint's), got {window!r}")

    def conversion(self) -> dict:
        """Keyword arguments of `convert_hf_checkpoint`: None where the checkpoint's own value is kept."""
        return {"max_length": self.max_length or None, "attention_window": self.attention_window or None}


@dataclass
class Params:
    model: ModelParams = field(default_factory=ModelParams)
    data: DataParams = field(default_factory=DataParams)
    head: HeadConfig = field(default_factory=HeadConfig)
    train: TrainParams = field(default_factory=TrainParams)

    def __post_init__(self) -> None:
        if self.model.max_length and self.model.max_length < self.data.max_length:
            raise ConfigError(f"model.max_length={self.model.max_length} is shorter than data.max_length="
                              f"{self.data.max_length}: the model could not read the reviews as tokenized. Raise "
                              "model.max_length or lower data.max_length")


def _typed(group: str, cls: type, values: dict) -> object:
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown parameter {group}.{key} in params.yaml; {group} takes: {', '.join(known)}")
        expected = hints[key]
        ok = (isinstance(value, bool) if expected is bool else
              isinstance(value, (int, float)) and not isinstance(value, bool) if expected is float else
              isinstance(value, int) and not isinstance(value, bool) if expected is int else
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
        raise ConfigError(f"{path} not found: run the stages from the project root")
    try:
        raw = yaml.load(path.read_text(), Loader=_Yaml12Loader)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from error
    return parse_params(raw)
