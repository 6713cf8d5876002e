"""Benchmarks: the bundle runtime against transformers, llama.cpp's own vision path and the memory roofline.

One run measures, on the same image and question (the official Inst-IT open-ended prompt about a 640x480
marked synthetic scene), with warm-up and repetitions:

- the bundle runtime (llama.cpp + ONNX Runtime) per LLM variant: vision ms, prefill tok/s, time to first
  token, decode tok/s at a fixed generation length (end-of-generation ignored), time-to-answer, peak RSS;
- the baseline: the same checkpoint in transformers fp32 (``attn_implementation`` eager and sdpa);
- vision: our ONNX tower (fp32, int8, ...) against llama.cpp's libmtmd on ``mmproj.f16.gguf``;
- the marker: frames/s at 640x480 per detector (when :mod:`instit_edge.marker` has a pipeline);
- the roofline: measured memory read bandwidth, weight bytes read per decoded token, the bound and the
  fraction of it that decode reaches.

Every measured configuration runs in its own fresh subprocess (``python -m instit_edge.benchmark child``)
so that peak RSS (``ru_maxrss`` / ``VmHWM``) belongs to that configuration alone and no library state leaks
between runs. The parent only orchestrates (numpy, matplotlib; no torch). Results: ``results.json``,
``report.md``, ``time_to_answer.png``, ``roofline.png``.

    from instit_edge.benchmark import BenchConfig, run_benchmark
    res = run_benchmark(BenchConfig(target="edge", out=Path("out/bench")))
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .errors import InstitError

TARGETS = {
    "speedup": 3.0,         # q4_k_m time-to-answer >= 3x faster than transformers fp32
    "rss_ratio": 0.5,       # q4_k_m peak RSS <= 0.5x transformers fp32
    "roofline": 0.60,       # decode >= 60% of the memory-bandwidth bound
    "vision_speedup": 1.5,  # int8 vision >= 1.5x faster than fp32
    "vision_cosine": 0.99,  # ... with cosine >= 0.99 to it
}
TARGET_PRESET = "edge"
BASELINE_REF = "sdpa"  # the transformers attention implementation the ratios are taken against


@dataclass
class BenchConfig:
    target: str                                   # a bundle directory or a preset name (tiny, edge)
    out: Path
    variants: list = field(default_factory=lambda: ["f16", "q8_0", "q4_k_m", "gptq"])
    vision: list = field(default_factory=lambda: ["fp32", "int8"])
    threads: int = 2
    reps: int = 3
    warmup: int = 1
    new_tokens: int = 64
    baseline: list = field(default_factory=lambda: ["eager", "sdpa"])  # transformers attn implementations
    baseline_reps: int | None = None              # default: reps
    baseline_shared_process: bool = False         # eager and sdpa in one subprocess (quick mode: saves an import)
    mtmd: bool = True
    marker: bool = True
    marker_frames: int = 120
    roofline_mb: int = 512
    image_size: tuple = (640, 480)
    image: str | None = None                      # default: a synthetic marked scene at image_size
    question: str | None = None                   # default: the scene's first open-ended bench question
    child_timeout_s: int = 900
    quick: bool = False

    def __post_init__(self):
        self.out = Path(self.out)
        if self.threads < 1 or self.reps < 1 or self.warmup < 0 or self.new_tokens < 2:
            raise InstitError("bench needs --threads >= 1, --reps >= 1, --warmup >= 0 and --new-tokens >= 2")
        bad = [b for b in self.baseline if b not in ("eager", "sdpa")]
        if bad:
            raise InstitError(f"unknown baseline attention implementation(s) {bad}; use eager, sdpa")
        if not self.variants:
            raise InstitError("give at least one LLM variant (--variants)")
        if not self.vision:
            raise InstitError("give at least one vision variant (--vision)")


# =========================================================================== small helpers
MAX_LOAD_PER_CORE = 0.5  # load average per visible core at the start above which timings are not trusted
MAX_SPREAD = 0.20  # (max - min) / median of a configuration's repetitions above which it is noisy


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


def summarize(values) -> dict | None:
    """median, min, max, spread (max - min) and every value; None when there are none."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals),
            "spread": max(vals) - min(vals), "n": len(vals), "values": vals}


