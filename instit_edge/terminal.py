"""What the command line shows on the terminal, shared by ``cli.py`` and every stage's ``commands.py``.

The two consoles (``console``: progress, status and one-line errors on stderr; ``out``: results on stdout),
a progress bar driven by named steps that leaves nothing behind when the work fails (so the error stays
the only line), the table of a bundle's files, and user paths made absolute once, at the CLI edge.

A leaf: it imports nothing from the package, so the commands and the library functions they call can
import it without a cycle.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

console = Console(stderr=True)
out = Console()


class QuietOnErrorProgress(Progress):
    """A progress bar that leaves nothing behind when the work fails, so the error stays the only line."""

    def __exit__(self, exc_type, exc_val, exc_tb):
        if exc_type is not None:
            self.live.transient = True
        return super().__exit__(exc_type, exc_val, exc_tb)


def steps(total: int, description: str, con: Console | None = None):
    """A rich progress bar driven by named steps: ``(progress, step)``; ``with progress:`` shows it,
    ``step(name)`` advances it by one and names the step."""
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn

    prog = QuietOnErrorProgress(TextColumn("[bold]{task.description}"), BarColumn(),
                                TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                                console=con or console, transient=False)
    task = prog.add_task(description, total=total)

    def step(name: str) -> None:
        prog.update(task, advance=1, description=f"{description}: {name}")

    return prog, step


def bundle_table(b):
    """The files of a bundle (anything with ``root`` and ``describe()``) as a rich table."""
    from rich.table import Table

    t = Table(title=f"bundle {b.root}")
    for col in ("group", "variant", "file", "size"):
        t.add_column(col)
    for group, name, path, size in b.describe():
        t.add_row(group, name, path, f"{size / 1e6:.2f} MB")
    return t


def tree_mb(path: Path) -> float:
    """Megabytes of the files under ``path``."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 1e6


# Arguments that may name a local checkpoint / input as a plain string (a hub name or a camera index otherwise).
LOCAL_STRING_ARGS = ("model", "base", "target", "input")


def absolute(value, name: str):
    """A user path made absolute (``~`` expanded, symlinks kept), so no later ``chdir`` changes its meaning."""
    if isinstance(value, Path):
        return Path(os.path.abspath(os.path.expanduser(value)))
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, Path) for v in value):
        return type(value)(absolute(v, name) for v in value)
    if isinstance(value, str) and name in LOCAL_STRING_ARGS and value and os.path.exists(os.path.expanduser(value)):
        return os.path.abspath(os.path.expanduser(value))
    return value


def resolve_user_paths(command) -> None:
    """Wrap a registered command so every user path is resolved once, here at the CLI edge."""
    fn = command.callback
    if fn is None or getattr(fn, "_paths_resolved", False):
        return

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **{k: absolute(v, k) for k, v in kwargs.items()})

    wrapper._paths_resolved = True
    command.callback = wrapper
