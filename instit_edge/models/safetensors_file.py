"""A safetensors file's header check, before any long work (a leaf: loading and original_layout both use it)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import InstitError


def check_safetensors(path: str | Path) -> None:
    """Raise :class:`InstitError` naming ``path`` when it is not a complete safetensors file.

    Reads only the header: its length, its JSON, and that the tensors' byte
    ranges end exactly at the end of the file (a truncated download fails here,
    before any long work).
    """
    p = Path(path)

    def bad(what: str):
        raise InstitError(f"{p} is truncated or corrupt ({what}); re-download or re-save the checkpoint")

    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                bad("no header")
            n = int.from_bytes(head, "little")
            if n > min(size - 8, 100 << 20):
                bad("header longer than the file")
            header = json.loads(f.read(n).decode("utf-8"))
    except OSError as e:
        raise InstitError(f"cannot read {p}: {e.strerror or type(e).__name__}") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        bad("unreadable header")
    if not isinstance(header, dict):
        bad("unreadable header")
    end = 0
    for name, t in header.items():
        if name == "__metadata__":
            continue
        offsets = t.get("data_offsets") if isinstance(t, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            bad(f"tensor {name!r} has no byte range")
        end = max(end, offsets[1])
    if 8 + n + end != size:
        bad(f"{size} bytes, the header describes {8 + n + end}")
