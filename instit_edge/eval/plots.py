"""Report plots (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def accuracy_plot(runs: list[str], groups: list[str], acc: dict, ci: dict, path: Path) -> Path:
    """Grouped bars: accuracy of each run per split/format, with 95% bootstrap intervals."""
    import numpy as np

    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(groups) * max(1, len(runs)) / 2), 3.6))
    width = 0.8 / max(1, len(runs))
    x = np.arange(len(groups))
    for i, run in enumerate(runs):
        vals = [acc[run].get(g) for g in groups]
        ys = [v if v is not None else 0.0 for v in vals]
        lo = [max(0.0, (v or 0) - ci[run][g][0]) if ci[run].get(g) else 0.0 for g, v in zip(groups, vals)]
        hi = [max(0.0, ci[run][g][1] - (v or 0)) if ci[run].get(g) else 0.0 for g, v in zip(groups, vals)]
        ax.bar(x + (i - (len(runs) - 1) / 2) * width, ys, width, yerr=[lo, hi], capsize=3, label=run)
    ax.set_xticks(x, groups)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Inst-IT Bench accuracy per variant (95% bootstrap CI)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def kld_size_plot(points: list[tuple[str, float, float]], path: Path) -> Path:
    """KL divergence against the reference vs LLM file size, one labelled point per variant."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.0, 3.6))
    for name, size_mb, kld in points:
        ax.scatter([size_mb], [kld])
        ax.annotate(name, (size_mb, kld), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("LLM file size (MB)")
    ax.set_ylabel("mean per-token KLD vs reference")
    ax.set_title("Fidelity vs size")
    if not points:
        ax.text(0.5, 0.5, "no KLD measured", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
