"""User-facing errors.

Every error a user can cause (a missing file, a corrupt image, a tampered
bundle) is raised as :class:`InstitError` with a single line that names the
offending file or item and says what to do. The CLI prints that line and exits
with code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations


class InstitError(Exception):
    """A one-line, actionable error caused by user input."""

    exit_code = 2

    def __init__(self, message: str):
        message = " ".join(str(message).split())  # always one line
        super().__init__(message)
        self.message = message


def require_path(path, what: str = "path"):
    """Return ``Path(path)`` or raise InstitError when it does not exist."""
    from pathlib import Path

    p = Path(path)
    if not p.exists():
        raise InstitError(f"{what} not found: {p} (check the path)")
    return p
