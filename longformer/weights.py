"""Our weight format: a directory with config.json, model.safetensors (the encoder, or a classifier) and, for a
classifier, head.json; beside an encoder, lm_head.safetensors where it has a masked-LM head. Written atomically.
`LongformerModel`, `LongformerClassifier` and `LongformerForMaskedLM` load and save through it."""

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
LM_HEAD_FILE = "lm_head.safetensors"


def save(directory: str | Path, config: LongformerConfig, state: dict[str, Tensor],
         head: HeadConfig | None = None, lm_head: dict[str, Tensor] | None = None) -> None:
    """Write config, tensors (moved to the CPU) and, for a classifier, its head config; for an encoder, its
    masked-LM head's tensors if given (else none is left from an earlier save)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_tensors(directory / WEIGHTS_FILE, state)
    write_atomic(directory / CONFIG_FILE, config.to_json)
    if head is not None:
        write_atomic(directory / HEAD_FILE, lambda path: path.write_text(json.dumps(asdict(head), indent=2)))
    if lm_head is not None:
        save_tensors(directory / LM_HEAD_FILE, lm_head)
    else:
        (directory / LM_HEAD_FILE).unlink(missing_ok=True)


def save_tensors(path: Path, state: dict[str, Tensor]) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    write_atomic(path, lambda tmp: save_file(tensors, tmp))


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


def load_lm_head(directory: str | Path) -> dict[str, Tensor] | None:
    """The masked-LM head's tensors that `save` wrote beside an encoder; None where it has none."""
    path = Path(directory) / LM_HEAD_FILE
    if not path.is_file():
        return None
    with reading(path):
        return load_file(path)


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
