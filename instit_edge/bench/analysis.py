"""From the children's raw repetitions to the numbers the report shows: summaries, the roofline, ratios
against the transformers baseline, projected speedups, the noise check and the targets."""

from __future__ import annotations

import os
import statistics

from .measure import gguf_weight_bytes, summarize
from .spec import BASELINE_BF16, BASELINE_REF, TARGET_PRESET, TARGETS, BenchConfig

MAX_LOAD_PER_CORE = 0.5  # load average per visible core at the start above which timings are not trusted
MAX_SPREAD = 0.20  # (max - min) / median of a configuration's repetitions above which it is noisy


def compute_reference(peaks: dict) -> str:
    """The GEMM peak prefill is held to: ``bf16``, or ``fp32`` where the measured bf16 peak is below it (no bf16
    units: torch falls back to a slow path)."""
    bf16, fp32 = peaks.get("bf16") or 0, peaks.get("fp32") or 0
    return "bf16" if bf16 >= fp32 else "fp32"


def noise_reasons(res: dict) -> list[str]:
    """Why the timings of this run cannot be reported as measurements (empty when the machine was quiet)."""
    out = []
    m = res.get("machine", {})
    load, cpus = m.get("loadavg_start"), m.get("cpus") or os.cpu_count() or 1
    if load and load[0] / cpus > MAX_LOAD_PER_CORE:
        out.append(f"load average {load[0]:.2f} on {cpus} cores at the start (> {MAX_LOAD_PER_CORE} per core)")
    for run in res.get("runs", []):
        s = summarize([x.get("total_s") for x in run.get("reps", [])])
        if s and s["n"] > 1 and s["median"] > 0 and s["spread"] / s["median"] > MAX_SPREAD:
            out.append(f"{run.get('llm')}/{run.get('vision')}: repetitions spread {100 * s['spread'] / s['median']:.0f}% "
                       f"of the median (> {100 * MAX_SPREAD:.0f}%)")
    return out



def median_of(run: dict, key: str):
    s = summarize([x.get(key) for x in run.get("reps", [])])
    return s["median"] if s else None


