"""params.yaml -> validated dataclasses; a misspelled key or a bad value is a clear error."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from longformer.data import DataParams
from longformer.model import HeadConfig
from longformer.train import TrainParams


@dataclass
class ModelParams:
    checkpoint: str = "tiny"  # `tiny` (offline), a hub id such as allenai/longformer-base-4096, or a local directory


@dataclass
class Params:
    model: ModelParams = field(default_factory=ModelParams)
    data: DataParams = field(default_factory=DataParams)
    head: HeadConfig = field(default_factory=HeadConfig)
    train: TrainParams = field(default_factory=TrainParams)


def _typed(group: str, cls: type, values: dict) -> object:
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    for key, value in values.items():
        if key not in known:
            raise ValueError(f"unknown parameter {group}.{key} in params.yaml; {group} takes: {', '.join(known)}")
        expected = hints[key]
        ok = (isinstance(value, bool) if expected is bool else
              isinstance(value, (int, float)) and not isinstance(value, bool) if expected is float else
              isinstance(value, int) and not isinstance(value, bool) if expected is int else
              isinstance(value, expected))
        if not ok:
            raise ValueError(f"{group}.{key} must be of type {expected.__name__}, got {value!r}")
    return cls(**values)


def parse_params(raw: dict | None) -> Params:
    raw = raw or {}
    groups = {f.name: f.default_factory for f in dataclasses.fields(Params)}
    unknown = set(raw) - set(groups)
    if unknown:
        raise ValueError(f"unknown parameter group(s) {sorted(unknown)} in params.yaml; known: {', '.join(groups)}")
    return Params(**{name: _typed(name, type(factory()), raw.get(name) or {}) for name, factory in groups.items()})


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the stages from the project root")
    return parse_params(yaml.safe_load(path.read_text()))