def peak_rss() -> dict:
    """This process's peak resident set (MB): ru_maxrss and /proc VmHWM (Linux), current VmRSS."""
    import resource

    out = {"ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if sys.platform == "darwin":  # bytes there
        out["ru_maxrss_mb"] /= 1024.0
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(("VmHWM:", "VmRSS:")):
                k, v = line.split(":", 1)
                out[k.strip().lower() + "_mb"] = int(v.split()[0]) / 1024.0
    except OSError:
        pass
    out["peak_mb"] = max(out.get("vmhwm_mb", 0.0), out["ru_maxrss_mb"])
    return out


def machine_info() -> dict:
    info = {"platform": platform.platform(), "machine": platform.machine(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    try:
        txt = Path("/proc/cpuinfo").read_text()
        names = [ln.split(":", 1)[1].strip() for ln in txt.splitlines() if ln.startswith("model name")]
        if names:
            info["cpu"] = names[0]
        flags = next((ln for ln in txt.splitlines() if ln.startswith("flags")), "")
        info["simd"] = " ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
                                if f" {f}" in flags)
    except OSError:
        info["cpu"] = platform.processor() or platform.machine()
    try:
        mem = Path("/proc/meminfo").read_text().splitlines()[0]
        info["memory_gb"] = round(int(mem.split()[1]) / 2**20, 1)
    except (OSError, IndexError, ValueError):
        pass
    try:
        info["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    for mod in ("llama_cpp", "onnxruntime", "numpy", "torch", "transformers"):
        info[mod] = _version(mod)
    return info


def _version(mod: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    name = {"llama_cpp": "llama-cpp-python"}.get(mod, mod)
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def gguf_weight_bytes(path: str | Path) -> dict:
    """Bytes of weights a decoded token reads: every tensor but ``token_embd`` (a row lookup).

    When the model has no ``output.weight`` (tied embeddings), ``token_embd`` is the output matrix and is read.
    """
    import gguf

    r = gguf.GGUFReader(str(path))
    by_type: dict[str, int] = {}
    total = embd = 0
    has_output = False
    for t in r.tensors:
        nb = int(t.n_bytes)
        if t.name == "token_embd.weight":
            embd = nb
            continue
        if t.name == "output.weight":
            has_output = True
        total += nb
        by_type[t.tensor_type.name] = by_type.get(t.tensor_type.name, 0) + nb
    if not has_output:
        total += embd
    meta = {}
    for k, f in r.fields.items():
        for key in ("block_count", "attention.head_count_kv", "attention.head_count", "embedding_length"):
            if k.endswith("." + key):
                try:
                    meta[key] = int(f.parts[-1][0])
                except (TypeError, ValueError, IndexError):
                    pass
    n_layer, n_head_kv = meta.get("block_count"), meta.get("attention.head_count_kv")
    head_dim = (meta["embedding_length"] // meta["attention.head_count"]
                if meta.get("embedding_length") and meta.get("attention.head_count") else None)
    return {"bytes_per_token": total, "token_embd_bytes": embd, "file_bytes": Path(path).stat().st_size,
            "by_type": by_type, "tied_output": not has_output, "n_layer": n_layer, "n_head_kv": n_head_kv,
            "head_dim": head_dim}


# =========================================================================== children (subprocesses)
def _load_question(a: dict):
    from .runtime.anyres import load_image

    return np.asarray(load_image(a["image"])), a["question"]


def _child_llm(a: dict) -> dict:
    """One bundle configuration: EdgeSession with an LLM and a vision variant; cold answer per rep."""
    rss0 = peak_rss()
    from .runtime.session import EdgeSession

    arr, question = _load_question(a)
    t = time.perf_counter()
    s = EdgeSession.load(a["bundle"], llm=a["llm"], vision=a["vision"], n_threads=a["threads"], verify=False)
    load_s = time.perf_counter() - t
    n_new = int(a["new_tokens"])
    t = time.perf_counter()
    for _ in range(a["warmup"]):
        _warm_bundle(s)
    warm_s = time.perf_counter() - t
    def answer(q: str) -> tuple[dict, bytes]:
        t0 = time.perf_counter()
        segs, info = s.prepare(q, image=arr)
        t1 = time.perf_counter()
        logits, reused = s.llm.prefill(segs)
        tok = int(np.argmax(logits))
        t2 = time.perf_counter()
        n_prompt = sum(len(x) for x in segs)
        pieces = [s.llm.token_bytes(tok)]
        for _ in range(n_new - 1):  # fixed length: end-of-generation is ignored
            logits = s.llm.step(tok)
            tok = int(np.argmax(logits))
            pieces.append(s.llm.token_bytes(tok))
        t3 = time.perf_counter()
        return ({"vision_s": t1 - t0, "prefill_s": t2 - t1, "decode_s": t3 - t2, "ttft_s": t2 - t0,
                 "total_s": t3 - t0, "prompt_tokens": n_prompt, "image_rows": info["image_rows"], "reused": reused,
                 "prefill_tok_s": (n_prompt - reused) / (t2 - t1), "decode_tok_s": (n_new - 1) / (t3 - t2)},
                b"".join(pieces))

    reps = []
    for _ in range(a["reps"]):
        s._embd_cache.clear()  # cold: vision recomputed, no KV prefix reused
        s.llm.reset()
        r, text = answer(question)
        reps.append(r)
    # follow-up questions about the same image, as EdgeSession serves them: the image embeddings come from the
    # cache and the KV prefix (system prompt, image rows, task pre-prompt) is reused; only the new tokens run
    follow = [answer(q)[0] for q in a.get("followups", [])[: a["reps"]]]
    return {"kind": "bundle", "llm": a["llm"], "vision": a["vision"], "load_s": load_s, "warmup_s": warm_s, "reps": reps,
            "followup": follow, "new_tokens": n_new, "sample_text": text.decode("utf-8", "replace")[:80],
            "rss_before_load": rss0, "rss": peak_rss()}


WARM_TEXT = "Warm up: list the objects [1] [2] [3] and describe where they are in the picture, left or right."


def _warm_bundle(s) -> None:
    """Touch every weight and start the thread pools without a full answer: a short text prompt, a few
    decoded tokens, and the vision graph on one crop (a full cold answer per warm-up would double the run time)."""
    from .runtime.llm_llamacpp import Segment

    s.llm.reset()
    toks = s.llm.tokenize(WARM_TEXT, add_bos=s.prompt_cfg["add_bos"])[:32]
    logits, _ = s.llm.prefill([Segment(tokens=toks)])
    for _ in range(4):
        logits = s.llm.step(int(np.argmax(logits)))
    n = s.pre.image_size
    s.vision(np.zeros((1, 3, n, n), np.float32))
    s.llm.reset()


def _warm_torch(model, ts) -> None:
    import torch

    from .export.onnx_vision import vision_module

    ids = ts.processor.tokenizer(WARM_TEXT, return_tensors="pt")["input_ids"][:, :32]
    emb = model.get_input_embeddings()
    o = model(inputs_embeds=emb(ids), use_cache=True, logits_to_keep=1)
    past = o.past_key_values
    for _ in range(4):
        o = model(inputs_embeds=emb(o.logits[:, -1:].argmax(-1)), past_key_values=past, use_cache=True)
        past = o.past_key_values
    n = ts.processor.image_processor.crop_size["height"]
    vision_module(model)(torch.zeros(1, 3, n, n))


def _child_torch(a: dict) -> dict:
    """The transformers fp32 baseline (one or more attention implementations), same prompt, same length."""
    rss0 = peak_rss()
    import torch

    torch.set_num_threads(int(a["threads"]))
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from .export.bundle_writer import TEMPLATES
    from .runtime.torch_ref import TorchSession

    arr, question = _load_question(a)
    n_new = int(a["new_tokens"])
    results = []
    for impl in a["impls"]:
        t = time.perf_counter()
        proc = AutoProcessor.from_pretrained(a["checkpoint"])
        model = AutoModelForImageTextToText.from_pretrained(a["checkpoint"], dtype=torch.float32,
                                                            attn_implementation=impl).eval()
        ts = TorchSession(model, proc, TEMPLATES[model.config.text_config.model_type],
                          {"pool_stride": 2, "pool_mode": "average", "max_frames": 32}, "cpu", {})
        load_s = time.perf_counter() - t
        emb = model.get_input_embeddings()
        reps = []
        with torch.inference_mode():
            t = time.perf_counter()
            for _ in range(a["warmup"]):
                _warm_torch(model, ts)
            warm_s = time.perf_counter() - t
            for _ in range(a["reps"]):
                t0 = time.perf_counter()
                _ids, embeds, _ = ts._inputs(question, image=arr)  # HF processor + tower + projector + splice
                t1 = time.perf_counter()
                o = model(inputs_embeds=embeds, use_cache=True, logits_to_keep=1)
                past = o.past_key_values
                tok = int(o.logits[0, -1].argmax())
                t2 = time.perf_counter()
                for _ in range(n_new - 1):
                    o = model(inputs_embeds=emb(torch.tensor([[tok]])), past_key_values=past, use_cache=True)
                    past = o.past_key_values
                    tok = int(o.logits[0, -1].argmax())
                t3 = time.perf_counter()
                n_prompt = int(embeds.shape[1])
                reps.append({"vision_s": t1 - t0, "prefill_s": t2 - t1, "decode_s": t3 - t2, "ttft_s": t2 - t0,
                             "total_s": t3 - t0, "prompt_tokens": n_prompt, "prefill_tok_s": n_prompt / (t2 - t1),
                             "decode_tok_s": (n_new - 1) / (t3 - t2)})
        results.append({"kind": "transformers", "llm": f"fp32-{impl}", "vision": "fp32 (torch)", "attn": impl,
                        "load_s": load_s, "warmup_s": warm_s, "reps": reps, "new_tokens": n_new,
                        "params": int(sum(p.numel() for p in model.parameters()))})
        del ts, model, past, o
    rss = peak_rss()
    for r in results:
        r["rss_before_load"] = rss0
        r["rss"] = rss
        r["rss_shared_with"] = [x["attn"] for x in results] if len(results) > 1 else None
    return {"results": results}


def _child_vision(a: dict) -> dict:
    """ONNX vision variants (preprocess + tower + AnyRes packing, as EdgeSession does) and libmtmd on the mmproj."""
    from PIL import Image

    from .bundle import Bundle
    from .runtime.anyres import Preprocess, pack_anyres
    from .runtime.vision_onnx import OnnxVision

    arr, _ = _load_question(a)
    b = Bundle.load(a["bundle"], verify=False)
    pre = Preprocess.from_dict(b.preprocess)
    newline = np.load(b.path("extra", "image_newline")) if "image_newline" in b.variants("extra") else None
    out: dict = {"onnx": {}, "notes": []}
    feats: dict[str, np.ndarray] = {}
    n_total = a["warmup"] + a["reps"]
    for v in a["vision"]:
        if v not in b.variants("vision"):
            out["notes"].append(f"vision variant {v} not in the bundle: skipped")
            continue
        vis = OnnxVision(b.path("vision", v), n_threads=a["threads"], prefer_gpu=False)
        pre_s, run_s, tot_s = [], [], []
        for i in range(n_total):
            t0 = time.perf_counter()
            crops, hw = pre.crops(Image.fromarray(arr), anyres=True)
            t1 = time.perf_counter()
            f = vis(crops)
            t2 = time.perf_counter()
            rows = (pack_anyres(f, hw, pre.pinpoints, pre.image_size, b.preprocess["patch_size"], newline)
                    if pre.pinpoints else f[0])
            t3 = time.perf_counter()
            if i >= a["warmup"]:
                pre_s.append(t1 - t0)
                run_s.append(t2 - t1)
                tot_s.append(t3 - t0)
        feats[v] = rows
        out["onnx"][v] = {"total_s": summarize(tot_s), "preprocess_s": summarize(pre_s), "tower_s": summarize(run_s),
                          "crops": len(crops), "rows": len(rows), "provider": vis.provider}
        del vis
    ref = a["vision"][0] if a["vision"][0] in feats else None
    for v, f in feats.items():
        if ref and v != ref and f.shape == feats[ref].shape:
            x, y = f.astype(np.float64), feats[ref].astype(np.float64)
            row_cos = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1) + 1e-12)
            out["onnx"][v]["cosine_vs_" + ref] = {"mean": float(row_cos.mean()), "min": float(row_cos.min())}
    if a.get("mtmd", True):
        out["mtmd"] = _mtmd_timing(b, arr, a, n_total)
    out["rss"] = peak_rss()
    return out


def _mtmd_timing(b, arr, a, n_total) -> dict:
    if "mmproj" not in b.variants("extra"):
        return {"skipped": "the bundle has no mmproj.f16.gguf"}
    try:
        from .runtime.mtmd_vision import MtmdVision
    except ImportError as e:  # pragma: no cover - llama-cpp-python without mtmd
        return {"skipped": f"libmtmd unavailable: {e}"}
    llms = b.variants("llm")
    # libmtmd needs a text model; the smallest file keeps memory low (it does not affect the vision graph)
    small = min(llms, key=lambda v: b.path("llm", v).stat().st_size)
    try:
        mv = MtmdVision(b.path("extra", "mmproj"), b.path("llm", small), n_threads=a["threads"])
    except Exception as e:  # noqa: BLE001 - report and go on
        return {"skipped": f"libmtmd could not load the mmproj: {str(e).splitlines()[0][:200]}"}
    times, rows = [], None
    try:
        for i in range(n_total):
            t0 = time.perf_counter()
            r = mv.encode(arr)
            if i >= a["warmup"]:
                times.append(time.perf_counter() - t0)
            rows = len(r)
    finally:
        mv.close()
    return {"total_s": summarize(times), "rows": rows, "llm_file_for_ctx": small,
            "note": "libmtmd: LLaVA-Next tiles without unpadding or image_newline, so its row count differs"}


def _child_roofline(a: dict) -> dict:
    """Memory read bandwidth (GB/s): time numpy sums over a large float32 array, 1 .. N threads."""
    from concurrent.futures import ThreadPoolExecutor

    n = int(a["mb"]) * 2**20 // 4
    x = np.ones(n, dtype=np.float32)  # written once: every page is resident
    nbytes = x.nbytes
    reps = int(a.get("reps", 5))
    out = {"array_mb": nbytes / 2**20, "method": "np.sum over a float32 array (per-thread slices), best of reps",
           "threads": {}}
    x.sum()
    for th in sorted({1, int(a["threads"])}):
        chunks = np.array_split(x, th)
        gbs = []
        with ThreadPoolExecutor(th) as pool:
            list(pool.map(np.sum, chunks))
            for _ in range(reps):
                t0 = time.perf_counter()
                list(pool.map(np.sum, chunks))  # numpy releases the GIL inside the reduction
                gbs.append(nbytes / (time.perf_counter() - t0) / 1e9)
        out["threads"][str(th)] = {"best_gb_s": max(gbs), **summarize(gbs)}
    return out


def _child_marker(a: dict) -> dict:
    """Marker frames/s at WxH per detector (detect -> track -> render), if the marker pipeline exists."""
    try:
        from .marker.pipeline import Marker
        from .marker.synthvideo import moving_shapes
    except ImportError as e:
        return {"skipped": f"instit_edge.marker has no detector + tracker pipeline yet ({e})"}
    try:
        import cv2

        cv2.setNumThreads(int(a["threads"]))
    except ImportError:
        pass
    W, H = a["size"]
    clip = moving_shapes(0, n_objects=4, n_frames=90, size=(W, H), warmup=5)
    order = list(range(90))
    while len(order) < a["frames"] + 10:
        order += list(range(88, 4, -1)) + list(range(6, 90))
    frames = [clip.frames[i] for i in order[: a["frames"] + 10]]
    res = {}
    for det in a["detectors"]:
        try:
            m = Marker(det, style="box+id")
        except Exception as e:  # noqa: BLE001 - a detector that needs a model file / optional stack
            res[det] = {"skipped": str(e).splitlines()[0][:200]}
            continue
        stage = {"detect_ms": [], "track_ms": [], "render_ms": []}
        t_all = []
        for k, f in enumerate(frames):
            t0 = time.perf_counter()
            mf = m.process(f)
            if k >= 10:
                t_all.append(time.perf_counter() - t0)
                for s, col in stage.items():
                    col.append(mf.timings.get(s, float("nan")))
        tot = sum(t_all)
        res[det] = {"fps": len(t_all) / tot, "frames": len(t_all), "ms_per_frame": 1000 * tot / len(t_all),
                    **{s: float(np.nanmean(v)) for s, v in stage.items() if v}}
    return {"size": f"{W}x{H}", "style": "box+id", "detectors": res}


def _child_build(a: dict) -> dict:
    """Build (or reuse) the preset checkpoint, export it and add the missing quantized variants."""
    from .bundle import Bundle
    from .models.tiny import build_tiny, preset_spec

    root = Path(a["models"]).resolve()
    spec = preset_spec(a["preset"])
    ck, bdir = root / "model", root / "bundle"
    stamp = root / "spec.json"
    want = json.dumps(asdict(spec), sort_keys=True)
    timings, done = {}, []
    if not (ck / "config.json").exists() or not stamp.exists() or stamp.read_text() != want:
        t = time.perf_counter()
        build_tiny(ck, spec, force=True)
        stamp.write_text(want)
        timings["checkpoint_s"] = time.perf_counter() - t
        done.append("checkpoint")
        if bdir.exists():
            import shutil

            shutil.rmtree(bdir)
    if not (bdir / "bundle.json").exists():
        from .export.bundle_writer import export_bundle

        t = time.perf_counter()
        llm_types = tuple(v for v in ("f16", "f32") if v in a["variants"]) or ("f16",)
        vis_types = tuple(v for v in ("fp32", "fp16") if v in a["vision"] or v == "fp32")
        export_bundle(str(ck), bdir, force=True, llm_types=llm_types, vision_types=vis_types, mmproj=True)
        timings["export_s"] = time.perf_counter() - t
        done.append("export")
    b = Bundle.load(bdir, verify=False)
    need_llm = [v for v in a["variants"] if v not in b.variants("llm") and v not in ("f16", "f32", "gptq")]
    need_vis = [v for v in a["vision"] if v not in b.variants("vision") and v not in ("fp32", "fp16")]
    if need_llm or need_vis:
        from .quant.recipe import quantize_bundle

        t = time.perf_counter()
        # the importance matrix changes which values the weights take, not the speed: off, to save build time
        quantize_bundle(bdir, need_llm, need_vis, imatrix="off", model=str(ck), n_calib=4, n_threads=a["threads"])
        timings["quantize_s"] = time.perf_counter() - t
        done.append("quantize " + ",".join(need_llm + need_vis))
    if "gptq" in a["variants"] and "gptq" not in Bundle.load(bdir, verify=False).variants("llm"):
        from .quant.gptq import gptq_bundle

        t = time.perf_counter()
        gptq_bundle(bdir, model=str(ck), n_calib=4)
        timings["gptq_s"] = time.perf_counter() - t
        done.append("gptq")
    return {"checkpoint": str(ck), "bundle": str(bdir), "spec": asdict(spec), "timings": timings, "built": done,
            "cached": not done}


def _child_scene(a: dict) -> dict:
    """A marked synthetic scene at WxH and its first open-ended image question (official OE prompt)."""
    from .data.bench import load_bench
    from .data.synth import build_world
    from .prompting import build_oe_prompt

    root = Path(a["dir"])
    if not (root / "bench").exists():
        build_world(root, seed=0, n_images=1, n_videos=0, image_size=tuple(a["size"]), n_train_images=0,
                    n_train_videos=0, force=True)
    items = list(load_bench(root / "bench", split="image", fmt="oe"))
    it = items[0]
    others = [x.question for x in items[1:] if x.image_path == it.image_path and x.question != it.question]
    others += [f"{it.question} Answer in one sentence.", f"{it.question} Name its colour too."]
    return {"image": str(it.image_path), "question": build_oe_prompt(it.question, split="image"),
            "short_question": it.question, "followups": [build_oe_prompt(q, split="image") for q in others]}


CHILDREN = {"llm": _child_llm, "torch": _child_torch, "vision": _child_vision, "roofline": _child_roofline,
            "marker": _child_marker, "build": _child_build, "scene": _child_scene}


def _child_main(argv: list[str]) -> int:
    task, args_path, out_path = argv
    a = json.loads(Path(args_path).read_text())
    res = CHILDREN[task](a)
    Path(out_path).write_text(json.dumps(res, default=str))
    return 0


# =========================================================================== parent
class _Runner:
    def __init__(self, cfg: BenchConfig, log):
        self.cfg, self.log = cfg, log
        self.work = Path(tempfile.mkdtemp(prefix="instit-bench-"))
        self.stage_s: dict[str, float] = {}
        self.errors: list[str] = []

    def run(self, task: str, args: dict, label: str, cwd: Path | None = None, timeout: int | None = None):
        """Run one child; return its JSON, or None (the error is recorded) when it fails."""
        ap, op = self.work / f"{label}.args.json", self.work / f"{label}.out.json"
        ap.write_text(json.dumps(args, default=str))
        env = dict(os.environ)
        th = str(self.cfg.threads)
        env.update(OMP_NUM_THREADS=th, MKL_NUM_THREADS=th, OPENBLAS_NUM_THREADS=th, TOKENIZERS_PARALLELISM="false",
                   GPTQMODEL_CPU_WORKERS=th, PYTHONWARNINGS="ignore")
        repo = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.log(f"[bench] {label} ...")
        t = time.perf_counter()
        try:
            p = subprocess.run([sys.executable, "-m", "instit_edge.benchmark", "child", task, str(ap), str(op)], check=False,
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


def _is_preset(target: str) -> bool:
    from .models.tiny import PRESETS

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
        from .bundle import Bundle

        bundle_dir = Path(cfg.target).resolve()
        if not (bundle_dir / "bundle.json").exists():
            raise InstitError(f"{bundle_dir} is neither a bundle directory nor a preset (tiny, edge)")
        checkpoint = Bundle.load(bundle_dir, verify=False).manifest.get("source", {}).get("model")
        if checkpoint and Path(checkpoint).exists():
            checkpoint = str(Path(checkpoint).resolve())
        res["preset"] = None
        res["build"] = {"bundle": str(bundle_dir), "checkpoint": checkpoint, "cached": True}
    from .bundle import Bundle

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
    common = {"bundle": str(bundle_dir), "image": scene["image"], "question": scene["question"],
              "followups": scene["followups"], "threads": cfg.threads, "reps": cfg.reps, "warmup": cfg.warmup, "new_tokens": cfg.new_tokens}

    # ---- roofline bandwidth (first: the machine is as quiet as it will be)
    res["bandwidth"] = r.run("roofline", {"mb": cfg.roofline_mb, "threads": cfg.threads, "reps": 5}, "bandwidth")

    # ---- vision: ONNX variants vs libmtmd
    res["vision"] = r.run("vision", {**common, "vision": visions, "mtmd": cfg.mtmd}, "vision")

    # ---- the bundle runtime per LLM variant (first vision variant), + the deploy pairs (q4_k_m with the others)
    runs = []
    pairs = [(v, visions[0]) for v in variants]
    deploy = "q4_k_m" if "q4_k_m" in variants else variants[-1]
    pairs += [(deploy, vv) for vv in visions[1:]]
    for llm, vis in pairs:
        x = r.run("llm", {**common, "llm": llm, "vision": vis}, f"llm-{llm}-{vis}")
        if x is not None:
            runs.append(x)

    # ---- the transformers baseline
    base_reps = cfg.baseline_reps or cfg.reps
    if cfg.baseline and checkpoint and Path(checkpoint).exists():
        groups = [cfg.baseline] if cfg.baseline_shared_process else [[i] for i in cfg.baseline]
        for g in groups:
            x = r.run("torch", {**common, "reps": base_reps, "checkpoint": checkpoint, "impls": g},
                      "transformers-" + "+".join(g))
            if x is not None:
                runs.extend(x["results"])
        if cfg.baseline_shared_process and len(cfg.baseline) > 1:
            notes.append("transformers eager and sdpa ran in one process (quick mode): their peak RSS is shared")
    elif cfg.baseline:
        notes.append(f"no transformers baseline: source checkpoint {checkpoint!r} not found")
    res["runs"] = runs

    # ---- marker
    if cfg.marker:
        res["marker"] = r.run("marker", {"size": list(cfg.image_size), "frames": cfg.marker_frames,
                                         "threads": cfg.threads, "detectors": ["motion", "static"]}, "marker")
    # ---- analysis
    _analyse(res, b, variants, cfg)
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


def _med(run: dict, key: str):
    s = summarize([x.get(key) for x in run.get("reps", [])])
    return s["median"] if s else None


def _analyse(res: dict, b, variants: list, cfg: BenchConfig) -> None:
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
        dec = _med(run, "decode_tok_s") if run else None
        n_ctx = (_med(run, "prompt_tokens") or 0) + cfg.new_tokens / 2 if run else 0
        kv = 0
        if wb.get("n_layer") and wb.get("n_head_kv") and wb.get("head_dim"):
            kv = int(n_ctx * wb["n_layer"] * 2 * wb["n_head_kv"] * wb["head_dim"] * 2)  # F16 K and V
        entry = {"weights_bytes_per_token": wb["bytes_per_token"], "kv_bytes_per_token": kv,
                 "file_bytes": wb["file_bytes"], "by_type": wb["by_type"], "decode_tok_s": dec}
        if bw_n:
            entry["bound_tok_s"] = bw_n * 1e9 / wb["bytes_per_token"]
            entry["bound_tok_s_with_kv"] = bw_n * 1e9 / (wb["bytes_per_token"] + kv)
            entry["fraction"] = dec / entry["bound_tok_s"] if dec else None
            entry["fraction_with_kv"] = dec / entry["bound_tok_s_with_kv"] if dec else None
            entry["achieved_gb_s"] = dec * wb["bytes_per_token"] / 1e9 if dec else None
        roof[v] = entry
    res["roofline"] = {"bandwidth_gb_s": bw_n, "bandwidth_1thread_gb_s": bw_1, "threads": cfg.threads,
                       "variants": roof}

    # ratios against the baseline
    base = next((x for x in runs if x["kind"] == "transformers" and x["attn"] == BASELINE_REF), None)
    base = base or next((x for x in runs if x["kind"] == "transformers"), None)
    res["baseline_ref"] = base["llm"] if base else None
    for run in runs:
        if base is None:
            break
        bt, rt = _med(base, "total_s"), _med(run, "total_s")
        run["speedup_vs_baseline"] = bt / rt if bt and rt else None
        run["rss_ratio_vs_baseline"] = run["rss"]["peak_mb"] / base["rss"]["peak_mb"]
        run["decode_speedup_vs_baseline"] = (_med(run, "decode_tok_s") / _med(base, "decode_tok_s")
                                             if _med(base, "decode_tok_s") else None)

    # time-to-answer at other generation lengths, projected from the measured TTFT and decode rate
    # (an MC answer is ~1 token, an OE answer up to 128)
    proj = {}
    if base:
        def at(run, n):
            ttft, dec = _med(run, "ttft_s"), _med(run, "decode_tok_s")
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
            if base and _med(base, "total_s"):
                run["followup_speedup_vs_baseline"] = _med(base, "total_s") / run["followup_stats"]["total_s"]["median"]

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
                    f"{_med(run, 'total_s'):.2f} s vs {_med(base, 'total_s'):.2f} s")
                add(f"{deploy} + {run['vision']} vision peak RSS ratio vs transformers {base['llm']}",
                    run.get("rss_ratio_vs_baseline"), TARGETS["rss_ratio"], False,
                    f"{run['rss']['peak_mb']:.0f} MB vs {base['rss']['peak_mb']:.0f} MB")
    for v, e in roof.items():
        add(f"{v} decode fraction of the bandwidth bound", e.get("fraction"), TARGETS["roofline"], True,
            f"{e['decode_tok_s'] or 0:.1f} tok/s of {e.get('bound_tok_s', 0):.1f} bound"
            if e.get("decode_tok_s") else "")
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


# =========================================================================== reports
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
             "(the machine is shared: timings are noisy)")
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
            vals = np.array([_med(r, key) or 0 for r in runs])
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
    return files


def write_reports(res: dict, out: Path) -> None:
    from .atomic import write_json

    out.mkdir(parents=True, exist_ok=True)
    res["plots"] = render_plots(res, out)
    write_json(out / "results.json", res)
    (out / "report.md").write_text(render_markdown(res))


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "child":
        raise SystemExit(_child_main(sys.argv[2:]))
    raise SystemExit("usage: python -m instit_edge.benchmark child TASK ARGS.json OUT.json "
                     "(use `instit-edge bench` or benchmarks/bench_runtime.py)")
