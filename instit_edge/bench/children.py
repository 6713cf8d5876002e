"""The measured configurations, each run in its own fresh subprocess so that peak RSS belongs to it alone:

    python -m instit_edge.bench.children TASK ARGS.json OUT.json

TASK is one of :data:`CHILDREN` (llm, torch, vision, roofline, compute, budget, marker, build, scene); the parent
(:mod:`instit_edge.bench.runner`) writes ARGS.json and reads OUT.json.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .measure import peak_rss, summarize


def _load_question(a: dict):
    from ..runtime.anyres import load_image

    return np.asarray(load_image(a["image"])), a["question"]


def _child_llm(a: dict) -> dict:
    """One bundle configuration: EdgeSession with an LLM and a vision variant; cold answer per rep."""
    rss0 = peak_rss()
    from ..runtime.session import EdgeSession

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
    # the live use: the frame arrives before the question; prefetch computes its vision rows and the KV of
    # everything before the question (not timed), then the question is asked about the same frame
    prefetched = []
    for _ in range(a["reps"]):
        s._embd_cache.clear()
        s.llm.reset()
        t0 = time.perf_counter()
        s.prefetch(image=arr, prefix=a.get("prefix"), background=False)
        pre_s = time.perf_counter() - t0
        r, _ = answer(question)
        prefetched.append({**r, "prefetch_s": pre_s})
    s.close_prefetch()
    return {"kind": "bundle", "llm": a["llm"], "vision": a["vision"], "load_s": load_s, "warmup_s": warm_s, "reps": reps,
            "followup": follow, "prefetched": prefetched, "new_tokens": n_new, "sample_text": text.decode("utf-8", "replace")[:80],
            "rss_before_load": rss0, "rss": peak_rss()}


WARM_TEXT = "Warm up: list the objects [1] [2] [3] and describe where they are in the picture, left or right."


def _warm_bundle(s) -> None:
    """Touch every weight and start the thread pools without a full answer: a short text prompt, a few
    decoded tokens, and the vision graph on one crop (a full cold answer per warm-up would double the run time)."""
    from ..runtime.llm_llamacpp import Segment

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

    from ..models.vision import vision_module

    ids = ts.processor.tokenizer(WARM_TEXT, return_tensors="pt")["input_ids"][:, :32]
    emb = model.get_input_embeddings()
    o = model(inputs_embeds=emb(ids), use_cache=True, logits_to_keep=1)
    past = o.past_key_values
    for _ in range(4):
        o = model(inputs_embeds=emb(o.logits[:, -1:].argmax(-1)), past_key_values=past, use_cache=True)
        past = o.past_key_values
    from ..models.families import processor_tile_size

    n = processor_tile_size(ts.processor.image_processor)
    vision_module(model)(torch.zeros(1, 3, n, n, dtype=model.dtype))


def _child_torch(a: dict) -> dict:
    """The transformers fp32 baseline (one or more attention implementations), same prompt, same length."""
    rss0 = peak_rss()
    import torch

    torch.set_num_threads(int(a["threads"]))
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from ..models.families import chat_template_for, preprocess_for
    from ..runtime.torch_ref import TorchSession

    arr, question = _load_question(a)
    n_new = int(a["new_tokens"])
    results = []
    for name in a["impls"]:  # "eager", "sdpa" (fp32) or "sdpa-bf16" (bf16 weights and activations)
        impl, _, dt = name.partition("-")
        dtype = torch.bfloat16 if dt == "bf16" else torch.float32
        t = time.perf_counter()
        proc = AutoProcessor.from_pretrained(a["checkpoint"])
        model = AutoModelForImageTextToText.from_pretrained(a["checkpoint"], dtype=dtype,
                                                            attn_implementation=impl).eval()
        ts = TorchSession(model, proc, chat_template_for(model, proc), preprocess_for(model, proc)["video"], "cpu", {})
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
        prec = "bf16" if dtype == torch.bfloat16 else "fp32"
        results.append({"kind": "transformers", "llm": f"{prec}-{impl}", "vision": f"{prec} (torch)", "attn": name,
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

    from ..bundle import Bundle
    from ..runtime.anyres import Preprocess, pack_anyres
    from ..runtime.vision_onnx import OnnxVision

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
        from ..runtime.mtmd_vision import MtmdVision
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


def _child_compute(a: dict) -> dict:
    """Compute peaks (GFLOP/s) of this machine at ``threads``: torch GEMMs of the LLM's prefill shape
    (``m`` prompt tokens x ``k`` hidden -> ``n``) in fp32 and bf16 (AMX / AVX512-BF16 where the CPU has them),
    and int8 x int8 -> int32 (``torch._int_mm``, VNNI / AMX-INT8) where this torch build has it; best of reps."""
    import torch

    torch.set_num_threads(int(a["threads"]))
    m, k, n = int(a["m"]), int(a["k"]), int(a["n"])
    reps = int(a.get("reps", 5))
    flops = 2 * m * k * n
    out = {"shape": [m, k, n], "threads": int(a["threads"]), "method": "torch GEMM, best of reps (GFLOP/s)"}
    g = torch.Generator().manual_seed(0)
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("int8", torch.int8)):
        if dtype is torch.int8:
            if not hasattr(torch, "_int_mm"):
                out[name] = None
                continue
            x = torch.randint(-64, 64, (m, k), generator=g, dtype=torch.int8)
            w = torch.randint(-64, 64, (k, n), generator=g, dtype=torch.int8)

            def mm(x=x, w=w):
                return torch._int_mm(x, w)
        else:
            x = torch.randn(m, k, generator=g).to(dtype)
            w = torch.randn(k, n, generator=g).to(dtype)

            def mm(x=x, w=w):
                return x @ w
        try:
            mm()
            mm()
        except RuntimeError as e:  # e.g. no int8 GEMM kernel for this CPU / shape
            out[name] = {"error": str(e).splitlines()[0]}
            continue
        vals = []
        for _ in range(reps):
            t0 = time.perf_counter()
            mm()
            vals.append(flops / (time.perf_counter() - t0) / 1e9)
        out[name] = {"best_gflop_s": max(vals), **summarize(vals)}
    return out


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
        from ..marker.pipeline import Marker
        from ..marker.synthvideo import moving_shapes
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
    from ..bundle import Bundle
    from ..models.tiny import build_tiny, preset_spec

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
        from ..export.bundle_writer import export_bundle

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
        from ..quant.recipe import quantize_bundle

        t = time.perf_counter()
        # the importance matrix changes which values the weights take, not the speed: off, to save build time
        quantize_bundle(bdir, need_llm, need_vis, imatrix="off", model=str(ck), n_calib=4, n_threads=a["threads"])
        timings["quantize_s"] = time.perf_counter() - t
        done.append("quantize " + ",".join(need_llm + need_vis))
    if "gptq" in a["variants"] and "gptq" not in Bundle.load(bdir, verify=False).variants("llm"):
        from ..quant.gptq import gptq_bundle

        t = time.perf_counter()
        gptq_bundle(bdir, model=str(ck), n_calib=4)
        timings["gptq_s"] = time.perf_counter() - t
        done.append("gptq")
    return {"checkpoint": str(ck), "bundle": str(bdir), "spec": asdict(spec), "timings": timings, "built": done,
            "cached": not done}


def _child_budget(a: dict) -> dict:
    """The image token budget (``--max-tiles N``) on one bundle configuration: image rows, time to first token
    (cold), and how far the first answer token's distribution moves from the full-token run (KL divergence
    and top-1 agreement over the scene's questions). Until the default model reads the marks, this stands in
    for the accuracy cost."""
    from ..runtime.session import EdgeSession

    arr, question = _load_question(a)
    s = EdgeSession.load(a["bundle"], llm=a["llm"], vision=a["vision"], n_threads=a["threads"], verify=False)
    questions = [question, *a.get("followups", [])][: int(a.get("n_questions", 3))]

    def probs(q):
        segs, info = s.prepare(q, image=arr)
        s.llm.reset()
        t0 = time.perf_counter()
        logits, _ = s.llm.prefill(segs)
        dt = time.perf_counter() - t0
        z = np.asarray(logits, np.float64)
        p = np.exp(z - z.max())
        return p / p.sum(), info["image_rows"], dt

    out = {"llm": a["llm"], "vision": a["vision"], "questions": len(questions), "budgets": []}
    full = None
    for budget in [None, *a["budgets"]]:
        s.set_max_tiles(budget)
        s._embd_cache.clear()
        res = [probs(q) for q in questions]
        if full is None:
            full = [r[0] for r in res]
        kld = [float(np.sum(f * (np.log(f + 1e-12) - np.log(r[0] + 1e-12)))) for f, r in zip(full, res)]
        top1 = [float(np.argmax(f) == np.argmax(r[0])) for f, r in zip(full, res)]
        out["budgets"].append({"max_tiles": budget, "image_rows": res[0][1],
                               "prefill_s": float(np.median([r[2] for r in res])),
                               "kld_vs_full": float(np.mean(kld)), "top1_agreement": float(np.mean(top1))})
    return out


def _child_scene(a: dict) -> dict:
    """A marked synthetic scene at WxH and its first open-ended image question (official OE prompt)."""
    from ..data.bench import load_bench
    from ..data.synth import build_world
    from ..prompting import build_oe_prompt

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


def _child_prefill(a: dict) -> dict:
    """The same cold prefill (image rows + question) ``reps`` times, sampled by perf only while it runs
    (the parent starts this child under ``perf record`` with events disabled; see :mod:`.profile`)."""
    from ..runtime.session import EdgeSession
    from .profile import Control

    arr, question = _load_question(a)
    s = EdgeSession.load(a["bundle"], llm=a["llm"], vision=a["vision"], n_threads=a["threads"], verify=False)
    _warm_bundle(s)
    segs, _ = s.prepare(question, image=arr)  # vision outside the sampled window
    ctl = Control(a.get("ctl"), a.get("ack"))
    times = []
    for _ in range(int(a["reps"])):
        s.llm.reset()
        ctl.enable()
        t = time.perf_counter()
        s.llm.prefill(segs)
        times.append(time.perf_counter() - t)
        ctl.disable()
    n = sum(len(x) for x in segs)
    return {"llm": a["llm"], "prompt_tokens": n, "prefill_s": summarize(times), "tok_s": n / min(times)}


CHILDREN = {"llm": _child_llm, "torch": _child_torch, "vision": _child_vision, "roofline": _child_roofline,
            "compute": _child_compute, "budget": _child_budget, "prefill": _child_prefill,
            "marker": _child_marker, "build": _child_build, "scene": _child_scene}


def _child_main(argv: list[str]) -> int:
    task, args_path, out_path = argv
    a = json.loads(Path(args_path).read_text())
    res = CHILDREN[task](a)
    Path(out_path).write_text(json.dumps(res, default=str))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4:
        raise SystemExit(_child_main(sys.argv[1:]))
    raise SystemExit("usage: python -m instit_edge.bench.children TASK ARGS.json OUT.json "
                     "(use `instit-edge bench` or benchmarks/bench_runtime.py)")
