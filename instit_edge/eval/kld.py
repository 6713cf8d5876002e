"""Per-token KL divergence and top-1 agreement of a variant against the reference, on bench prompts.

Both runs' bundles are loaded with the variants recorded in their
``run.json``; the logits of every text position of up to ``k`` official
bench prompts (spread over split/format, the same prompts for every variant)
are compared with :func:`instit_edge.quant.fidelity.kl_top1`. Runs made with
the torch backend, or whose bundle is gone, are skipped with a note.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def pick_prompts(bench: str, uids: set[str], k: int) -> list:
    """Up to ``k`` bench items among ``uids``, round-robin over split/format, in bench order."""
    from ..data.bench import load_bench
    from .runner import item_uid

    groups: dict[str, list] = {}
    for it in load_bench(bench):
        if item_uid(it) in uids:
            groups.setdefault(f"{it.split}/{it.format}", []).append(it)
    out, queues = [], list(groups.values())
    while len(out) < k and any(queues):
        for q in queues:
            if q and len(out) < k:
                out.append(q.pop(0))
    return out


def _usable(meta: dict) -> str | None:
    """Why a run cannot be compared by logits (None when it can)."""
    if meta.get("backend") != "bundle":
        return f"{meta.get('backend')} backend (logits of bundles only)"
    if not meta.get("bundle") or not (Path(meta["bundle"]) / "bundle.json").is_file():
        return f"bundle not found: {meta.get('bundle')}"
    return None


def _logits(meta: dict, items, n_threads) -> list[np.ndarray]:
    from ..prompting import official_prompt
    from .backends import BundleBackend

    be = BundleBackend(meta["bundle"], meta["llm"], meta["vision"], n_threads=n_threads, verify=False)
    return [be.logits(official_prompt(it), it) for it in items]


def fidelity(ref_meta: dict, metas: dict[str, dict], uids: set[str], k: int = 8,
             n_threads: int | None = None) -> dict[str, dict]:
    """``{run name: {kld_mean, kld_p99, top1, tokens, prompts} or {note}}`` for every run in ``metas``."""
    from ..quant.fidelity import kl_top1

    why = _usable(ref_meta)
    if why:
        return {name: {"note": f"reference: {why}"} for name in metas}
    try:
        items = pick_prompts(ref_meta["bench"], uids, k)
    except Exception as e:  # the bench moved or changed: report without KLD
        return {name: {"note": f"bench not readable: {e}"} for name in metas}
    if not items:
        return {name: {"note": "no common bench prompts"} for name in metas}
    out = {name: {"note": why} for name, meta in metas.items() if (why := _usable(meta))}
    if len(out) == len(metas):
        return out
    ref = _logits(ref_meta, items, n_threads)
    for name, meta in metas.items():
        if name in out:
            continue
        kls, agree = [], []
        for r, q in zip(ref, _logits(meta, items, n_threads)):
            if r.shape != q.shape:
                out[name] = {"note": "different vocabulary or prompt length than the reference"}
                break
            kl, a = kl_top1(r, q)
            kls.append(kl)
            agree.append(a)
        else:
            kl, ag = np.concatenate(kls), np.concatenate(agree)
            out[name] = {"kld_mean": float(kl.mean()), "kld_p99": float(np.quantile(kl, 0.99)),
                         "top1": float(ag.mean()), "tokens": int(len(kl)), "prompts": len(items)}
    return out
