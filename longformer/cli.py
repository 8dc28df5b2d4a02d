"""What the stage scripts share: one readable line for a user error instead of a traceback."""

from __future__ import annotations

import functools
import os

import typer

from longformer.checkpoint import MissingArtifactError
from longformer.convert import CheckpointError
from longformer.data import DataError
from longformer.errors import UnreadableFileError
from longformer.model import CheckpointMismatchError
from longformer.train import TrainingError

USER_ERRORS = (ValueError, CheckpointError, CheckpointMismatchError, DataError, MissingArtifactError, TrainingError,
               UnreadableFileError, FileNotFoundError)


def user_errors(command):
    """Print a user error as `error: ...` and exit 1 (LONGFORMER_TRACEBACK=1 shows the traceback)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except USER_ERRORS as error:
            if os.environ.get("LONGFORMER_TRACEBACK"):
                raise
            typer.secho(f"error: {error}", err=True, fg=typer.colors.RED)
            raise typer.Exit(1) from None

    return wrapper


def app(help: str) -> typer.Typer:
    return typer.Typer(help=help, add_completion=False, pretty_exceptions_enable=False)
