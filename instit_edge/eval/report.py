"""``instit-edge report``: the quantization accuracy report.

For each run: scores per split / format / category (MC official and strict;
OE through a judge). For each run against the reference, on the questions
both answered: the accuracy delta with a paired bootstrap 95% interval, the
exact McNemar test (MC), the answers that flipped, the answer agreement rate,
the per-token KL divergence and top-1 agreement on bench prompts, file sizes
and speeds. Writes ``report.json``, ``report.md``, ``accuracy.png`` and
``kld_vs_size.png``. With ``max_drop`` the gate fails when a run loses more
than that many points on any split/format.
"""

from __future__ import annotations

from pathlib import Path

from ..atomic import write_json, write_text
from ..errors import InstitError
from . import stats
from .scoring import score_items, summarize
from .store import read_run

FLIP_THRESHOLD = 0.5  # OE: a flip is a judge score crossing 0.5


def _names(dirs: list[Path]) -> list[str]:
    base = [d.name for d in dirs]
    out: list[str] = []
    for i, d in enumerate(dirs):
        n = d.name if base.count(d.name) == 1 else f"{d.parent.name}/{d.name}"
        out.append(n if n not in out else f"{n}#{i}")
    return out


def _load(run_dirs, reference) -> tuple[list[Path], list[str], str]:
    dirs = [Path(d) for d in run_dirs]
    ref = Path(reference)
    if not any(d.resolve() == ref.resolve() for d in dirs):
        dirs.insert(0, ref)
    names = _names(dirs)
    ref_name = next(n for n, d in zip(names, dirs) if d.resolve() == ref.resolve())
    return dirs, names, ref_name


def _correct(o: dict) -> bool:
    return o["valid"] and o["score"] >= (1.0 if o["format"] == "mc" else FLIP_THRESHOLD)


def compare(ref_items: list[dict], var_items: list[dict], records: dict, n_boot: int, seed: int) -> dict:
    """Per split/format comparison of a variant with the reference on their common questions."""
    ref = {o["uid"]: o for o in ref_items}
    var = {o["uid"]: o for o in var_items}
    groups: dict[str, list[str]] = {}
    for u in ref:
        if u in var:
            groups.setdefault(f"{ref[u]['split']}/{ref[u]['format']}", []).append(u)
    out = {}
    for g, uids in groups.items():
        r, v = [ref[u] for u in uids], [var[u] for u in uids]
        res = stats.paired_delta([o["score"] for o in r], [o["valid"] for o in r],
                                 [o["score"] for o in v], [o["valid"] for o in v], n_boot, seed)
        res["ref_accuracy"] = _acc(r)
        res["accuracy"] = _acc(v)
        rc, vc = [_correct(o) for o in r], [_correct(o) for o in v]
        if g.endswith("/mc"):
            res["mcnemar"] = stats.mcnemar(rc, vc)
        res["agreement"] = sum(a["answer"] == b["answer"] for a, b in zip(r, v)) / len(uids)
        flips = {"right_to_wrong": [], "wrong_to_right": []}
        for u, a, b in zip(uids, rc, vc):
            if a != b:
                rec_r, rec_v = records["ref"][u], records["var"][u]
                flips["right_to_wrong" if a else "wrong_to_right"].append({
                    "question_id": rec_r["question_id"], "split": rec_r["split"], "format": rec_r["format"],
                    "ground_truth": rec_r["ground_truth"], "reference": rec_r["model_prediction"],
                    "variant": rec_v["model_prediction"]})
        res["flips"] = flips
        out[g] = res
    return out


def _acc(items: list[dict]) -> float | None:
    valid = [o for o in items if o["valid"]]
    return 100.0 * sum(o["score"] for o in valid) / len(valid) if valid else None


