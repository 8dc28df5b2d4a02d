"""What a user can fix: `UserError` and its kinds, which the stages print as one `error:` line (anything else
is a bug and shows its traceback); unreadable and missing files named, with the stage that makes them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class UserError(Exception):
    """A problem the user can fix: bad params, missing or unreadable inputs, a run that cannot go on."""


class ConfigError(UserError, ValueError):
    """A parameter or configuration value that is not allowed."""


class MissingInputError(UserError, FileNotFoundError):
    """An input that is not there yet (in the pipeline: one an earlier stage writes)."""


class UnreadableFileError(UserError):
    """A corrupt, truncated or foreign input file."""


class CheckpointError(UserError):
    """A Hugging Face checkpoint that cannot be had or cannot be turned into a Longformer."""


class WeightsMismatchError(UserError, ValueError):
    """Weights that do not fit the model: names the missing, unexpected and mis-shaped tensors."""


class DataError(UserError, ValueError):
    """A dataset that cannot be used: missing, empty, unlabeled, or with labels the head cannot take."""


class TrainingError(UserError):
    """Training cannot go on (e.g. a non-finite loss)."""


class WorkerDiedError(UserError):
    """A process of a multi-process stage died (a signal, or an error it could not report)."""


class PartialExportWarning(UserWarning):
    """An export that had to leave part of the model out (e.g. a head the target format cannot express)."""


@contextmanager
def reading(path: str | Path) -> Iterator[None]:
    """Turn any failure while reading `path` into an UnreadableFileError that names it."""
    try:
        yield
    except Exception as error:  # every reader (safetensors, json, arrow, tokenizers) has its own error types
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        raise UnreadableFileError(f"{path} cannot be read ({type(error).__name__}: {reason})") from error


@contextmanager
def written_by(stage: str) -> Iterator[None]:
    """For inputs that the pipeline stage `stage` writes: a missing or unreadable one says what makes it."""
    try:
        yield
    except MissingInputError as error:
        raise MissingInputError(f"{error}: run the {stage} stage (dvc repro {stage}) first") from None
    except UnreadableFileError as error:
        raise UnreadableFileError(f"{error}; rebuild it with `dvc repro -f {stage}`") from error.__cause__
