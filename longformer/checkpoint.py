"""Our own weight formats: a config JSON plus a safetensors state dict, written atomically."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import Tensor

from longformer.config import LongformerConfig
from longformer.errors import UserError, reading
from longformer.model import HeadConfig, LongformerClassifier, LongformerModel, load_state_dict_strict

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
HEAD_FILE = "head.json"


class MissingArtifactError(UserError, FileNotFoundError):
    """An input that an earlier pipeline stage should have produced."""


def _write_atomic(path: Path, write) -> None:
    """write(tmp_path), then rename: a crash never leaves a half-written file under `path`."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def _require(directory: Path, names: tuple[str, ...], stage: str) -> None:
    for name in names:
        if not (directory / name).is_file():
            raise MissingArtifactError(f"{directory / name} not found: run the {stage} stage (dvc repro {stage}) first")


def save_converted(config: LongformerConfig, state: dict[str, Tensor], directory: str | Path) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _write_atomic(directory / WEIGHTS_FILE, lambda p: save_file({k: v.contiguous() for k, v in state.items()}, p))
    _write_atomic(directory / CONFIG_FILE, config.to_json)


def load_converted(directory: str | Path) -> tuple[LongformerConfig, dict[str, Tensor]]:
    directory = Path(directory)
    _require(directory, (CONFIG_FILE, WEIGHTS_FILE), "convert")
    with reading(directory / WEIGHTS_FILE, "dvc repro -f convert"):
        state = load_file(directory / WEIGHTS_FILE)
    return load_converted_config(directory), state


def load_converted_config(directory: str | Path) -> LongformerConfig:
    directory = Path(directory)
    _require(directory, (CONFIG_FILE,), "convert")
    with reading(directory / CONFIG_FILE, "dvc repro -f convert"):
        return LongformerConfig.from_json(directory / CONFIG_FILE)


def load_encoder(directory: str | Path) -> LongformerModel:
    config, state = load_converted(directory)
    model = LongformerModel(config)
    load_state_dict_strict(model, state)
    return model


def save_classifier(model: LongformerClassifier, directory: str | Path) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _write_atomic(directory / WEIGHTS_FILE, lambda p: save_file(state, p))
    _write_atomic(directory / CONFIG_FILE, model.config.to_json)
    _write_atomic(directory / HEAD_FILE, lambda p: p.write_text(json.dumps(asdict(model.head_config), indent=2)))


def load_classifier(directory: str | Path) -> LongformerClassifier:
    directory = Path(directory)
    _require(directory, (CONFIG_FILE, HEAD_FILE, WEIGHTS_FILE), "train")
    with reading(directory, "dvc repro -f train"):
        head = HeadConfig(**json.loads((directory / HEAD_FILE).read_text()))
        config = LongformerConfig.from_json(directory / CONFIG_FILE)
        state = load_file(directory / WEIGHTS_FILE)
    model = LongformerClassifier(config, head)
    load_state_dict_strict(model, state)
    return model
