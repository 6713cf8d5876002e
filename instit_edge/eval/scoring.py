"""Scores of predictions, per split / format / category.

One formula for both formats, as the official evaluator computes them:
``accuracy = 100 * (sum of item scores over valid items) / valid items``.

* MC: valid when a letter can be extracted from the answer (official rule,
  :func:`instit_edge.prompting.extract_mc_answer`), score 1 when it is the
  ground truth. The strict reading is reported beside it.
* OE: valid when the judge returned a score (0..1 in steps of 0.1).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..data.records import FORMATS, SPLITS
from ..errors import InstitError
from ..prompting import MC_LETTERS, extract_mc_answer
from .store import group_key

NO_CATEGORY = "-"


def item_format(rec: dict) -> str:
    """``format`` when recorded, else MC when the ground truth is a single option letter."""
    fmt = rec.get("format")
    if fmt in FORMATS:
        return fmt
    return "mc" if str(rec.get("ground_truth", "")).strip() in MC_LETTERS else "oe"


def check_records(records, source: str = "predictions") -> list[dict]:
    """Submission-format records (a JSON list of objects with the official keys), or InstitError."""
    if not isinstance(records, list):
        raise InstitError(f"{source}: expected a JSON list of predictions, got {type(records).__name__}")
    for n, r in enumerate(records, 1):
        if not isinstance(r, dict):
            raise InstitError(f"{source}: item {n} is not an object")
        missing = [k for k in ("question_id", "model_prediction", "ground_truth", "split") if k not in r]
        if missing:
            raise InstitError(f"{source}: item {n} ({r.get('question_id', '?')}) has no {', '.join(missing)}")
        if r["split"] not in SPLITS:
            raise InstitError(f"{source}: item {n} has split {r['split']!r}; use image or video")
        if not isinstance(r["model_prediction"], str) or not isinstance(r["ground_truth"], str):
            raise InstitError(f"{source}: item {n} ({r['question_id']}): "
                              "model_prediction and ground_truth must be text")
        if isinstance(r["question_id"], (dict, list)) or r["question_id"] is None:
            raise InstitError(f"{source}: item {n} has question_id {r['question_id']!r}; it must be text or a number")
    if not records:
        raise InstitError(f"{source}: no predictions in it (an empty list); nothing to score")
    seen: dict[tuple, int] = {}
    for n, r in enumerate(records, 1):
        key = (r["split"], item_format(r), str(r["question_id"]))
        if key in seen:
            raise InstitError(f"{source}: question_id {r['question_id']} ({key[0]} {key[1]}) appears twice, as items "
                              f"{seen[key]} and {n}; each question must be scored once")
        seen[key] = n
    return records


def load_predictions_file(path) -> list[dict]:
    """A submission JSON (list), a ``predictions.jsonl``, or a run directory."""
    from .store import PREDICTIONS, read_predictions

    p = Path(path)
    if p.is_dir():
        p = p / PREDICTIONS
    if not p.is_file():
        raise InstitError(f"predictions not found: {p} (give a submission JSON, a predictions.jsonl or a run folder)")
    if p.suffix == ".jsonl":
        return check_records(read_predictions(p), str(p))
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise InstitError(f"cannot read {p}: {e.strerror or type(e).__name__}") from None
    except RecursionError:
        raise InstitError(f"{p}: not a predictions file (JSON nested too deeply)") from None
    except json.JSONDecodeError as e:
        raise InstitError(f"{p}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except UnicodeDecodeError:
        raise InstitError(f"{p}: not UTF-8 text") from None
    return check_records(data, str(p))


def score_items(records: list[dict], judge=None, fmt: str = "auto") -> list[dict]:
    """One outcome per prediction: ``uid, split, format, category, valid, score, answer`` (+ strict for MC)."""
    out = []
    for r in records:
        f = item_format(r) if fmt == "auto" else fmt
        pred, gt = r["model_prediction"], str(r["ground_truth"]).strip()
        o = {"uid": f"{r['split']}/{f}/{r['question_id']}", "question_id": r["question_id"], "split": r["split"],
             "format": f, "category": r.get("category") or NO_CATEGORY}
        if f == "mc":
            letter, strict = extract_mc_answer(pred, "official"), extract_mc_answer(pred, "strict")
            o.update(valid=bool(letter), score=float(letter == gt), answer=letter,
                     strict_valid=bool(strict), strict_score=float(strict == gt))
        else:
            if judge is None:
                raise InstitError("open-ended answers need a judge (offline or openai)")
            s = judge.score(r.get("question", ""), gt, pred, r["split"])
            o.update(valid=s is not None, score=float(s or 0.0), answer=" ".join(pred.lower().split()))
        out.append(o)
    return out


def accuracy(items: list[dict], strict: bool = False) -> dict:
    v, s = ("strict_valid", "strict_score") if strict else ("valid", "score")
    valid = [o for o in items if o[v]]
    points = sum(o[s] for o in valid)
    acc = 100.0 * points / len(valid) if valid else None
    out = {"accuracy": acc, "total": len(items), "valid": len(valid)}
    if items and items[0]["format"] == "mc":
        out["correct"] = int(points)
    else:
        out["score_sum"] = round(points, 4)
    return out


def summarize(items: list[dict]) -> dict:
    """``{"image/mc": {accuracy, total, valid, correct, strict: {...}, categories: {...}}, ...}``."""
    groups: dict[str, list[dict]] = {}
    for o in items:
        groups.setdefault(group_key(o["split"], o["format"]), []).append(o)
    out = {}
    for g in sorted(groups, key=lambda k: (SPLITS.index(k.split("/")[0]), FORMATS.index(k.split("/")[1]))):
        its = groups[g]
        s = accuracy(its)
        if its[0]["format"] == "mc":
            s["strict"] = accuracy(its, strict=True)
        cats: dict[str, list[dict]] = {}
        for o in its:
            cats.setdefault(o["category"], []).append(o)
        s["categories"] = {c: accuracy(v) for c, v in sorted(cats.items())}
        out[g] = s
    return out
