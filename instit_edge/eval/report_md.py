"""Markdown rendering of the quantization accuracy report (from ``report.json``'s content)."""

from __future__ import annotations

MAX_FLIPS_SHOWN = 20


def _f(x, fmt: str = "{:.1f}", none: str = "n/a") -> str:
    return none if x is None else fmt.format(x)


def _ci(ci, sign: str = "") -> str:
    return "" if not ci else f"[{ci[0]:{sign}.1f}, {ci[1]:{sign}.1f}]"


def _short(text: str, n: int = 60) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= n else text[: n - 1] + "…"


def scores_table(rep: dict) -> list[str]:
    ref = rep["reference"]
    lines = ["| variant | split/format | accuracy | 95% CI | valid/total | strict MC | Δ vs ref | Δ 95% CI "
             "| McNemar p | flips r→w / w→r | agreement |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, run in rep["runs"].items():
        comp = rep["comparisons"].get(name, {}).get("groups", {})
        for g, s in run["scores"].items():
            c = comp.get(g)
            strict = s.get("strict")
            cells = [name + (" (ref)" if name == ref else ""), g, _f(s["accuracy"]), _ci(run["ci"].get(g)),
                     f"{s['valid']}/{s['total']}", _f(strict["accuracy"]) if strict else ""]
            if c:
                mc = c.get("mcnemar")
                cells += [_f(c["delta"], "{:+.1f}"), _ci(c["ci"], "+"), _f(mc["p"], "{:.3f}") if mc else "",
                          f"{len(c['flips']['right_to_wrong'])} / {len(c['flips']['wrong_to_right'])}",
                          f"{100 * c['agreement']:.0f}%"]
            else:
                cells += ["", "", "", "", ""]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def fidelity_table(rep: dict) -> list[str]:
    lines = ["| variant | backend | llm | vision | LLM MB | vision MB | KLD mean | KLD p99 | top-1 | s/question "
             "| decode tok/s | prefill tok/s | vision ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, run in rep["runs"].items():
        f = rep["comparisons"].get(name, {}).get("fidelity", {})
        t, sz = run.get("timings") or {}, run.get("sizes_mb") or {}
        if name == rep["reference"]:
            kl = ["reference", "", ""]
        elif "kld_mean" in f:
            kl = [f"{f['kld_mean']:.5f}", f"{f['kld_p99']:.4f}", f"{f['top1']:.3f}"]
        else:
            kl = [f.get("note", "not measured"), "", ""]
        lines.append("| " + " | ".join([
            name, str(run.get("backend")), str(run.get("llm")), str(run.get("vision")),
            _f(sz.get("llm", sz.get("checkpoint")), "{:.2f}"), _f(sz.get("vision"), "{:.2f}", ""), *kl,
            _f(t.get("total_s"), "{:.3f}"), _f(t.get("decode_tok_s"), "{:.0f}"), _f(t.get("prefill_tok_s"), "{:.0f}"),
            _f(t.get("vision_ms"), "{:.1f}", "")]) + " |")
    return lines


def category_table(rep: dict) -> list[str]:
    lines = ["| variant | split/format | category | accuracy | valid/total |", "|---|---|---|---|---|"]
    for name, run in rep["runs"].items():
        for g, s in run["scores"].items():
            for cat, c in s["categories"].items():
                lines.append(f"| {name} | {g} | {cat} | {_f(c['accuracy'])} | {c['valid']}/{c['total']} |")
    return lines


def flips_section(rep: dict) -> list[str]:
    lines = []
    for name, comp in rep["comparisons"].items():
        for g, c in comp["groups"].items():
            for kind, label in (("right_to_wrong", "right → wrong"), ("wrong_to_right", "wrong → right")):
                rows = c["flips"][kind]
                if not rows:
                    continue
                lines += ["", f"**{name}, {g}: {label} ({len(rows)})**", "",
                          "| question_id | ground truth | reference | variant |", "|---|---|---|---|"]
                for f in rows[:MAX_FLIPS_SHOWN]:
                    lines.append(f"| {f['question_id']} | {_short(f['ground_truth'])} | {_short(f['reference'])} "
                                 f"| {_short(f['variant'])} |")
                if len(rows) > MAX_FLIPS_SHOWN:
                    lines.append(f"| … {len(rows) - MAX_FLIPS_SHOWN} more in report.json | | | |")
    return lines or ["", "No answer flipped."]


def render(rep: dict) -> str:
    j = rep["judge"]
    judge = (f"open-ended answers scored by the `{j['name']}` judge"
             + (f" (`{j['model']}`, official judge prompt)" if j["official"] else
                " — **not the official GPT-4o score**: ID / timestamp agreement and word overlap, for comparing "
                "variants of one model"))
    b = rep["bootstrap"]
    gate = rep["gate"]
    if gate["max_drop"] is None:
        gate_line = "No gate (--max-drop not given)."
    elif gate["passed"]:
        gate_line = f"Gate passed: no variant loses more than {gate['max_drop']} points on any split/format."
    else:
        gate_line = f"**Gate failed** (max drop {gate['max_drop']} points): " + "; ".join(
            f"{f['run']} loses {f['drop']:.1f} on {f['group']}" for f in gate["failures"])
    lines = [
        "# Quantization accuracy report", "",
        f"Reference: `{rep['reference']}`. MC accuracy with the official Inst-IT rule (correct / valid), strict "
        f"reading beside it; {judge}. Deltas are variant minus reference on the questions both answered, with "
        f"paired bootstrap 95% intervals ({b['resamples']} resamples, seed {b['seed']}); McNemar: exact test on "
        "the discordant MC answers (invalid counts as wrong). Flips: MC right/wrong; OE judge score crossing 0.5. "
        "Agreement: same extracted letter (MC) / same text (OE). The gate compares accuracy per split/format.", "",
        gate_line, "", "## Scores", "", *scores_table(rep), "",
        "## Fidelity, size and speed", "",
        "Per-token KL divergence (reference ‖ variant) and top-1 agreement over the text positions of official "
        "bench prompts; timings are means per question from run.json.", "", *fidelity_table(rep), "",
        "![accuracy](accuracy.png) ![kld vs size](kld_vs_size.png)", "",
        "## Per category", "", *category_table(rep), "",
        "## Flipped answers", *flips_section(rep), "",
    ]
    return "\n".join(lines)
