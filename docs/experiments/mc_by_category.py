"""Per-category MC accuracy of several eval runs on one bench, and how often the answer's text was right.

The default model answers an MC question ``<option text> <letter>``; the official rule scores the letter. A
letter that is not the letter of the text the model wrote is the letter step failing, not the lookup. This
script splits the two: per category, the share scored right (the letter) and the share whose text is the
right option's text, for each run given. Made for stage 2f (tenth session): before it, positions had the
right text 89% of the time and the right letter 62% (a 692 + 151 question bench, seed 4242).

    python docs/experiments/mc_by_category.py --bench out/world4242/bench \
        --run 2e=runs/2e --run 2f=runs/2f --out docs/default-model-stage2f.png
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def by_category(run: Path, bench: Path) -> dict:
    """``{(split, category): [n, letter right, text right]}`` from a run's ``*_mc_inference.json``."""
    out = defaultdict(lambda: [0, 0, 0])
    for split in ("image", "video"):
        found = sorted(run.rglob(f"{split}_mc_inference.json"))
        if not found:
            continue
        gt = {q["question_id"]: q for q in json.loads((bench / f"{split}_multi_choices.json").read_text())}
        for r in json.loads(found[0].read_text()):
            q = gt[r["question_id"]]
            text, _, letter = r["model_prediction"].strip().rpartition(" ")
            c = out[(split, q["category"])]
            c[0] += 1
            c[1] += letter == q["answer"]
            c[2] += text == q["options"][q["answer"]]
    return dict(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", required=True, type=Path)
    ap.add_argument("--run", action="append", required=True, help="NAME=EVAL_RUN_DIR (repeatable)")
    ap.add_argument("--out", required=True, type=Path)
    a = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    runs = [(n, by_category(Path(d), a.bench)) for n, d in (x.split("=", 1) for x in a.run)]
    cats = sorted({k for _, r in runs for k in r}, key=lambda k: (k[0] != "image", k[1]))
    fig, ax = plt.subplots(figsize=(13, 4.2))
    w = 0.8 / len(runs)
    x = np.arange(len(cats))
    for i, (name, r) in enumerate(runs):
        n = np.array([max(r.get(k, [1, 0, 0])[0], 1) for k in cats])
        letter = np.array([r.get(k, [1, 0, 0])[1] for k in cats]) / n
        text = np.array([r.get(k, [1, 0, 0])[2] for k in cats]) / n
        bars = ax.bar(x + i * w, 100 * letter, w, label=f"{name}: scored (letter)")
        ax.bar(x + i * w, 100 * np.maximum(text - letter, 0), w, bottom=100 * letter, alpha=0.3,
               color=bars[0].get_facecolor(), hatch="//", label=f"{name}: text right, letter not")
        print(name, {f"{s}/{c}": f"{100 * lt:.1f} ({100 * tx:.1f} text)"
                     for (s, c), lt, tx in zip(cats, letter, text)})
    ax.axhline(25, ls=":", c="grey", label="chance")
    first = runs[0][1]
    ax.set_xticks(x + 0.4 - w / 2, [f"{s}\n{c} ({first.get((s, c), [0])[0]})" for s, c in cats], fontsize=8)
    ax.set(ylabel="%", ylim=(0, 105), title=f"MC per category on {a.bench} (questions per category in brackets)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out, dpi=100)
    print(a.out)


if __name__ == "__main__":
    main()
