"""MC choice accuracy per category of trained default models on held-out worlds (issue 14, ninth session).

Each option's whole answer (``<option text> <letter>``) is scored by its summed log-probability, teacher forced
(``default_model._mc_choice_accuracy``): the model's pick without the generation and the official letter rule,
so it is a few points off ``instit-edge eval`` but splits cleanly by category. With two models, a figure of the
second against the first.

    python docs/experiments/choice_by_category.py models/default models/candidate --eval out/world out/world99 \\
        --json /tmp/choice.json --png docs/default-model-stage2e.png
"""

import argparse
import json
from collections import defaultdict
from pathlib import Path

from instit_edge.data.bench import load_bench
from instit_edge.models.loading import load_model
from instit_edge.prompting import official_prompt
from instit_edge.train.default_model import TiedCodeRows, _mc_choice_accuracy
from instit_edge.train.instructions import Sample
from instit_edge.train.letter_heads import letter_answer


def by_category(model_dir: Path, worlds: list[Path]) -> dict:
    model, proc = load_model(model_dir)
    layout = json.loads((model_dir / "training.json").read_text())["codes"]["layout"]
    rows = TiedCodeRows(model, proc, layout)
    res = {}
    for w in worlds:
        groups = defaultdict(list)
        for it in load_bench(w / "bench", fmt="mc"):
            media = {"image": it.image_path} if it.split == "image" else {"frames": list(it.frame_paths)}
            s = Sample([(official_prompt(it), letter_answer(it.options[it.answer], it.answer))],
                       kind=f"{it.split}-mc", **media)
            groups[it.split].append(s)
            groups[f"{it.split}/{it.category}"].append(s)
        for k, ss in sorted(groups.items()):
            res[f"{w.name}/{k}"] = [round(_mc_choice_accuracy(model, rows, ss, proc.tokenizer), 3), len(ss)]
    return res


def plot(names: list[str], results: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = [k for k in results[0] if results[0][k][1] >= 3]
    x = np.arange(len(keys))
    fig, ax = plt.subplots(figsize=(13, 4.5))
    width = 0.8 / len(results)
    for i, (name, res) in enumerate(zip(names, results)):
        ax.bar(x + (i - (len(results) - 1) / 2) * width, [100 * res[k][0] for k in keys], width, label=name)
    ax.set_xticks(x, [f"{k} ({results[0][k][1]})" for k in keys], rotation=70, fontsize=7)
    ax.axhline(25, ls=":", c="grey", label="chance")
    ax.set(ylabel="MC choice accuracy %", ylim=(0, 105),
           title="held-out worlds, per split / category (number of questions)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--eval", nargs="+", type=Path, required=True)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--png", type=Path)
    a = ap.parse_args()
    results = [by_category(m, a.eval) for m in a.models]
    for m, r in zip(a.models, results):
        print(m, json.dumps(r))
    if a.json:
        a.json.write_text(json.dumps({str(m): r for m, r in zip(a.models, results)}, indent=2))
    if a.png and len(results) >= 2:
        plot([str(m) for m in a.models], results, a.png)
