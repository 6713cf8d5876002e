"""Atomic writes: a reader never sees a half-written file or directory."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path

_UMASK_LOCK = threading.Lock()


def umask() -> int:
    """The process umask (read without changing it for longer than two calls)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def apply_umask(path: str | os.PathLike, directory: bool = False) -> None:
    """Give a ``mkstemp`` / ``mkdtemp`` result (0600 / 0700) the mode a plain ``open`` / ``mkdir`` would have."""
    os.chmod(path, (0o777 if directory else 0o666) & ~umask())


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = ""):
    """Yield a temporary path next to ``target``; rename it over ``target`` on success.

    Works for files; the temporary file is removed when the block raises.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or ".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp)
    apply_umask(tmp)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(target, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def write_json(target, obj, indent: int | None = 2) -> None:
    write_text(target, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_leftovers(target: str | os.PathLike) -> list[Path]:
    """Remove ``.NAME.partial-PID-*`` / ``.NAME.old-PID`` folders of killed runs for ``target``; return them."""
    target = Path(target)
    gone = []
    if not target.parent.is_dir():
        return gone
    for p in target.parent.glob(f".{target.name}.*"):
        rest = p.name[len(target.name) + 2:]
        kind, _, tail = rest.partition("-")
        if kind not in ("partial", "old") or not p.is_dir():
            continue
        pid = tail.split("-")[0]
        if pid.isdigit() and _pid_alive(int(pid)) and int(pid) != os.getpid():
            continue  # a run in progress
        shutil.rmtree(p, ignore_errors=True)
        gone.append(p)
    return gone


def _is_within(a: Path, b: Path) -> bool:
    a, b = Path(os.path.realpath(a)), Path(os.path.realpath(b))
    return a == b or b in a.parents


def guard_output(out: str | os.PathLike, *, force: bool, marker: str, what: str, inputs=()) -> Path:
    """Check, before any long work, that ``out`` may be written; return it absolute.

    - ``out`` must not be, contain or lie inside an input;
    - an existing ``out`` is replaced only with ``force`` and only when it is something this tool made
      (it holds ``marker``) or an empty folder;
    - its parent must be writable.
    """
    from .errors import InstitError

    out = Path(os.path.abspath(out))
    for inp in inputs:
        if inp is None or not os.path.exists(inp):
            continue
        if _is_within(out, inp) or _is_within(inp, out):
            raise InstitError(f"--out {out} overlaps the input {Path(inp)}; choose an output folder outside it")
    if out.exists():
        if not out.is_dir():
            raise InstitError(f"--out {out} is a file, not a {what} folder; choose another path")
        if not force:
            raise InstitError(f"output exists: {out} (pass --force to replace it)")
        if not (out / marker).is_file() and any(out.iterdir()):
            raise InstitError(f"refusing to replace {out}: it is not a {what} (no {marker}); --force only replaces "
                              f"what instit-edge made, so choose another --out")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InstitError(f"cannot write to {parent} (permission denied); choose another --out")
    return out


def check_writable(path: str | os.PathLike, what: str = "--out") -> Path:
    """Raise InstitError, before any long work, when ``path`` (a folder, made if missing) cannot be written."""
    from .errors import InstitError

    p = Path(os.path.abspath(path))
    if p.exists() and not p.is_dir():
        raise InstitError(f"{what} {p} is a file, not a folder; choose another path")
    probe = p
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise InstitError(f"cannot write to {probe} (permission denied); choose another {what}")
    return p


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, force: bool = False):
    """Yield a temporary directory beside ``target``; move it into place on success.

    With ``force`` an existing ``target`` is replaced only after the new one is
    complete, so a failed run never destroys the previous result. Leftovers of
    killed runs for the same target are removed first.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-{os.getpid()}-", dir=target.parent))
    apply_umask(tmp, directory=True)
    try:
        yield tmp
        if target.exists():
            if not force:
                raise FileExistsError(target)
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (a copy across file systems); an existing ``dst`` is kept."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
