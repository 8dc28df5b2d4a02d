"""Files that exist but cannot be read: one error naming the file and the command that rebuilds it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class UnreadableFileError(RuntimeError):
    """A corrupt, truncated or foreign input file."""


@contextmanager
def reading(path: str | Path, rebuild: str) -> Iterator[None]:
    """Turn any failure while reading `path` into an UnreadableFileError that says how to rebuild it."""
    try:
        yield
    except Exception as error:  # every reader (safetensors, json, arrow, tokenizers) has its own error types
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        raise UnreadableFileError(f"{path} cannot be read ({type(error).__name__}: {reason}); rebuild it with "
                                  f"`{rebuild}`") from error
