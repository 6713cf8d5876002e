"""The on-device marker on one core: per-stage milliseconds, frames per second and tracking quality.

Runs detect -> track -> render on a synthetic 640x480 clip (moving shapes with ground truth,
:mod:`instit_edge.marker.synthvideo`) on ONE core: OpenCV and BLAS limited to one thread and, where the
OS allows it, the process pinned to one CPU. Prints a markdown table and writes JSON.

    python -m instit_edge.bench.marker_speed --out out/bench/marker.json
    python -m instit_edge.bench.marker_speed --styles box+id,mask+id,none --frames 600

The issue's target: >= 60 fps for motion + tracking + rendering on one core. (``instit-edge bench`` times
the marker too, per detector at the run's thread count; this one compares mark styles on one pinned core
and scores the tracks.)
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

STAGES = ("detect_ms", "track_ms", "render_ms")
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def one_core() -> str:
    """OpenCV on one thread and the process pinned to one CPU (where the OS allows it); says which."""
    import cv2

    cv2.setNumThreads(1)
    if hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[0]})
        return f"pinned to CPU {cpus[0]}"
    return "not pinned (no sched_setaffinity)"


def clip_frames(n_frames: int, size=(640, 480), objects: int = 4, seed: int = 0):
    """A 90-frame scene (5 empty frames, then the objects move) played back and forth: continuous motion of
    well-separated objects for any number of frames. Returns (frames, ground truth per frame)."""
    from ..marker.synthvideo import moving_shapes

    clip = moving_shapes(seed, n_objects=objects, n_frames=90, size=size, warmup=5)
    order = list(range(90))
    while len(order) < n_frames:
        order += list(range(88, 4, -1)) + list(range(6, 90))
    order = order[:n_frames]
    return [clip.frames[i] for i in order], [clip.gt[i] for i in order]


def measure_style(frames, gt, detector: str, style: str, skip: int, **detector_kwargs) -> dict:
    """Stage and wall milliseconds (mean, p50, p95), frames per second and track quality of one style."""
    import numpy as np

    from ..marker.pipeline import Marker
    from ..marker.synthvideo import track_metrics

    marker = Marker(detector, style=style, **detector_kwargs)
    rows, preds, wall = [], [], []
    for f in frames:
        t0 = time.perf_counter()
        mf = marker.process(f)
        wall.append((time.perf_counter() - t0) * 1e3)
        rows.append([mf.timings[k] for k in STAGES])
        preds.append({i.id: i.box for i in mf.instances})
    t = np.array(rows[skip:])
    w = np.array(wall[skip:])
    out = {"detector": detector, "style": style, "frames": len(t)}
    for k, col in zip(STAGES, t.T):
        out[k] = {"mean": float(col.mean()), "p50": float(np.percentile(col, 50)), "p95": float(np.percentile(col, 95))}
    out["total_ms"] = {"mean": float(w.mean()), "p50": float(np.percentile(w, 50)), "p95": float(np.percentile(w, 95))}
    out["fps"] = 1000.0 / float(w.mean())
    m = track_metrics(gt, preds)
    out["quality"] = {k: m[k] for k in ("recall", "precision", "id_switches")}
    return out


def measure_marker(*, frames: int = 300, size=(640, 480), objects: int = 4, detector: str = "motion",
                   styles=("box+id", "mask+id"), skip: int = 10, seed: int = 0, work_width: int | None = None) -> dict:
    """Pin to one core, then time every style on the same frames: ``{"env": ..., "results": [...]}``."""
    import cv2
    import numpy as np

    from ..system import cpu_name

    pin = one_core()
    W, H = size
    clip, gt = clip_frames(frames, (W, H), objects, seed)
    kw = {"work_width": work_width} if work_width else {}
    results = [measure_style(clip, gt, detector, s.strip(), skip, **kw) for s in styles]
    for r in results:
        r["work_width"] = work_width or 320
    env = {"python": platform.python_version(), "opencv": cv2.__version__, "numpy": np.__version__,
           "machine": platform.machine(), "cpu": cpu_name(),
           "cv2_threads": cv2.getNumThreads(), "affinity": pin, "size": f"{W}x{H}", "objects": objects,
           "frames": frames}
    return {"env": env, "results": results}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("out/bench/marker.json"), help="JSON report path")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--size", default="640x480", help="WxH")
    ap.add_argument("--objects", type=int, default=4)
    ap.add_argument("--detector", default="motion")
    ap.add_argument("--styles", default="box+id,mask+id", help="comma list of mark styles to time")
    ap.add_argument("--skip", type=int, default=10, help="first frames left out of the statistics")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work-width", type=int, default=None,
                    help="motion detector working width (default: the detector's, 320 px)")
    args = ap.parse_args(argv)
    for v in THREAD_VARS:  # before numpy / OpenCV start their thread pools
        os.environ.setdefault(v, "1")

    W, H = (int(v) for v in args.size.lower().split("x"))
    rep = measure_marker(frames=args.frames, size=(W, H), objects=args.objects, detector=args.detector,
                         styles=args.styles.split(","), skip=args.skip, seed=args.seed, work_width=args.work_width)
    env, results = rep["env"], rep["results"]
    print(f"marker benchmark, {W}x{H}, {args.objects} moving objects, {args.frames} frames, one core "
          f"({env['affinity']}), {env['cpu']}, motion working width {args.work_width or 320}\n")
    print("| detector | style | detect ms | track ms | render ms | total ms (p50 / p95) | fps | recall | ID switches |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['detector']} | {r['style']} | {r['detect_ms']['mean']:.2f} | {r['track_ms']['mean']:.2f} | "
              f"{r['render_ms']['mean']:.2f} | {r['total_ms']['mean']:.2f} ({r['total_ms']['p50']:.2f} / "
              f"{r['total_ms']['p95']:.2f}) | {r['fps']:.0f} | {r['quality']['recall']:.3f} | "
              f"{r['quality']['id_switches']} |")
    from ..atomic import write_json

    write_json(args.out, rep)  # atomic: a killed run leaves the previous report
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
