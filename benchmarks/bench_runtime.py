"""The standard runtime benchmark (``make bench``): the edge preset at 2 threads, or a reduced run.

    python benchmarks/bench_runtime.py --out out/bench            # standard set (edge preset, 2 threads)
    python benchmarks/bench_runtime.py --out out/bench-quick --quick   # CI: tiny preset, one repetition

The standard set builds the ``edge`` preset once (checkpoint, bundle with f16 / bf16 / q8_0 / q4_0 /
q4_k_m / gptq LLMs and fp32 / int8 vision, cached under OUT/models), then measures every configuration in a fresh process:
the bundle runtime per LLM variant, transformers fp32 (eager, sdpa), ONNX vision vs libmtmd, the marker
and the memory roofline. It writes OUT/results.json, OUT/report.md and OUT/*.png and prints the report.
Same as ``instit-edge bench edge --out OUT``; see :mod:`instit_edge.bench`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from instit_edge.bench.runner import BenchConfig, run_benchmark
from instit_edge.errors import InstitError
from instit_edge.system import split_csv

STANDARD = {"target": "edge", "variants": "f16,bf16,q8_0,q4_0,q4_k_m,gptq", "vision": "fp32,int8", "reps": 3, "warmup": 1,
            "new_tokens": 64, "baseline_reps": 2}
QUICK = {"target": "tiny", "variants": "f16,q4_k_m", "vision": "fp32,int8", "reps": 1, "warmup": 0,
         "new_tokens": 16, "baseline_reps": 1}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("out/bench"))
    ap.add_argument("--quick", action="store_true", help="reduced run: tiny preset, one repetition, 16 tokens")
    ap.add_argument("--target", help="bundle directory or preset (default: edge; tiny with --quick)")
    ap.add_argument("--variants", help="LLM variants (comma list)")
    ap.add_argument("--vision", help="vision variants (comma list)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int)
    ap.add_argument("--warmup", type=int)
    ap.add_argument("--new-tokens", type=int)
    ap.add_argument("--baseline", default="eager,sdpa,sdpa-bf16",
                    help="transformers baselines: eager, sdpa, eager-bf16, sdpa-bf16 ('' = none)")
    ap.add_argument("--baseline-reps", type=int)
    ap.add_argument("--no-mtmd", action="store_true")
    ap.add_argument("--no-marker", action="store_true")
    args = ap.parse_args(argv)

    d = QUICK if args.quick else STANDARD

    def pick(name: str):
        v = getattr(args, name)
        return d[name] if v is None else v

    try:
        cfg = BenchConfig(
            target=pick("target"), out=args.out, variants=split_csv(pick("variants")), vision=split_csv(pick("vision")),
            threads=args.threads, reps=pick("reps"), warmup=pick("warmup"), new_tokens=pick("new_tokens"),
            baseline=split_csv(args.baseline), baseline_reps=pick("baseline_reps"), baseline_shared_process=args.quick,
            mtmd=not args.no_mtmd, marker=not args.no_marker, marker_frames=30 if args.quick else 120,
            roofline_mb=128 if args.quick else 512, quick=args.quick,
        )
        res = run_benchmark(cfg)
    except InstitError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return e.exit_code
    print((args.out / "report.md").read_text())
    print(f"wrote {args.out}/results.json, report.md, {', '.join(res.get('plots', []))} in {res['wall_s']:.0f} s")
    return 1 if res.get("errors") else 0


if __name__ == "__main__":
    raise SystemExit(main())
