"""Paired statistics for comparing a variant with the reference on the same questions.

Accuracies are ratios (score sum over valid items), so the bootstrap
resamples questions and recomputes both ratios on each resample; the same
resampled questions serve both runs (paired). Fixed seed: reports are
reproducible.
"""

from __future__ import annotations

import numpy as np

N_BOOT = 1000
SEED = 0


def _ratio(score: np.ndarray, valid: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """100 * sum(score * valid) / sum(valid) for each row of resample indices (nan when no valid item)."""
    v = valid[idx].sum(1)
    s = (score * valid)[idx].sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(v > 0, 100.0 * s / np.maximum(v, 1), np.nan)


def _resamples(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def accuracy_ci(score, valid, n_boot: int = N_BOOT, seed: int = SEED) -> tuple[float, float] | None:
    """Percentile 95% interval of one run's accuracy."""
    score, valid = np.asarray(score, float), np.asarray(valid, bool)
    if len(score) == 0 or not valid.any():
        return None
    acc = _ratio(score, valid, _resamples(len(score), n_boot, seed))
    acc = acc[np.isfinite(acc)]
    return float(np.percentile(acc, 2.5)), float(np.percentile(acc, 97.5))


def paired_delta(ref_score, ref_valid, var_score, var_valid, n_boot: int = N_BOOT, seed: int = SEED) -> dict:
    """Variant minus reference accuracy (points) with a paired bootstrap 95% interval."""
    rs, rv = np.asarray(ref_score, float), np.asarray(ref_valid, bool)
    vs, vv = np.asarray(var_score, float), np.asarray(var_valid, bool)
    n = len(rs)
    full = np.arange(n)[None]
    point = float((_ratio(vs, vv, full) - _ratio(rs, rv, full))[0]) if n else float("nan")
    if n == 0 or not rv.any() or not vv.any():
        return {"delta": point if np.isfinite(point) else None, "ci": None, "n": n}
    idx = _resamples(n, n_boot, seed)
    d = _ratio(vs, vv, idx) - _ratio(rs, rv, idx)
    d = d[np.isfinite(d)]
    return {"delta": point, "ci": [float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))], "n": n}


def mcnemar(ref_correct, var_correct) -> dict:
    """Exact McNemar test: a two-sided binomial test on the discordant pairs.

    ``b``: right in the reference, wrong in the variant; ``c``: the reverse
    (an invalid answer counts as wrong).
    """
    from scipy.stats import binomtest

    r, v = np.asarray(ref_correct, bool), np.asarray(var_correct, bool)
    b, c = int((r & ~v).sum()), int((~r & v).sum())
    p = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)
    return {"b": b, "c": c, "p": p}
