"""The one exception type for user mistakes.

A bad name, parameter, file or config raises ``UserError`` with a single line that
says what was wrong and what is allowed; the CLI prints it and exits with code 2,
without a traceback. Anything else is a bug and keeps its traceback.
"""

from pathlib import Path


class UserError(ValueError):
    """A mistake in what the user asked for (name, parameter, file, config)."""


def make_folder(folder: Path, what: str, instead: str) -> Path:
    """``folder`` made with its parents where it is missing, or one line saying why it
    cannot be: "<what> cannot be made (<the system's reason>); <instead>"."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{what} cannot be made ({e.strerror}); {instead}") from None
    return folder


def one_line(exc: BaseException, limit: int = 200, last: bool = False) -> str:
    """"Type: message" on one line, for a warning or a stored reason: the message's first
    line (``last``: its last, where a build tool prints the error at the end), cut to
    ``limit`` characters."""
    lines = str(exc).strip().splitlines() or [""]
    return f"{type(exc).__name__}: {lines[-1 if last else 0][:limit]}"