def analyse(res: dict, b, variants: list, cfg: BenchConfig) -> None:
    runs = res["runs"]
    for run in runs:
        run["stats"] = {k: summarize([x.get(k) for x in run["reps"]])
                        for k in ("vision_s", "prefill_s", "decode_s", "ttft_s", "total_s", "prefill_tok_s",
                                  "decode_tok_s", "prompt_tokens")}
    # roofline
    bw = res.get("bandwidth") or {}
    th = bw.get("threads", {})
    bw_n = (th.get(str(cfg.threads)) or th.get("1") or {}).get("best_gb_s")
    bw_1 = (th.get("1") or {}).get("best_gb_s")
    roof = {}
    for v in variants:
        try:
            wb = gguf_weight_bytes(b.path("llm", v))
        except Exception as e:  # noqa: BLE001 - no gguf reader: skip the roofline for this variant
            res["notes"].append(f"roofline: cannot read {v} tensors ({e})")
            continue
        run = next((x for x in runs if x["kind"] == "bundle" and x["llm"] == v), None)
        dec = median_of(run, "decode_tok_s") if run else None
        n_ctx = (median_of(run, "prompt_tokens") or 0) + cfg.new_tokens / 2 if run else 0
        kv = 0
        if wb.get("n_layer") and wb.get("n_head_kv") and wb.get("head_dim"):
            kv = int(n_ctx * wb["n_layer"] * 2 * wb["n_head_kv"] * wb["head_dim"] * 2)  # F16 K and V
        entry = {"weights_bytes_per_token": wb["bytes_per_token"], "params_per_token": wb.get("params_per_token"),
                 "kv_bytes_per_token": kv,
                 "file_bytes": wb["file_bytes"], "by_type": wb["by_type"], "decode_tok_s": dec}
        if bw_n:
            entry["bound_tok_s"] = bw_n * 1e9 / wb["bytes_per_token"]
            entry["bound_tok_s_with_kv"] = bw_n * 1e9 / (wb["bytes_per_token"] + kv)
            entry["fraction"] = dec / entry["bound_tok_s"] if dec else None
            entry["fraction_with_kv"] = dec / entry["bound_tok_s_with_kv"] if dec else None
            entry["achieved_gb_s"] = dec * wb["bytes_per_token"] / 1e9 if dec else None
        roof[v] = entry
    # compute roofline: prefill FLOPs per prompt token ~ 2 x the weights it multiplies, against the GEMM peaks
    comp = res.get("compute") or {}
    peaks = {k: (comp.get(k) or {}).get("best_gflop_s") for k in ("fp32", "bf16", "int8")}
    for v, entry in roof.items():
        run = next((x for x in runs if x["kind"] == "bundle" and x["llm"] == v), None)
        pre = median_of(run, "prefill_tok_s") if run else None
        params = entry.get("params_per_token")
        entry["prefill_tok_s"] = pre
        entry["prefill_gflop_s"] = pre * 2 * params / 1e9 if pre and params else None
        for k, peak in peaks.items():
            entry[f"prefill_fraction_{k}"] = entry["prefill_gflop_s"] / peak if peak and entry["prefill_gflop_s"] else None
    res["roofline"] = {"bandwidth_gb_s": bw_n, "bandwidth_1thread_gb_s": bw_1, "threads": cfg.threads,
                       "compute_gflop_s": peaks, "variants": roof}

    # ratios against the baseline
    base = next((x for x in runs if x["kind"] == "transformers" and x["attn"] == BASELINE_REF), None)
    base = base or next((x for x in runs if x["kind"] == "transformers"), None)
    res["baseline_ref"] = base["llm"] if base else None
    base16 = next((x for x in runs if x["kind"] == "transformers" and x["attn"] == BASELINE_BF16), None)
    res["baseline_bf16"] = base16["llm"] if base16 else None
    for run in runs:
        if base is None:
            break
        bt, rt = median_of(base, "total_s"), median_of(run, "total_s")
        run["speedup_vs_baseline"] = bt / rt if bt and rt else None
        b16 = median_of(base16, "total_s") if base16 else None
        run["speedup_vs_bf16"] = b16 / rt if b16 and rt else None
        run["rss_ratio_vs_baseline"] = run["rss"]["peak_mb"] / base["rss"]["peak_mb"]
        run["decode_speedup_vs_baseline"] = (median_of(run, "decode_tok_s") / median_of(base, "decode_tok_s")
                                             if median_of(base, "decode_tok_s") else None)

    # time-to-answer at other generation lengths, projected from the measured TTFT and decode rate
    # (an MC answer is ~1 token, an OE answer up to 128)
    proj = {}
    if base:
        def at(run, n):
            ttft, dec = median_of(run, "ttft_s"), median_of(run, "decode_tok_s")
            return ttft + (n - 1) / dec if ttft and dec else None

        for run in runs:
            if run["kind"] == "bundle":
                proj[f"{run['llm']}/{run['vision']}"] = {
                    str(n): (at(base, n) / at(run, n) if at(run, n) and at(base, n) else None) for n in (1, 64, 128)}
    res["projected_speedup"] = proj
    for run in runs:
        if run.get("followup"):
            run["followup_stats"] = {k: summarize([x.get(k) for x in run["followup"]])
                                     for k in ("ttft_s", "total_s", "prefill_s", "reused", "prompt_tokens")}
            if base and median_of(base, "total_s"):
                run["followup_speedup_vs_baseline"] = median_of(base, "total_s") / run["followup_stats"]["total_s"]["median"]
        if run.get("prefetched"):
            run["prefetched_stats"] = {k: summarize([x.get(k) for x in run["prefetched"]])
                                       for k in ("prefetch_s", "ttft_s", "total_s", "reused", "prompt_tokens")}

    # a noisy machine is detected, not reported: load at the start and the spread of the repetitions
    noisy = noise_reasons(res)
    res["noisy"] = noisy

    # targets
    tg: list[dict] = []
    applies = res.get("preset") == TARGET_PRESET and cfg.threads == 2
    deploy = "q4_k_m" if "q4_k_m" in variants else None

    def add(name, value, target, higher_better, detail=""):
        if value is None:
            tg.append({"target": name, "value": None, "goal": target, "status": "N/A", "detail": detail})
            return
        ok = value >= target if higher_better else value <= target
        # by: the factor the value is better (>1) or worse (<1) than the goal
        by = (value / target) if higher_better else (target / value if value else float("inf"))
        tg.append({"target": name, "value": value, "goal": target, "op": ">=" if higher_better else "<=",
                   "status": ("NOISY" if noisy else "PASS" if ok else "MISS"), "by": by, "detail": detail})

    if deploy and base:
        for run in runs:
            if run["kind"] == "bundle" and run["llm"] == deploy:
                add(f"{deploy} + {run['vision']} vision time-to-answer speedup vs transformers {base['llm']}",
                    run.get("speedup_vs_baseline"), TARGETS["speedup"], True,
                    f"{median_of(run, 'total_s'):.2f} s vs {median_of(base, 'total_s'):.2f} s")
                if base16:
                    add(f"{deploy} + {run['vision']} vision time-to-answer speedup vs transformers {base16['llm']}",
                        run.get("speedup_vs_bf16"), TARGETS["speedup_bf16"], True,
                        f"{median_of(run, 'total_s'):.2f} s vs {median_of(base16, 'total_s'):.2f} s")
                add(f"{deploy} + {run['vision']} vision peak RSS ratio vs transformers {base['llm']}",
                    run.get("rss_ratio_vs_baseline"), TARGETS["rss_ratio"], False,
                    f"{run['rss']['peak_mb']:.0f} MB vs {base['rss']['peak_mb']:.0f} MB")
    for v, e in roof.items():
        add(f"{v} decode fraction of the bandwidth bound", e.get("fraction"), TARGETS["roofline"], True,
            f"{e['decode_tok_s'] or 0:.1f} tok/s of {e.get('bound_tok_s', 0):.1f} bound"
            if e.get("decode_tok_s") else "")
    try:  # the variant `--llm auto` would load on this machine
        from ..runtime.auto import choose

        auto = choose(b, "llm")[0]
    except Exception:  # noqa: BLE001 - no auto choice: the deploy variant
        auto = deploy
    res["auto_llm"] = auto
    if auto in roof:
        e = roof[auto]
        # the bf16 peak, unless the CPU has no bf16 units: then torch's bf16 GEMM runs a slow fallback (1 GFLOP/s
        # on an AVX2-only EPYC against 88 in fp32) and a fraction of it means nothing, so the fp32 peak is the bar
        ref = compute_reference(peaks)
        res["roofline"]["compute_reference"] = ref
        add(f"{auto} (auto) prefill fraction of the {ref} GEMM peak", e.get(f"prefill_fraction_{ref}"),
            TARGETS["prefill_compute"], True,
            f"{e['prefill_gflop_s']:.0f} of {peaks[ref]:.0f} GFLOP/s" if e.get("prefill_gflop_s") and peaks[ref]
            else "")
    # prefetched-frame TTFT for the deploy variant and, where it differs, the one --llm auto loads
    for v, label in ((deploy, deploy), (auto, f"{auto} (auto)")) if auto != deploy else ((deploy, deploy),):
        for run in runs:
            if run["kind"] == "bundle" and run["llm"] == v and run.get("prefetched_stats"):
                ps = run["prefetched_stats"]
                add(f"{label} + {run['vision']} vision time to first token about a prefetched frame (s)",
                    ps["ttft_s"]["median"], TARGETS["prefetch_ttft_s"], False,
                    f"{ps['reused']['median']:.0f} of {ps['prompt_tokens']['median']:.0f} prompt tokens "
                    f"prefetched in {ps['prefetch_s']['median']:.2f} s")
    vis = (res.get("vision") or {}).get("onnx", {})
    if "fp32" in vis and "int8" in vis:
        s = vis["fp32"]["total_s"]["median"] / vis["int8"]["total_s"]["median"]
        add("int8 vision speedup vs fp32", s, TARGETS["vision_speedup"], True,
            f"{1000 * vis['int8']['total_s']['median']:.0f} ms vs {1000 * vis['fp32']['total_s']['median']:.0f} ms")
        cos = vis["int8"].get("cosine_vs_fp32", {}).get("mean")
        add("int8 vision cosine to fp32 (mean over rows)", cos, TARGETS["vision_cosine"], True,
            f"min row {vis['int8'].get('cosine_vs_fp32', {}).get('min', float('nan')):.4f}")
    res["target_results"] = tg
    res["targets_apply"] = applies
    if not applies:
        res["notes"].append(f"the issue's targets are defined for the {TARGET_PRESET} preset at 2 threads; "
                            "PASS/MISS here is for information only")

    # where the time goes (deploy configuration and baseline)
    where = {}
    for run in runs:
        if run.get("reps"):  # median over the repetitions of each stage's share of that repetition's total
            where[f"{run['llm']}/{run['vision']}"] = {
                k: statistics.median([x[k] / x["total_s"] for x in run["reps"]]) for k in
                ("vision_s", "prefill_s", "decode_s")}
    res["time_share"] = where
