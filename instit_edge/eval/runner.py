"""``instit-edge eval``: answer every Inst-IT Bench question with the official prompts.

Greedy decoding, at most 128 new tokens (the official protocol). Each answer
is appended to ``RUN/predictions.jsonl`` as soon as it exists; a rerun into
the same ``RUN`` skips what is done. At the end the official submission files
(``image_mc_inference.json`` ...) and ``run.json`` (bundle, variants, file
sizes, backend, counts, mean timings) are written atomically.

``--shard i/n`` keeps the questions whose question_id hashes to ``i`` modulo
``n`` (stable whatever the other options); ``--limit N`` keeps the first ``N``
questions of each split/format. :func:`instit_edge.eval.merge.merge_runs`
joins shard runs.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from ..data.bench import load_bench
from ..data.records import BenchItem
from ..errors import InstitError
from .store import PREDICTIONS, RUN_JSON, PredictionLog, group_key, read_predictions, uid, write_submissions

# what a rerun must share with the run it extends; "files" holds each file's sha256, so a bundle re-exported
# from another checkpoint into the same folder (same names, same sizes) is not resumed as if it were the same
IDENTITY = ("backend", "bundle", "model", "llm", "vision", "max_tiles", "files")
MAX_NEW_TOKENS = 128


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``."""
    if not text:
        return 0, 1
    try:
        i, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise InstitError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise InstitError(f"--shard {text}: need 0 <= i < n")
    return i, n


def in_shard(question_id: str, shard: tuple[int, int]) -> bool:
    i, n = shard
    return n == 1 or int(hashlib.sha256(question_id.encode()).hexdigest(), 16) % n == i


def select_items(items: list[BenchItem], shard=(0, 1), limit: int | None = None) -> list[BenchItem]:
    """The shard's questions; with ``limit``, at most that many per split/format (in bench order)."""
    if limit is not None and limit < 1:
        raise InstitError(f"--limit must be at least 1, got {limit}")
    seen: dict[str, int] = {}
    out = []
    for it in items:
        if not in_shard(it.question_id, shard):
            continue
        g = group_key(it.split, it.format)
        if limit is not None and seen.get(g, 0) >= limit:
            continue
        seen[g] = seen.get(g, 0) + 1
        out.append(it)
    return out


def item_uid(item: BenchItem) -> str:
    return uid({"split": item.split, "format": item.format, "question_id": item.question_id})


def record(item: BenchItem, prediction: str, timings: dict) -> dict:
    return {"question_id": item.question_id, "split": item.split, "format": item.format, "category": item.category,
            "question": item.question, "model_prediction": prediction, "ground_truth": item.answer,
            "timings": timings}


def mean_timings(records: list[dict]) -> dict:
    sums: dict[str, list[float]] = {}
    for r in records:
        for k, v in (r.get("timings") or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                sums.setdefault(k, []).append(float(v))
    return {k: round(sum(v) / len(v), 6) for k, v in sums.items()}


def counts(records: list[dict], selected: list[BenchItem] | None = None) -> dict:
    out: dict[str, dict] = {}
    for r in records:
        out.setdefault(group_key(r["split"], r["format"]), {"done": 0})["done"] += 1
    for it in selected or []:
        c = out.setdefault(group_key(it.split, it.format), {"done": 0})
        c["selected"] = c.get("selected", 0) + 1
    return dict(sorted(out.items()))


def check_identity(run_dir: Path, meta: dict) -> None:
    """A rerun must use the same model as the run it extends (else its answers would mix)."""
    import json

    p = run_dir / RUN_JSON
    if not p.is_file():
        return
    try:
        old = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return
    if not isinstance(old, dict):
        return
    diff = [k for k in IDENTITY if old.get(k) != meta.get(k)]
    if diff:
        was = ", ".join(f"{k}={old.get(k)}" for k in diff)
        raise InstitError(f"{run_dir} holds a run with {was}; choose another --out for this model/variant")


def finalize(run_dir: Path, meta: dict, selected: list[BenchItem] | None) -> dict:
    from ..atomic import write_json

    records = read_predictions(run_dir / PREDICTIONS)
    done = {uid(r) for r in records}
    meta = dict(meta)
    meta["submissions"] = write_submissions(run_dir, records)
    meta["counts"] = counts(records, selected)
    meta["done"] = len(records)
    if selected is not None:
        meta["selected"] = len(selected)
        meta["complete"] = all(item_uid(it) in done for it in selected)
    meta["timings"] = mean_timings(records)
    meta["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    write_json(run_dir / RUN_JSON, meta)
    return meta


def run_eval(bundle, bench, out, *, split: str | None = None, fmt: str | None = None, llm: str = "f16",
             vision: str = "fp32", backend: str = "bundle", model: str | None = None, limit: int | None = None,
             shard: str | tuple | None = None, n_threads: int | None = None, n_gpu_layers: int = 0,
             max_new_tokens: int = MAX_NEW_TOKENS, verify: bool = True, progress=None,
             max_tiles: int | None = None) -> dict:
    """Run the bench into ``out``; returns ``run.json``'s content.

    ``progress(done, total)`` is called before the first question and after each.
    """
    from ..atomic import check_writable, write_json
    from ..prompting import official_prompt
    from .backends import open_backend

    shard = shard if isinstance(shard, tuple) else parse_shard(shard)
    out = check_writable(out)
    items = select_items(load_bench(bench, split, fmt), shard, limit)
    be = open_backend(backend, bundle, llm, vision, model, n_threads, n_gpu_layers, verify, max_tiles)
    meta = {"format_version": 1, **be.describe(), "bench": str(Path(bench).resolve()), "split": split,
            "format": fmt, "limit": limit, "shard": f"{shard[0]}/{shard[1]}", "max_new_tokens": max_new_tokens,
            "n_threads": n_threads, "greedy": True}
    check_identity(out, meta)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / RUN_JSON).is_file():
        write_json(out / RUN_JSON, {**meta, "done": 0, "complete": False})
    done = {uid(r) for r in read_predictions(out / PREDICTIONS)}
    todo = [it for it in items if item_uid(it) not in done]
    tick = progress or (lambda n, total: None)
    tick(len(items) - len(todo), len(items))
    with PredictionLog(out / PREDICTIONS) as log:
        for n, it in enumerate(todo, 1):
            text, timings = be.generate(official_prompt(it), it, max_new_tokens)
            log.append(record(it, text, timings))
            tick(len(items) - len(todo) + n, len(items))
    return finalize(out, meta, items)
