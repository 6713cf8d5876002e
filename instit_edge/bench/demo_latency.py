"""The webcam demo's processing path: marked frames per second, and time to first token.

Drives :class:`instit_edge.demo.engine.DemoEngine` (what the Gradio app calls,
without the browser) with recorded synthetic frames (640x480 moving shapes,
:mod:`instit_edge.marker.synthvideo`):

* **marked output**: frames per second through the marker (detect -> track ->
  draw), alone and with the JPEG encoding the Gradio app does for every frame
  it sends back;
* **time to first token** of ``What is [1] doing?``, from the question to the
  first streamed piece (vision + prefill + first decode step):
  *uncached* = a frame never encoded before (the system-prompt prefix is
  still reused from the previous prompt, as in the live demo);
  *cached* = the same frame asked again (vision embedding and KV of the whole
  prompt reused); *same frame, new question* = vision cached, KV reused up to
  the end of the image rows; and a ``<t>`` question over the keyframes with
  and without background encoding of the keyframes.

    python -m instit_edge.bench.demo_latency              # out/bundle (built when missing)
    python -m instit_edge.bench.demo_latency --bundle B --llm q4_k_m --vision int8 --threads 4 --out out/bench/demo.json

``--threads`` defaults to 1: llama.cpp threads spin-wait at their barriers, so
more threads than idle cores (a shared 2-core machine) turn a 25 ms TTFT
into 1.5-2 s spikes. Give the number of idle physical cores on a quiet device.
"""

from __future__ import annotations

import argparse
import io
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from ..atomic import write_json
from ..demo.engine import DemoEngine
from ..marker.synthvideo import moving_shapes
from ..system import cpu_name

QUESTION = "What is [1] doing?"


def ensure_bundle(path: Path) -> Path:
    if (path / "bundle.json").is_file():
        return path
    print(f"{path} has no bundle: building the tiny default model and exporting it (needs the [export] extra)")
    from ..export.bundle_writer import export_bundle
    from ..models.tiny import TinySpec, build_tiny

    ckpt = build_tiny(path.parent / (path.name + "-ckpt"), TinySpec())
    export_bundle(str(ckpt), path, llm_types=("f16",))
    return path


def recorded_frames(n: int, size=(640, 480), seed: int = 0) -> list[np.ndarray]:
    """A 60-frame scene played back and forth (continuous motion, stable IDs) for any number of frames."""
    clip = moving_shapes(seed, n_objects=3, n_frames=60, size=size, warmup=3, speed=(2.0, 4.0), fps=10)
    order = list(range(60))
    while len(order) < n:
        order += list(range(58, 2, -1)) + list(range(4, 60))
    return [clip.frames[i] for i in order[:n]]


def stats(xs) -> dict:
    xs = sorted(float(x) for x in xs)
    return {"n": len(xs), "median": round(statistics.median(xs), 2), "min": round(xs[0], 2), "max": round(xs[-1], 2)}


def bench_frames(eng: DemoEngine, frames, jpeg_quality: int = 75) -> dict:
    from PIL import Image

    view = eng.new_view()
    ms, t0 = [], time.perf_counter()
    for k, f in enumerate(frames):
        res = eng.process(view, f, timestamp=k / 10)
        ms.append(res.timings["marker_ms"])
    marker_s = time.perf_counter() - t0
    view2 = eng.new_view()
    t0 = time.perf_counter()
    for k, f in enumerate(frames):
        res = eng.process(view2, f, timestamp=k / 10)
        Image.fromarray(res.image).save(io.BytesIO(), format="JPEG", quality=jpeg_quality)
    ui_s = time.perf_counter() - t0
    return {"frames": len(frames), "fps_marked": round(len(frames) / marker_s, 1),
            "fps_marked_jpeg": round(len(frames) / ui_s, 1), "marker_ms": stats(ms),
            "instances_last": len(res.instances)}


def ask(eng, view, q):
    eng.ask(view, q)
    if not eng.last.answered:
        raise SystemExit(f"the engine did not answer {q!r}: {eng.last.reply}")
    s = eng.last.stats
    return {"ttft_ms": eng.last.ttft_ms, "vision_ms": s["vision_ms"], "prompt_tokens": s["prompt_tokens"],
            "reused_tokens": s["reused_tokens"], "prefill_tok_s": s["prefill_tok_s"],
            "decode_tok_s": s["decode_tok_s"]}


def bench_questions(eng: DemoEngine, frames, repeats: int) -> dict:
    view = eng.new_view()
    for k, f in enumerate(frames[:40]):  # the tracker has its IDs
        eng.process(view, f, timestamp=k / 10)
    ask(eng, view, QUESTION)  # warm-up: llama.cpp / ONNX Runtime first-call costs are not what a user waits for
    rows = {"uncached": [], "cached": [], "same_frame_new_question": []}
    t = 4.0
    for r in range(repeats):
        for k in range(3):  # a new frame: never encoded
            eng.process(view, frames[40 + 3 * r + k], timestamp=t)
            t += 0.1
        view.hold(True)
        rows["uncached"].append(ask(eng, view, QUESTION))
        rows["cached"].append(ask(eng, view, QUESTION))
        rows["same_frame_new_question"].append(ask(eng, view, f"Describe [2] and [3]. ({r})"))
        view.hold(False)
    return rows


