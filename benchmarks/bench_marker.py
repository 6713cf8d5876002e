"""Benchmark the on-device marker: per-stage milliseconds and frames per second (not a test).

Runs detect -> track -> render on a synthetic 640x480 clip (moving shapes
with ground truth, :mod:`instit_edge.marker.synthvideo`) on ONE core:
OpenCV and BLAS limited to one thread and, where the OS allows it, the
process pinned to one CPU. Prints a markdown table and writes JSON.

    python benchmarks/bench_marker.py --out out/bench/marker.json
    python benchmarks/bench_marker.py --styles box+id,mask+id,none --frames 600

The issue's target: >= 60 fps for motion + tracking + rendering on one core.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from instit_edge.marker.pipeline import Marker  # noqa: E402
from instit_edge.marker.synthvideo import moving_shapes, track_metrics  # noqa: E402
from instit_edge.system import cpu_name  # noqa: E402

STAGES = ("detect_ms", "track_ms", "render_ms")




def one_core() -> str:
    cv2.setNumThreads(1)
    if hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[0]})
        return f"pinned to CPU {cpus[0]}"
    return "not pinned (no sched_setaffinity)"


def bench(frames, gt, detector: str, style: str, skip: int, **detector_kwargs) -> dict:
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

    pin = one_core()
    W, H = (int(v) for v in args.size.lower().split("x"))
    # a 90-frame scene (5 empty frames, then the objects move) played back and forth: continuous motion of
    # well-separated objects for any number of frames
    clip = moving_shapes(args.seed, n_objects=args.objects, n_frames=90, size=(W, H), warmup=5)
    order = list(range(90))
    while len(order) < args.frames:
        order += list(range(88, 4, -1)) + list(range(6, 90))
    order = order[: args.frames]
    frames, gt = [clip.frames[i] for i in order], [clip.gt[i] for i in order]
    kw = {"work_width": args.work_width} if args.work_width else {}
    results = [bench(frames, gt, args.detector, s.strip(), args.skip, **kw) for s in args.styles.split(",")]
    for r in results:
        r["work_width"] = args.work_width or 320
    env = {"python": platform.python_version(), "opencv": cv2.__version__, "numpy": np.__version__,
           "machine": platform.machine(), "cpu": cpu_name(),
           "cv2_threads": cv2.getNumThreads(), "affinity": pin, "size": f"{W}x{H}", "objects": args.objects}

    print(f"marker benchmark, {W}x{H}, {args.objects} moving objects, {args.frames} frames, one core ({pin}), "
          f"{env['cpu']}, motion working width {args.work_width or 320}\n")
    print("| detector | style | detect ms | track ms | render ms | total ms (p50 / p95) | fps | recall | ID switches |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['detector']} | {r['style']} | {r['detect_ms']['mean']:.2f} | {r['track_ms']['mean']:.2f} | "
              f"{r['render_ms']['mean']:.2f} | {r['total_ms']['mean']:.2f} ({r['total_ms']['p50']:.2f} / "
              f"{r['total_ms']['p95']:.2f}) | {r['fps']:.0f} | {r['quality']['recall']:.3f} | "
              f"{r['quality']['id_switches']} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"env": env, "results": results}, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
