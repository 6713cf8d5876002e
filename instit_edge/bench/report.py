"""The benchmark's outputs: ``report.md`` (Markdown tables), ``time_to_answer.png``, ``roofline.png``,
``compute_roofline.png`` and ``results.json``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .analysis import median_of
from .spec import TARGET_PRESET


def _fmt(s: dict | None, scale: float = 1.0, digits: int = 2) -> str:
    if not s:
        return "-"
    m = s["median"] * scale
    h = s["spread"] * scale / 2
    return f"{m:.{digits}f} ±{h:.{digits}f}" if s["n"] > 1 else f"{m:.{digits}f}"


def render_markdown(res: dict) -> str:
    m = res["machine"]
    cfg = res["config"]
    L = []
    L.append(f"# instit-edge benchmark ({res.get('preset') or res['build'].get('bundle')})\n")
    L.append(f"- date: {m['date']}; machine: {m.get('cpu', '?')} ({m.get('cpus')} CPUs visible, "
             f"{m.get('memory_gb', '?')} GB RAM, SIMD: {m.get('simd', '?')}), {m['platform']}")
    L.append(f"- llama-cpp-python {m.get('llama_cpp')}, onnxruntime {m.get('onnxruntime')}, torch {m.get('torch')}, "
             f"transformers {m.get('transformers')}, numpy {m.get('numpy')}, Python {m['python']}")
    a = res.get("architecture", {})
    L.append(f"- model: {a.get('arch')} {a.get('llm')} (hidden {a.get('text_hidden')}, vocab {a.get('vocab_size')}) + "
             f"{a.get('vision')} (hidden {a.get('vision_hidden')}, {a.get('vision_layers')} layers), random weights")
    inp = res.get("input", {})
    L.append(f"- input: {cfg['image_size'][0]}x{cfg['image_size'][1]} marked scene, official Inst-IT open-ended prompt "
             f"(\"{(inp.get('short_question') or '')[:70]}\"); {cfg['new_tokens']} new tokens forced (EOS ignored); "
             f"{cfg['threads']} threads; {cfg['warmup']} warm-up + {cfg['reps']} reps "
             f"(baseline {cfg.get('baseline_reps') or cfg['reps']}), each configuration in a fresh process")
    L.append(f"- load average at start / end: {m.get('loadavg_start')} / {m.get('loadavg_end')} "
             + ("(noisy: see below)" if res.get("noisy") else
                "(1-minute load at the start within 0.5 per core; the end includes the benchmark's own 2 threads)"))
    L.append("- cells: median ±half the range over the repetitions; TTFT and total include vision\n")
    if res.get("noisy"):
        L.append("**NOISY RUN: these figures are not measurements** (targets marked NOISY): "
                 + "; ".join(res["noisy"]) + ". Rerun on a quiet machine.\n")

    L.append("## Time to answer\n")
    L.append("| backend | LLM | vision | prompt tok | vision ms | prefill tok/s | TTFT s | decode tok/s | total s | "
             "peak RSS MB | speedup vs baseline | RSS vs baseline |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for run in res.get("runs", []):
        st = run["stats"]
        sp = run.get("speedup_vs_baseline")
        rr = run.get("rss_ratio_vs_baseline")
        L.append(f"| {'llama.cpp + ORT' if run['kind'] == 'bundle' else 'transformers'} | {run['llm']} | "
                 f"{run['vision']} | {int(st['prompt_tokens']['median']) if st['prompt_tokens'] else '-'} | "
                 f"{_fmt(st['vision_s'], 1000, 0)} | {_fmt(st['prefill_tok_s'], 1, 1)} | {_fmt(st['ttft_s'])} | "
                 f"{_fmt(st['decode_tok_s'], 1, 1)} | {_fmt(st['total_s'])} | {run['rss']['peak_mb']:.0f} | "
                 f"{f'{sp:.2f}x' if sp else '-'} | {f'{rr:.2f}' if rr else '-'} |")
    if res.get("baseline_ref"):
        L.append(f"\nBaseline for the ratios: transformers {res['baseline_ref']} in the same run (same image, prompt "
                 "and number of generated tokens). Warm-up: a short text prompt + the vision graph on one crop.")

    proj = res.get("projected_speedup") or {}
    if proj:
        L.append(f"\nSpeedup vs {res['baseline_ref']} at other answer lengths, projected from each row's measured "
                 "TTFT and decode rate (1 token: a multiple-choice letter; 128: the official OE cap):\n")
        L.append("| configuration | 1 token | " + f"{cfg['new_tokens']} tokens (measured length) | 128 tokens |")
        L.append("|---|---|---|---|")
        for k, v in proj.items():
            cells = [f"{v[n]:.2f}x" if v.get(n) else "-" for n in ("1", "64", "128")]
            L.append(f"| {k} | {' | '.join(cells)} |")
        if cfg["new_tokens"] != 64:
            L.append("\n(the middle column is projected at 64 tokens)")
    fol = [r for r in res.get("runs", []) if r.get("followup_stats")]
    if fol:
        L.append("\nFollow-up question about the same image (EdgeSession's caches: image embeddings by content hash, "
                 "KV prefix of system prompt + image rows + task pre-prompt; transformers re-runs everything):\n")
        L.append("| LLM | vision | reused / prompt tokens | TTFT s | total s | speedup vs baseline (cold) |")
        L.append("|---|---|---|---|---|---|")
        for r in fol:
            fs = r["followup_stats"]
            sp = r.get("followup_speedup_vs_baseline")
            L.append(f"| {r['llm']} | {r['vision']} | {fs['reused']['median']:.0f} / {fs['prompt_tokens']['median']:.0f} | "
                     f"{_fmt(fs['ttft_s'])} | {_fmt(fs['total_s'])} | {f'{sp:.1f}x' if sp else '-'} |")
    pf = [r for r in res.get("runs", []) if r.get("prefetched_stats")]
    if pf:
        L.append("\nQuestion about a prefetched frame (`EdgeSession.prefetch`: vision rows and the KV of everything "
                 "before the question computed when the frame arrived, not timed in the TTFT):\n")
        L.append("| LLM | vision | prefetch s | prefetched / prompt tokens | TTFT s | total s |")
        L.append("|---|---|---|---|---|---|")
        for r in pf:
            ps = r["prefetched_stats"]
            L.append(f"| {r['llm']} | {r['vision']} | {_fmt(ps['prefetch_s'])} | {ps['reused']['median']:.0f} / "
                     f"{ps['prompt_tokens']['median']:.0f} | {_fmt(ps['ttft_s'])} | {_fmt(ps['total_s'])} |")

    bud = res.get("budget") or {}
    if bud.get("budgets"):
        L.append(f"\n## Image token budget (`--max-tiles N`, {bud['llm']} + {bud['vision']} vision)\n")
        L.append(f"First answer token against the full-token run, over {bud['questions']} question(s) about the "
                 "scene (KL divergence of the distributions, share of identical top-1 tokens); prefill is cold.\n")
        L.append("| max tiles | image rows | prefill s | KLD vs full | top-1 agreement |")
        L.append("|---|---|---|---|---|")
        for e in bud["budgets"]:
            L.append(f"| {'all' if e['max_tiles'] is None else e['max_tiles']} | {e['image_rows']} | "
                     f"{e['prefill_s']:.2f} | {e['kld_vs_full']:.4f} | {e['top1_agreement']:.0%} |")

    prof = res.get("profile") or {}
    if prof.get("kinds"):
        L.append(f"\n## Where the prefill time goes ({prof['llm']}, {prof['prompt_tokens']} tokens, "
                 f"{prof['tok_s']:.0f} tok/s)\n")
        L.append("`perf record -e cpu-clock` sampling only while llama.cpp prefills (vision, load and start-up "
                 "excluded); shares of the samples, both threads together.\n")
        L.append("| kind of work | share |")
        L.append("|---|---|")
        for k, v in prof["kinds"].items():
            L.append(f"| {k} | {v:.1f}% |")
        L.append("\n| symbol | library | kind | share |")
        L.append("|---|---|---|---|")
        for t in prof.get("top", []):
            note = f" ({t['note']})" if t.get("note") else ""
            L.append(f"| `{t['symbol'][:70]}`{note} | {t['dso']} | {t['kind']} | {t['share']:.1f}% |")

    roof = res.get("roofline", {})
    L.append("\n## Roofline (decode is bound by the weight bytes read per token)\n")
    bw = res.get("bandwidth") or {}
    if bw:
        L.append(f"Measured read bandwidth ({bw.get('method')}, {bw.get('array_mb', 0):.0f} MiB): "
                 + ", ".join(f"{k} thread(s) {v['best_gb_s']:.1f} GB/s (median {v['median']:.1f})"
                             for k, v in bw.get("threads", {}).items())
                 + f". The bound uses {roof.get('threads')} thread(s).\n")
    L.append("| LLM | file MB | weights read / token MB | KV read / token MB | bound tok/s | decode tok/s | "
             "fraction of bound | achieved GB/s |")
    L.append("|---|---|---|---|---|---|---|---|")
    for v, e in roof.get("variants", {}).items():
        fr = e.get("fraction")
        L.append(f"| {v} | {e['file_bytes'] / 1e6:.0f} | {e['weights_bytes_per_token'] / 1e6:.1f} | "
                 f"{e['kv_bytes_per_token'] / 1e6:.1f} | {e.get('bound_tok_s', 0):.1f} | "
                 f"{e['decode_tok_s'] or 0:.1f} | {f'{fr:.0%}' if fr else '-'} | {e.get('achieved_gb_s') or 0:.1f} |")
    L.append("\nWeights read per token: every GGUF tensor except `token_embd` (a row lookup), `output.weight` "
             "included. KV: F16 K and V at the mean context length of the generation (not in the bound).")
    comp = res.get("compute") or {}
    peaks = roof.get("compute_gflop_s") or {}
    if comp:
        L.append("\n## Compute roofline (prefill is bound by the GEMM peak)\n")
        L.append(f"Measured GEMM peaks ({comp.get('method')}, shape {comp.get('shape')}, {comp.get('threads')} "
                 "thread(s)): " + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items() if v) + " GFLOP/s.\n")
        L.append("| LLM | prefill tok/s | prefill GFLOP/s | of fp32 peak | of bf16 peak | of int8 peak |")
        L.append("|---|---|---|---|---|---|")
        for v, e in roof.get("variants", {}).items():
            cells = ["n/a" if k != "fp32" and (peaks.get(k) or 0) < (peaks.get("fp32") or 0)
                     else f"{e[f'prefill_fraction_{k}']:.0%}" if e.get(f"prefill_fraction_{k}") else "-"
                     for k in ("fp32", "bf16", "int8")]
            L.append(f"| {v}{' (auto)' if v == res.get('auto_llm') else ''} | {e.get('prefill_tok_s') or 0:.0f} | "
                     f"{e.get('prefill_gflop_s') or 0:.0f} | " + " | ".join(cells) + " |")
        slow = [k for k in ("bf16", "int8") if peaks.get(k) and peaks.get("fp32") and peaks[k] < peaks["fp32"]]
        if slow:
            L.append(f"\nn/a: torch's {' and '.join(slow)} GEMM ran slower than fp32 here (no such units on this CPU, "
                     "a fallback path), so a fraction of it means nothing; the prefill target is held to the "
                     f"{roof.get('compute_reference', 'fp32')} peak.")
        L.append("\nPrefill FLOPs per prompt token: 2 x the weights it multiplies (`output.weight` included, the "
                 "attention's context-dependent part not counted, so the fractions are slight underestimates).")

    vis = res.get("vision") or {}
    if vis:
        L.append("\n## Vision: our ONNX tower vs llama.cpp's libmtmd\n")
        L.append("| path | ms (preprocess + tower + packing) | tower ms | crops | rows | cosine vs fp32 (mean / min row) |")
        L.append("|---|---|---|---|---|---|")
        for v, e in vis.get("onnx", {}).items():
            c = e.get("cosine_vs_fp32")
            cos = f"{c['mean']:.5f} / {c['min']:.5f}" if c else "-"
            L.append(f"| ONNX Runtime {v} | {_fmt(e['total_s'], 1000, 0)} | {_fmt(e['tower_s'], 1000, 0)} | "
                     f"{e['crops']} | {e['rows']} | {cos} |")
        mt = vis.get("mtmd") or {}
        if mt.get("total_s"):
            L.append(f"| libmtmd (mmproj.f16.gguf) | {_fmt(mt['total_s'], 1000, 0)} | - | - | {mt['rows']} | "
                     "- (different rows: no unpadding / newline) |")
        elif mt.get("skipped"):
            L.append(f"\nlibmtmd: skipped ({mt['skipped']})")
    mk = res.get("marker")
    if mk is not None:
        L.append("\n## Marker\n")
        if mk.get("skipped"):
            L.append(f"skipped: {mk['skipped']}")
        else:
            L.append(f"{mk['size']}, style {mk['style']}, synthetic clip with 4 moving objects\n")
            L.append("| detector | fps | ms / frame | detect ms | track ms | render ms |")
            L.append("|---|---|---|---|---|---|")
            for d, e in mk["detectors"].items():
                if e.get("skipped"):
                    L.append(f"| {d} | skipped: {e['skipped']} | | | | |")
                else:
                    L.append(f"| {d} | {e['fps']:.0f} | {e['ms_per_frame']:.1f} | {e.get('detect_ms', 0):.2f} | "
                             f"{e.get('track_ms', 0):.2f} | {e.get('render_ms', 0):.2f} |")

    L.append("\n## Targets\n")
    if not res.get("targets_apply"):
        L.append(f"(defined for the {TARGET_PRESET} preset at 2 threads: information only here)\n")
    for t in res.get("target_results", []):
        if t["status"] == "N/A":
            L.append(f"- N/A {t['target']}")
            continue
        digits = 4 if "cosine" in t["target"] else 3
        how = f"{t['value']:.{digits}f} (goal {t['op']} {t['goal']})"
        if t["status"] == "PASS":
            by = f"margin {t['by']:.2f}x"
        elif t["op"] == ">=":
            by = f"short by {(1 - t['by']) * 100:.1f}% (reaches {t['by']:.3f} of the goal)"
        else:
            by = f"over by {(1 / t['by'] - 1) * 100:.1f}% ({t['value'] / t['goal']:.3f}x the limit)"
        L.append(f"- **{t['status']}** {t['target']}: {how}, {by}; {t['detail']}")

    L.append("\n## Where the time goes (share of time-to-answer, medians)\n")
    L.append("| configuration | vision | prefill | decode |")
    L.append("|---|---|---|---|")
    for k, v in res.get("time_share", {}).items():
        L.append(f"| {k} | {v['vision_s']:.0%} | {v['prefill_s']:.0%} | {v['decode_s']:.0%} |")

    bld = res.get("build", {})
    L.append("\n## Run\n")
    L.append(f"- build: {'cached' if bld.get('cached') else ', '.join(bld.get('built', []))} "
             + " ".join(f"{k}={v:.0f}" for k, v in (bld.get("timings") or {}).items()))
    L.append("- stages (s): " + ", ".join(f"{k} {v:.1f}" for k, v in res.get("stage_s", {}).items()))
    L.append(f"- total wall time: {res.get('wall_s')} s")
    for n in res.get("notes", []):
        L.append(f"- note: {n}")
    for e in res.get("errors", []):
        L.append(f"- error: {e}")
    return "\n".join(L) + "\n"


def render_plots(res: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    runs = res.get("runs", [])
    if runs:
        labels = [f"{'tf ' if r['kind'] == 'transformers' else ''}{r['llm']} / {r['vision']}" for r in runs]
        parts = [("vision_s", "vision", "#8da0cb"), ("prefill_s", "prefill", "#fc8d62"), ("decode_s", "decode", "#66c2a5")]
        fig, ax = plt.subplots(figsize=(9, 0.55 * len(runs) + 1.8))
        left = np.zeros(len(runs))
        for key, name, col in parts:
            vals = np.array([median_of(r, key) or 0 for r in runs])
            ax.barh(labels, vals, left=left, label=name, color=col)
            left += vals
        for i, r in enumerate(runs):
            sp = r.get("speedup_vs_baseline")
            ax.text(left[i], i, f" {left[i]:.2f} s" + (f" ({sp:.1f}x)" if sp else ""), va="center", fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(f"time to answer, s ({res['config']['new_tokens']} new tokens, {res['config']['threads']} threads)")
        ax.set_title("time to answer: bundle runtime vs transformers fp32 (medians)")
        ax.set_xlim(0, left.max() * 1.3 if left.max() > 0 else 1)
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "time_to_answer.png", dpi=110)
        plt.close(fig)
        files.append("time_to_answer.png")
    roof = res.get("roofline", {}).get("variants", {})
    if roof:
        names = list(roof)
        x = np.arange(len(names))
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.bar(x - 0.2, [roof[n].get("bound_tok_s", 0) for n in names], 0.4, label="bandwidth bound", color="#cccccc")
        ax.bar(x + 0.2, [roof[n]["decode_tok_s"] or 0 for n in names], 0.4, label="measured decode", color="#1b9e77")
        for i, n in enumerate(names):
            fr = roof[n].get("fraction")
            if fr:
                ax.text(i + 0.2, roof[n]["decode_tok_s"], f"{fr:.0%}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, names)
        ax.set_ylabel("tokens / s")
        ax.set_title(f"decode vs memory roofline ({res['roofline'].get('bandwidth_gb_s') or 0:.1f} GB/s, "
                     f"{res['roofline'].get('threads')} threads)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "roofline.png", dpi=110)
        plt.close(fig)
        files.append("roofline.png")
    peaks = res.get("roofline", {}).get("compute_gflop_s") or {}
    if roof and any(peaks.values()):
        names = list(roof)
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.bar(np.arange(len(names)), [roof[n].get("prefill_gflop_s") or 0 for n in names], 0.5,
               label="measured prefill", color="#7570b3")
        for (k, peak), c in zip(peaks.items(), ("#999999", "#d95f02", "#1b9e77")):
            if peak:
                ax.axhline(peak, ls="--", c=c, lw=1, label=f"{k} GEMM peak {peak:.0f}")
        ax.set_xticks(np.arange(len(names)), names)
        ax.set_ylabel("GFLOP/s")
        ax.set_title(f"prefill vs compute roofline ({res['roofline'].get('threads')} threads)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "compute_roofline.png", dpi=110)
        plt.close(fig)
        files.append("compute_roofline.png")
    return files


def write_reports(res: dict, out: Path) -> None:
    from ..atomic import write_json

    out.mkdir(parents=True, exist_ok=True)
    res["plots"] = render_plots(res, out)
    write_json(out / "results.json", res)
    (out / "report.md").write_text(render_markdown(res))
