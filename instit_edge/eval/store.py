"""A run directory on disk: the prediction log, the official submission files, ``run.json``.

``predictions.jsonl`` gets one line per answered question, flushed and
fsynced before the next question starts, so a crash loses at most the
question in flight. A torn last line (the process died mid-write) is ignored
when reading and cut off before the next append. Everything else in the run
directory is written atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..atomic import write_json
from ..data.records import FORMATS, SPLITS
from ..errors import InstitError

PREDICTIONS = "predictions.jsonl"
RUN_JSON = "run.json"
SUBMISSION_KEYS = ("question_id", "question", "model_prediction", "ground_truth", "split")


def uid(rec: dict) -> str:
    """Unique key of a prediction: question ids repeat across the MC and OE files (and splits)."""
    return f"{rec['split']}/{rec['format']}/{rec['question_id']}"


def group_key(split: str, fmt: str) -> str:
    return f"{split}/{fmt}"


def submission_name(split: str, fmt: str) -> str:
    """File name the official inference scripts write (``image_mc_inference.json`` ...)."""
    return f"{split}_{fmt}_inference.json"


def canonical_order(records: list[dict]) -> list[dict]:
    """Bench file order: image MC, image OE, video MC, video OE; question_id within a file."""
    return sorted(records, key=lambda r: (SPLITS.index(r["split"]), FORMATS.index(r["format"]), r["question_id"]))


def read_predictions(path: str | Path) -> list[dict]:
    """Records of a ``predictions.jsonl``; a torn last line is skipped, a bad line elsewhere is an error."""
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            if n == len(lines):  # no newline after it: the write was cut short
                break
            raise InstitError(f"{path}: line {n} is not valid JSON; remove that line to resume the run") from None
        if not isinstance(rec, dict) or not {"question_id", "split", "format"} <= set(rec):
            raise InstitError(f"{path}: line {n} is not a prediction record; remove that line to resume the run")
        out.append(rec)
    return out


class PredictionLog:
    """Append-only JSON lines, durable per line."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._cut_torn_tail()
        self._f = open(self.path, "ab")

    def _cut_torn_tail(self) -> None:
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        keep = data.rfind(b"\n") + 1
        if keep == len(data):
            return
        try:  # a complete record that only lacks its newline (an edited file) is kept
            json.loads(data[keep:])
            tail = b"\n"
        except (json.JSONDecodeError, UnicodeDecodeError):
            tail = b""
        with open(self.path, "r+b") as f:
            f.truncate(keep)
            f.seek(keep)
            f.write(data[keep:] + tail if tail else b"")
            f.flush()
            os.fsync(f.fileno())

    def append(self, rec: dict) -> None:
        self._f.write((json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8"))
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_predictions(path: str | Path, records: list[dict]) -> None:
    from ..atomic import write_text

    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def write_submissions(run_dir: str | Path, records: list[dict]) -> list[str]:
    """One official submission JSON per split/format present, sorted by question_id; returns the names."""
    names = []
    for split in SPLITS:
        for fmt in FORMATS:
            group = [r for r in records if r["split"] == split and r["format"] == fmt]
            if not group:
                continue
            group.sort(key=lambda r: r["question_id"])
            name = submission_name(split, fmt)
            write_json(Path(run_dir) / name, [{k: r[k] for k in SUBMISSION_KEYS} for r in group], indent=4)
            names.append(name)
    return names


def read_run(run_dir: str | Path) -> tuple[dict, list[dict]]:
    """``(run.json, prediction records)`` of a run directory."""
    run_dir = Path(run_dir)
    meta_path = run_dir / RUN_JSON
    if not meta_path.is_file():
        raise InstitError(f"{run_dir}: not an eval run (no {RUN_JSON}); make one with `instit-edge eval`")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InstitError(f"{meta_path}: not valid JSON; rerun `instit-edge eval` into this folder") from None
    return meta, read_predictions(run_dir / PREDICTIONS)
