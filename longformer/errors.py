"""What a user can fix: `UserError` and its kinds, which the stages print as one `error:` line (anything else
is a bug and shows its traceback), and unreadable files named with the command that rebuilds them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class UserError(Exception):
    """A problem the user can fix: bad params, missing or unreadable inputs, a run that cannot go on."""


class ConfigError(UserError, ValueError):
    """A parameter or configuration value that is not allowed."""


class UnreadableFileError(UserError):
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
