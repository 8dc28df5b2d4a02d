"""What the stage scripts share: one readable line for a user error (`UserError`) instead of a traceback."""

from __future__ import annotations

import functools
import gc
import os

import typer

from longformer.errors import UserError
from longformer.pipeline.distributed import PEER_FAILED, is_main_process, peer_failed


def user_errors(command):
    """Print a user error as `error: ...` and exit 1 (LONGFORMER_TRACEBACK=1 shows the traceback)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as error:
            if os.environ.get("LONGFORMER_TRACEBACK"):
                raise
            message, status = str(error), 1
        except Exception as error:
            if not peer_failed(error):
                raise
            message, status = None, PEER_FAILED  # another process died: the launcher says which, once
        if message and is_main_process():  # under torchrun every process meets the same error: one says it
            typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
        # The failed command's frames are gone now; what they left in reference cycles (dvclive's git objects) is
        # freed while Python is whole: at interpreter shutdown its finalizers print "Exception ignored" tracebacks.
        gc.collect()
        raise typer.Exit(status)

    return wrapper


def app(help: str) -> typer.Typer:
    return typer.Typer(help=help, add_completion=False, pretty_exceptions_enable=False)