def bench_video(bundle, frames, *, llm: str, vision: str, threads: int, max_new_tokens: int) -> dict:
    out = {}
    for prefetch in (False, True):
        eng = DemoEngine(bundle, llm=llm, vision=vision, n_threads=threads, max_new_tokens=max_new_tokens,
                         prefetch=prefetch, keyframes=8)
        try:
            view = eng.new_view()
            ask_view = eng.new_view()
            for k, f in enumerate(frames[100:115]):
                eng.process(ask_view, f, timestamp=k / 10)
            ask(eng, ask_view, QUESTION)  # warm-up on another view (first-call costs, image and video shapes)
            ask(eng, ask_view, "What changed for [1] between <1> and <2>?")
            for k, f in enumerate(frames[:90]):
                eng.process(view, f, timestamp=k / 10)
                if prefetch:
                    time.sleep(0.002)  # camera pacing leaves the idle model time to encode keyframes
            if eng._pool is not None:
                eng._pool.submit(lambda: None).result()
            n = len(view.keyframes())
            out["prefetched" if prefetch else "on_demand"] = {
                "keyframes": n, **ask(eng, view, f"What changed for [1] between <1> and <{n}>?")}
        finally:
            eng.close()
    return out


def measure_demo(bundle: Path, *, llm: str = "f16", vision: str = "fp32", threads: int = 1, frames: int = 300,
                 repeats: int = 5, max_new_tokens: int = 32) -> dict:
    """Marked output, question latencies and ``<t>`` latencies of the demo engine on ``bundle`` (built from the
    tiny default model when missing): ``{"env", "marked_output", "questions", "raw", "video"}``."""
    bundle = ensure_bundle(Path(bundle))
    clip = recorded_frames(max(frames, 120, 40 + 3 * repeats))
    eng = DemoEngine(bundle, llm=llm, vision=vision, n_threads=threads, max_new_tokens=max_new_tokens, prefetch=False)
    try:
        marked = bench_frames(eng, clip[:frames])
        q = bench_questions(eng, clip, repeats)
    finally:
        eng.close()
    video = bench_video(bundle, clip, llm=llm, vision=vision, threads=threads, max_new_tokens=max_new_tokens)
    summary = {k: {m: stats(r[m] for r in rows) for m in ("ttft_ms", "vision_ms")} | {
        "reused_tokens": rows[0]["reused_tokens"], "prompt_tokens": rows[0]["prompt_tokens"]}
        for k, rows in q.items()}
    import llama_cpp
    import onnxruntime

    env = {"python": platform.python_version(), "cpu": cpu_name(), "machine": platform.machine(),
           "threads": threads, "llama_cpp_python": llama_cpp.__version__, "onnxruntime": onnxruntime.__version__,
           "bundle": str(bundle), "llm": llm, "vision": vision, "max_new_tokens": max_new_tokens}
    return {"env": env, "marked_output": marked, "questions": summary, "raw": q, "video": video}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=Path("out/bundle"))
    ap.add_argument("--llm", default="f16")
    ap.add_argument("--vision", default="fp32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--out", type=Path, default=Path("out/bench/demo.json"))
    args = ap.parse_args(argv)

    rep = measure_demo(args.bundle, llm=args.llm, vision=args.vision, threads=args.threads, frames=args.frames,
                       repeats=args.repeats, max_new_tokens=args.max_new_tokens)
    env, marked, summary, video = rep["env"], rep["marked_output"], rep["questions"], rep["video"]
    print(f"demo engine benchmark: {env['bundle']} (llm {args.llm}, vision {args.vision}), {args.threads} threads, "
          f"{env['cpu']}\n")
    print("| marked output (640x480, 3 moving objects) | value |")
    print("|---|---|")
    print(f"| marker, frames per second | {marked['fps_marked']} |")
    print(f"| marker + JPEG encode (what the app sends), fps | {marked['fps_marked_jpeg']} |")
    print(f"| marker ms per frame (median / max) | {marked['marker_ms']['median']} / {marked['marker_ms']['max']} |")
    print()
    print("| question | TTFT ms (median, min-max) | vision ms (median) | tokens reused / prompt |")
    print("|---|---|---|---|")
    names = {"uncached": "new frame (uncached)", "cached": "same frame, same question (cached)",
             "same_frame_new_question": "same frame, new question"}
    for k, s in summary.items():
        print(f"| {names[k]} | {s['ttft_ms']['median']} ({s['ttft_ms']['min']}-{s['ttft_ms']['max']}) | "
              f"{s['vision_ms']['median']} | {s['reused_tokens']} / {s['prompt_tokens']} |")
    for k, v in video.items():
        label = "keyframes encoded in the background" if k == "prefetched" else "keyframes encoded on demand"
        print(f"| <t> over {v['keyframes']} keyframes, {label} | {v['ttft_ms']} | {v['vision_ms']} | "
              f"{v['reused_tokens']} / {v['prompt_tokens']} |")
    write_json(args.out, rep)  # atomic: a killed run leaves the previous report
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
