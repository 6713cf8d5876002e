"""Soak run of the webcam demo engine: does a long session leak, slow down or stall?

Drives :class:`instit_edge.demo.engine.DemoEngine` (what the Gradio app calls)
from N viewer threads at once, each playing recorded 640x480 frames at a fixed
rate through its own marker view and asking a question every few seconds
(``[ID]`` questions about the current frame and ``<t>`` questions over the
keyframes), for a fixed duration. Every ``--sample`` seconds it records the
process RSS, the marked frames per second of each viewer and the answer
latencies of that window. The report (JSON + a PNG of the three series over
time) gives the RSS growth after warm-up (target < 5 %), frames per second and
latency percentiles, first window against last.

    python -m instit_edge.bench.demo_soak                                   # out/bundle, 4 viewers, 10 minutes
    python -m instit_edge.bench.demo_soak --viewers 4 --minutes 10 --out out/bench/soak
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import numpy as np

from ..demo.engine import DemoEngine
from .demo_latency import ensure_bundle, recorded_frames

# {id}: an instance visible in the viewer's newest frame (IDs are never reused, so fixed IDs go stale)
QUESTIONS = ("What is [{id}] doing?", "What is the color of [{id}]?", "What changed for [{id}] between <1> and <2>?",
             "Where is [{id}] located in the image?")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def viewer(engine, frames, stop, fps: float, ask_every: float, k: int, log: list, lock: threading.Lock) -> None:
    view = engine.new_view()
    period, next_q, i, q = 1.0 / fps, time.monotonic() + ask_every * (0.5 + 0.25 * k), 0, k
    while not stop.is_set():
        t = time.monotonic()
        res = engine.process(view, frames[i % len(frames)])
        i += 1
        with lock:
            log.append(("frame", k, time.monotonic(), None))
        if time.monotonic() >= next_q and res.instances:
            visible = [r["id"] for r in res.instances]
            t0 = time.perf_counter()
            reply = engine.ask(view, QUESTIONS[q % len(QUESTIONS)].format(id=visible[q % len(visible)]))
            answered = engine.last.answered
            with lock:
                log.append(("answer", k, time.monotonic(), (time.perf_counter() - t0) * 1e3 if answered else None))
                if not answered:
                    log.append(("reply", k, time.monotonic(), reply[:80]))
            q += 1
            next_q = time.monotonic() + ask_every
        time.sleep(max(0.0, period - (time.monotonic() - t)))


def soak(bundle: Path, *, llm: str = "q4_k_m", vision: str = "int8", viewers: int = 4, minutes: float = 10.0,
         fps: float = 10.0, ask_every: float = 4.0, sample: float = 15.0, warmup: float = 60.0, threads: int = 1,
         out: Path = Path("out/bench/soak"), echo=print) -> dict:
    """Run ``viewers`` viewer threads against one engine for ``minutes``; write OUT/soak.json (and soak.png with
    matplotlib) and return the report. ``llm`` / ``vision`` fall back to f16 / fp32 when the bundle lacks them;
    ``echo`` gets one line per sampled window."""
    bundle = ensure_bundle(Path(bundle))
    variants = json.loads((bundle / "bundle.json").read_text())["files"]
    llm = llm if llm in variants.get("llm", {}) else "f16"
    vision = vision if vision in variants.get("vision", {}) else "fp32"
    engine = DemoEngine(bundle, llm=llm, vision=vision, detector="motion", n_threads=threads, max_new_tokens=24)
    frames = recorded_frames(240)
    stop, lock, log = threading.Event(), threading.Lock(), []
    workers = [threading.Thread(target=viewer, args=(engine, frames, stop, fps, ask_every, k, log, lock),
                                daemon=True) for k in range(viewers)]
    t_start = time.monotonic()
    for w in workers:
        w.start()
    samples = []
    end = t_start + minutes * 60
    seen = 0
    while time.monotonic() < end:
        time.sleep(min(sample, max(0.0, end - time.monotonic())))
        now = time.monotonic()
        with lock:
            window = log[seen:]
            seen = len(log)
        frames_n = sum(1 for e in window if e[0] == "frame")
        lat = [e[3] for e in window if e[0] == "answer" and e[3] is not None]
        prev = samples[-1]["t"] if samples else 0.0
        span = (now - t_start) - prev
        samples.append({"t": round(now - t_start, 1), "rss_mb": round(rss_mb(), 1),
                        "fps_per_viewer": round(frames_n / span / viewers, 2) if span > 0 else None,
                        "answers": len(lat), "latency_ms_p50": round(float(np.median(lat)), 1) if lat else None,
                        "latency_ms_max": round(max(lat), 1) if lat else None})
        s = samples[-1]
        echo(f"t={s['t']:7.1f}s rss={s['rss_mb']:8.1f} MB fps/viewer={s['fps_per_viewer']} "
             f"answers={s['answers']} p50={s['latency_ms_p50']} ms")
    stop.set()
    for w in workers:
        w.join(timeout=30)
    engine.close()

    warm = [s for s in samples if s["t"] >= warmup] or samples
    base, last = warm[0]["rss_mb"], samples[-1]["rss_mb"]
    unanswered = [e[3] for e in log if e[0] == "reply"]
    lat_all = [e[3] for e in log if e[0] == "answer" and e[3] is not None]
    report = {"bundle": str(bundle), "llm": llm, "vision": vision, "viewers": viewers, "minutes": minutes,
              "fps_sent_per_viewer": fps, "ask_every_s": ask_every, "threads": threads,
              "rss_after_warmup_mb": base, "rss_end_mb": last,
              "rss_growth_after_warmup_pct": round(100 * (last - base) / base, 2),
              "rss_target_pct": 5.0, "rss_verdict": "PASS" if (last - base) / base < 0.05 else "MISS",
              "answers": len(lat_all), "not_answered": len(unanswered), "not_answered_examples": unanswered[:5],
              "latency_ms_p50": round(float(np.median(lat_all)), 1) if lat_all else None,
              "latency_ms_p95": round(float(np.percentile(lat_all, 95)), 1) if lat_all else None,
              "fps_first_window": samples[0]["fps_per_viewer"], "fps_last_window": samples[-1]["fps_per_viewer"],
              "samples": samples}
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(report, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        t = [s["t"] / 60 for s in samples]
        fig, ax = plt.subplots(3, 1, figsize=(7, 7), sharex=True)
        ax[0].plot(t, [s["rss_mb"] for s in samples])
        ax[0].set_ylabel("RSS MB")
        ax[0].axvline(warmup / 60, ls=":", c="grey")
        ax[1].plot(t, [s["fps_per_viewer"] for s in samples])
        ax[1].set_ylabel("fps / viewer")
        ax[2].plot(t, [s["latency_ms_p50"] for s in samples], label="p50")
        ax[2].plot(t, [s["latency_ms_max"] for s in samples], label="max")
        ax[2].set_ylabel("answer ms")
        ax[2].set_xlabel("minutes")
        ax[2].legend()
        fig.suptitle(f"demo soak: {viewers} viewers, {llm} + {vision}")
        fig.tight_layout()
        fig.savefig(out / "soak.png", dpi=100)
    except ImportError:
        pass
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=Path("out/bundle"))
    ap.add_argument("--llm", default="q4_k_m")
    ap.add_argument("--vision", default="int8")
    ap.add_argument("--viewers", type=int, default=4)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--fps", type=float, default=10.0, help="Frames per second each viewer sends.")
    ap.add_argument("--ask-every", type=float, default=4.0, help="Seconds between questions of one viewer.")
    ap.add_argument("--sample", type=float, default=15.0, help="Seconds per reported window.")
    ap.add_argument("--warmup", type=float, default=60.0, help="Seconds before the RSS baseline is taken.")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("out/bench/soak"))
    a = ap.parse_args(argv)
    report = soak(a.bundle, llm=a.llm, vision=a.vision, viewers=a.viewers, minutes=a.minutes, fps=a.fps,
                  ask_every=a.ask_every, sample=a.sample, warmup=a.warmup, threads=a.threads, out=a.out,
                  echo=lambda line: print(line, flush=True))
    print(json.dumps({k: v for k, v in report.items() if k != "samples"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
