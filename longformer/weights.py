"""Our weight format: a directory with config.json, model.safetensors and (for a classifier) head.json, written
atomically. `LongformerModel.load/save` and `LongformerClassifier.load/save` use it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import Tensor

from longformer.config import HeadConfig, LongformerConfig
from longformer.errors import MissingInputError, reading

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
HEAD_FILE = "head.json"


def save(directory: str | Path, config: LongformerConfig, state: dict[str, Tensor],
         head: HeadConfig | None = None) -> None:
    """Write config, tensors (moved to the CPU) and, for a classifier, its head config."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    write_atomic(directory / WEIGHTS_FILE, lambda path: save_file(tensors, path))
    write_atomic(directory / CONFIG_FILE, config.to_json)
    if head is not None:
        write_atomic(directory / HEAD_FILE, lambda path: path.write_text(json.dumps(asdict(head), indent=2)))


def load(directory: str | Path, head: bool = False) -> tuple[LongformerConfig, dict[str, Tensor], HeadConfig | None]:
    """Config, tensors and (with `head`) the head config of a directory that `save` wrote."""
    directory = Path(directory)
    config = load_config(directory)  # a missing config.json is named first
    _require(directory, (WEIGHTS_FILE,) + ((HEAD_FILE,) if head else ()))
    with reading(directory / WEIGHTS_FILE):
        state = load_file(directory / WEIGHTS_FILE)
    if not head:
        return config, state, None
    with reading(directory / HEAD_FILE):
        return config, state, HeadConfig(**json.loads((directory / HEAD_FILE).read_text()))


def load_config(directory: str | Path) -> LongformerConfig:
    directory = Path(directory)
    _require(directory, (CONFIG_FILE,))
    with reading(directory / CONFIG_FILE):
        return LongformerConfig.from_json(directory / CONFIG_FILE)


def _require(directory: Path, names: tuple[str, ...]) -> None:
    for name in names:
        if not (directory / name).is_file():
            raise MissingInputError(f"{directory / name} not found")


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """write(tmp_path), then rename: a crash never leaves a half-written file under `path`."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)