def gate(comparisons: dict, max_drop: float | None) -> dict:
    """Fails when a run's accuracy is more than ``max_drop`` points below the reference's on a split/format."""
    if max_drop is None:
        return {"max_drop": None, "passed": True, "failures": []}
    failures = []
    for name, comp in comparisons.items():
        for g, res in comp["groups"].items():
            if res["ref_accuracy"] is None:
                continue  # nothing to lose
            drop = res["ref_accuracy"] - (res["accuracy"] if res["accuracy"] is not None else 0.0)
            if drop > max_drop:
                failures.append({"run": name, "group": g, "drop": round(drop, 3)})
    return {"max_drop": max_drop, "passed": not failures, "failures": failures}


def _sizes_mb(meta: dict) -> dict:
    return {g: (f.get("size") or 0) / 1e6 for g, f in (meta.get("files") or {}).items()}


def report(run_dirs, reference, out_dir, max_drop: float | None = None, judge: str = "offline",
           judge_model: str | None = None, judge_cache=None, kld_prompts: int = 8, n_boot: int = stats.N_BOOT,
           seed: int = stats.SEED, n_threads: int | None = None) -> dict:
    """Build the report in ``out_dir``; returns ``report.json``'s content (``gate.passed`` for the CI gate)."""
    from .judges import make_judge
    from .kld import fidelity
    from .plots import accuracy_plot, kld_size_plot
    from .report_md import render
    from .store import uid

    dirs, names, ref_name = _load(run_dirs, reference)
    jd = make_judge(judge, judge_model, judge_cache)
    runs, items, recs = {}, {}, {}
    for name, d in zip(names, dirs):
        meta, records = read_run(d)
        if not records:
            raise InstitError(f"{d}: the run has no predictions yet; run `instit-edge eval` first")
        recs[name] = {uid(r): r for r in records}
        items[name] = score_items(records, jd)
        scores = summarize(items[name])
        ci = {}
        for g in scores:
            its = [o for o in items[name] if f"{o['split']}/{o['format']}" == g]
            ci[g] = stats.accuracy_ci([o["score"] for o in its], [o["valid"] for o in its], n_boot, seed)
        runs[name] = {"dir": str(d.resolve()), **{k: meta.get(k) for k in ("backend", "bundle", "model", "llm",
                      "vision", "files", "done", "complete", "timings", "shard")},
                      "sizes_mb": _sizes_mb(meta), "scores": scores, "ci": ci, "meta": meta}
    comparisons = {}
    for name in names:
        if name != ref_name:
            comparisons[name] = {"groups": compare(items[ref_name], items[name],
                                                   {"ref": recs[ref_name], "var": recs[name]}, n_boot, seed)}
    common = set(recs[ref_name])
    fid = fidelity(runs[ref_name]["meta"], {n: runs[n]["meta"] for n in comparisons}, common, kld_prompts,
                   n_threads) if comparisons and kld_prompts > 0 else {}
    for name, f in fid.items():
        comparisons[name]["fidelity"] = f
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups = [g for g in ("image/mc", "image/oe", "video/mc", "video/oe")
              if any(g in r["scores"] for r in runs.values())]
    accuracy_plot(names, groups, {n: {g: r["scores"].get(g, {}).get("accuracy") for g in groups}
                                  for n, r in runs.items()}, {n: r["ci"] for n, r in runs.items()},
                  out / "accuracy.png")
    points = [(n, runs[n]["sizes_mb"].get("llm", 0.0), f["kld_mean"]) for n, f in fid.items() if "kld_mean" in f]
    if points:
        points.insert(0, (ref_name, runs[ref_name]["sizes_mb"].get("llm", 0.0), 0.0))
    kld_size_plot(points, out / "kld_vs_size.png")
    for r in runs.values():
        r.pop("meta")
    result = {"reference": ref_name, "runs": runs, "comparisons": comparisons,
              "judge": {"name": jd.name, "official": jd.official, "model": getattr(jd, "model", None)},
              "bootstrap": {"resamples": n_boot, "seed": seed}, "gate": gate(comparisons, max_drop),
              "plots": ["accuracy.png", "kld_vs_size.png"]}
    write_json(out / "report.json", result)
    write_text(out / "report.md", render(result))
    return result
