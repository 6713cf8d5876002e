"""``instit-edge merge``: join runs of the same model (shards, or pieces run on several machines) into one."""

from __future__ import annotations

import time
from pathlib import Path

from ..atomic import write_json
from ..errors import InstitError
from .runner import IDENTITY, counts, mean_timings
from .store import PREDICTIONS, RUN_JSON, canonical_order, read_run, uid, write_predictions, write_submissions


def merge_runs(run_dirs, out) -> dict:
    """Union of the runs' predictions in bench order; returns the merged ``run.json``.

    All runs must come from the same backend, bundle / checkpoint and
    variants. A question answered in two runs must have the same answer
    (greedy decoding is deterministic); different answers are an error.
    """
    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise InstitError("merge: give at least one run directory")
    out = Path(out)
    if any(out.resolve() == d.resolve() for d in run_dirs):
        raise InstitError(f"merge: --out {out} is one of the inputs; choose a new folder")
    metas, merged = [], {}
    for d in run_dirs:
        meta, records = read_run(d)
        if metas:
            diff = [k for k in IDENTITY if meta.get(k) != metas[0].get(k)]
            if diff:
                raise InstitError(f"merge: {d} differs from {run_dirs[0]} in {', '.join(diff)}; "
                                  "only runs of the same model and variants can be merged")
        metas.append(meta)
        for r in records:
            key = uid(r)
            if key in merged and merged[key]["model_prediction"] != r["model_prediction"]:
                raise InstitError(f"merge: {key} has different answers in two runs; rerun one of them")
            merged.setdefault(key, r)
    records = canonical_order(list(merged.values()))
    out.mkdir(parents=True, exist_ok=True)
    write_predictions(out / PREDICTIONS, records)
    first = metas[0]
    meta = {k: v for k, v in first.items() if k not in ("counts", "done", "selected", "complete", "timings",
                                                       "submissions", "updated", "shard")}
    meta.update({
        "merged_from": [{"run": str(d.resolve()), "shard": m.get("shard"), "done": m.get("done"),
                         "complete": m.get("complete")} for d, m in zip(run_dirs, metas)],
        "shard": "merged",
        "submissions": write_submissions(out, records),
        "counts": counts(records),
        "done": len(records),
        "selected": sum(int(m.get("selected") or 0) for m in metas),
        "complete": all(m.get("complete") for m in metas),
        "timings": mean_timings(records),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
    })
    write_json(out / RUN_JSON, meta)
    return meta
