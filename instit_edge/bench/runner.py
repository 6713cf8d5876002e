"""The parent of a benchmark run: builds or finds the bundle, runs every configuration in a child process
(:mod:`instit_edge.bench.children`), then hands the results to the analysis and the reports. numpy only; no torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from ..errors import InstitError
from .analysis import analyse
from .measure import machine_info
from .report import write_reports
from .spec import TARGETS, BenchConfig


class _Runner:
    def __init__(self, cfg: BenchConfig, log):
        self.cfg, self.log = cfg, log
        self.work = Path(tempfile.mkdtemp(prefix="instit-bench-"))
        self.stage_s: dict[str, float] = {}
        self.errors: list[str] = []

    def run(self, task: str, args: dict, label: str, cwd: Path | None = None, timeout: int | None = None,
            wrap: list[str] | None = None):
        """Run one child (under the ``wrap`` command prefix, e.g. ``perf record``); return its JSON, or None (the
        error is recorded) when it fails."""
        ap, op = self.work / f"{label}.args.json", self.work / f"{label}.out.json"
        ap.write_text(json.dumps(args, default=str))
        env = dict(os.environ)
        th = str(self.cfg.threads)
        env.update(OMP_NUM_THREADS=th, MKL_NUM_THREADS=th, OPENBLAS_NUM_THREADS=th, TOKENIZERS_PARALLELISM="false",
                   GPTQMODEL_CPU_WORKERS=th, PYTHONWARNINGS="ignore")
        repo = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.log(f"[bench] {label} ...")
        t = time.perf_counter()
        try:
            p = subprocess.run([*(wrap or []), sys.executable, "-m", "instit_edge.bench.children", task, str(ap), str(op)],
                               check=False,
                               cwd=str(cwd) if cwd else None, env=env, capture_output=True, text=True,
                               timeout=timeout or self.cfg.child_timeout_s)
            rc, err = p.returncode, p.stderr
        except subprocess.TimeoutExpired:
            rc, err = -1, f"timed out after {timeout or self.cfg.child_timeout_s} s"
        dt = time.perf_counter() - t
        self.stage_s[label] = round(dt, 2)
        if rc != 0 or not op.exists():
            tail = [ln for ln in (err or "").strip().splitlines() if ln.strip()][-1:] or ["(no output)"]
            msg = f"{label}: failed (exit {rc}): {tail[0][:300]}"
            self.errors.append(msg)
            self.log(f"[bench] {msg}")
            return None
        self.log(f"[bench] {label} done in {dt:.1f} s")
        return json.loads(op.read_text())


def _merge_round(prev: dict | None, run: dict, k: int) -> dict:
    """Pool one configuration's results over the rounds: repetitions and follow-ups appended, peak RSS the
    highest, load and warm-up times from the first round."""
    run["rounds"] = [k + 1]
    if prev is None:
        return run
    prev["reps"] += run.get("reps", [])
    prev["followup"] = prev.get("followup", []) + run.get("followup", [])
    prev["prefetched"] = prev.get("prefetched", []) + run.get("prefetched", [])
    prev["rounds"] += [k + 1]
    if run.get("rss", {}).get("peak_mb", 0) > prev.get("rss", {}).get("peak_mb", 0):
        prev["rss"] = run["rss"]
    return prev


def _profile_prefill(r: "_Runner", common: dict, llm: str, vision: str, notes: list) -> dict | None:
    """The ``prefill`` child under ``perf record``, sampling only while it prefills; the samples grouped by kind."""
    from . import profile

    perf = profile.perf_available()
    if perf is None:
        notes.append("no prefill profile: linux-perf is not installed or cannot sample here")
        return None
    d = r.work / "perf"
    d.mkdir(exist_ok=True)
    ctl, ack, data = d / "ctl.fifo", d / "ack.fifo", d / "perf.data"
    for f in (ctl, ack):
        if not f.exists():
            os.mkfifo(f)
    x = r.run("prefill", {**common, "llm": llm, "vision": vision, "reps": 3, "ctl": str(ctl), "ack": str(ack)},
              f"profile-{llm}", wrap=profile.record_command(perf, data, ctl, ack))
    if x is None:
        return None
    try:
        x.update(profile.report(perf, data))
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        notes.append(f"prefill profile: {e}")
        return None
    return x


def _is_preset(target: str) -> bool:
    from ..models.tiny import PRESETS

    return target in PRESETS and not Path(target).exists()


def run_benchmark(cfg: BenchConfig, log=None) -> dict:
    """Run the whole benchmark; write results.json, report.md and the plots under ``cfg.out``; return the results."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    t_start = time.perf_counter()
    out = cfg.out.resolve()  # children run in other working directories: absolute paths only
    out.mkdir(parents=True, exist_ok=True)
    r = _Runner(cfg, log)
    res: dict = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
                 "machine": machine_info(), "targets": TARGETS, "notes": []}
    notes = res["notes"]

    # ---- model + bundle
    if _is_preset(cfg.target):
        models = out / "models" / cfg.target
        models.mkdir(parents=True, exist_ok=True)
        built = r.run("build", {"models": str(models), "preset": cfg.target, "variants": cfg.variants,
                                "vision": cfg.vision, "threads": cfg.threads}, "build", cwd=models, timeout=3600)
        if built is None:
            raise InstitError(f"could not build the {cfg.target} preset: {r.errors[-1]}")
        bundle_dir, checkpoint = Path(built["bundle"]), built["checkpoint"]
        res["build"] = built
        res["preset"] = cfg.target
    else:
        from ..bundle import Bundle

        bundle_dir = Path(cfg.target).resolve()
        if not (bundle_dir / "bundle.json").exists():
            raise InstitError(f"{bundle_dir} is neither a bundle directory nor a preset (tiny, edge)")
        checkpoint = Bundle.load(bundle_dir, verify=False).manifest.get("source", {}).get("model")
        if checkpoint and Path(checkpoint).exists():
            checkpoint = str(Path(checkpoint).resolve())
        res["preset"] = None
        res["build"] = {"bundle": str(bundle_dir), "checkpoint": checkpoint, "cached": True}
    from ..bundle import Bundle

    b = Bundle.load(bundle_dir, verify=False)
    res["architecture"] = b.architecture
    variants = [v for v in cfg.variants if v in b.variants("llm")]
    for v in cfg.variants:
        if v not in variants:
            notes.append(f"LLM variant {v} is not in the bundle: skipped")
    visions = [v for v in cfg.vision if v in b.variants("vision")]
    for v in cfg.vision:
        if v not in visions:
            notes.append(f"vision variant {v} is not in the bundle: skipped")
    if not variants or not visions:
        raise InstitError("none of the requested LLM / vision variants is in the bundle")

    # ---- the image and the question
    if cfg.image:
        scene = {"image": str(Path(cfg.image).resolve()), "question": cfg.question or "Describe [1] and its position in the image.",
                 "short_question": cfg.question}
    else:
        scene = r.run("scene", {"dir": str(out / "models" / f"scene-{cfg.image_size[0]}x{cfg.image_size[1]}"),
                                "size": list(cfg.image_size)}, "scene")
        if scene is None:
            raise InstitError(f"could not build the benchmark scene: {r.errors[-1]}")
        if cfg.question:
            scene["question"] = scene["short_question"] = cfg.question
            scene["followups"] = []
    if not scene.get("followups"):
        scene["followups"] = [f"{scene['question']} Answer in one sentence.", f"{scene['question']} Be brief."]
    res["input"] = scene
    q, short = scene["question"], scene.get("short_question") or ""
    # the part of the prompt known before the question (the official task pre-prompt): prefetched with the frame
    scene["prefix"] = q[: len(q) - len(short)] if short and q.endswith(short) and q != short else None
    common = {"prefix": scene["prefix"], "bundle": str(bundle_dir), "image": scene["image"], "question": scene["question"],
              "followups": scene["followups"], "threads": cfg.threads, "reps": cfg.reps, "warmup": cfg.warmup, "new_tokens": cfg.new_tokens}

    # ---- roofline bandwidth (first: the machine is as quiet as it will be)
    res["bandwidth"] = r.run("roofline", {"mb": cfg.roofline_mb, "threads": cfg.threads, "reps": 5}, "bandwidth")
    # ---- compute peaks at the LLM's prefill shape (1,024 tokens x hidden -> 4 x hidden)
    hid = int(b.architecture.get("text_hidden") or 896)
    res["compute"] = r.run("compute", {"m": 1024, "k": hid, "n": 4 * hid, "threads": cfg.threads, "reps": 5},
                           "compute")

    # ---- vision: ONNX variants vs libmtmd
    res["vision"] = r.run("vision", {**common, "vision": visions, "mtmd": cfg.mtmd}, "vision")

    # ---- the bundle runtime per LLM variant (first vision variant), + the deploy pairs (q4_k_m with the others),
    # and the transformers baselines, in rounds: A B C, then C B A, ... (a drifting machine affects every side)
    pairs = [(v, visions[0]) for v in variants]
    deploy = "q4_k_m" if "q4_k_m" in variants else variants[-1]
    pairs += [(deploy, vv) for vv in visions[1:]]
    base_reps = cfg.baseline_reps or cfg.reps
    configs = [("llm", {**common, "llm": llm, "vision": vis}, f"llm-{llm}-{vis}", cfg.reps) for llm, vis in pairs]
    if cfg.baseline and checkpoint and Path(checkpoint).exists():
        groups = [cfg.baseline] if cfg.baseline_shared_process else [[i] for i in cfg.baseline]
        configs += [("torch", {**common, "checkpoint": checkpoint, "impls": g}, "transformers-" + "+".join(g),
                     base_reps) for g in groups]
        if cfg.baseline_shared_process and len(cfg.baseline) > 1:
            notes.append("the transformers baselines ran in one process (quick mode): their peak RSS is shared")
    elif cfg.baseline:
        notes.append(f"no transformers baseline: source checkpoint {checkpoint!r} not found")
    rounds = max(1, min(cfg.rounds, max(n for *_, n in configs)))
    merged: dict[str, dict] = {}
    for k in range(rounds):
        for task, args, label, n in (configs if k % 2 == 0 else configs[::-1]):
            share = n // rounds + (1 if k < n % rounds else 0)  # this round's repetitions of the configuration
            if share == 0:
                continue
            x = r.run(task, {**args, "reps": share}, label + (f"-round{k + 1}" if rounds > 1 else ""))
            for run in (x["results"] if task == "torch" else [x]) if x is not None else []:
                key = f"{run['kind']}:{run['llm']}:{run['vision']}:{run.get('attn')}"
                merged[key] = _merge_round(merged.get(key), run, k)
    runs = list(merged.values())
    if rounds > 1:
        notes.append(f"every configuration ran in {rounds} rounds in alternating order (A B, then B A); "
                     "its repetitions are pooled")
    res["runs"] = runs

    # ---- the image token budget on the deploy configuration (AnyRes bundles only)
    if b.preprocess.get("pinpoints") and cfg.budgets:
        res["budget"] = r.run("budget", {**common, "llm": deploy, "vision": visions[-1], "budgets": cfg.budgets,
                                         "n_questions": 1 if cfg.quick else 3}, "budget")
    # ---- where the prefill time goes (the deploy variant, the bundle's first vision variant)
    if cfg.profile:
        res["profile"] = _profile_prefill(r, common, deploy, visions[0], notes)
    # ---- marker
    if cfg.marker:
        res["marker"] = r.run("marker", {"size": list(cfg.image_size), "frames": cfg.marker_frames,
                                         "threads": cfg.threads, "detectors": ["motion", "static"]}, "marker")
    # ---- analysis
    analyse(res, b, variants, cfg)
    res["errors"] = r.errors
    res["stage_s"] = r.stage_s
    res["wall_s"] = round(time.perf_counter() - t_start, 1)
    try:
        res["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    write_reports(res, out)
    import shutil

    shutil.rmtree(r.work, ignore_errors=True)  # the children's argument / result files
    return res
