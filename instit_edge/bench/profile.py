"""Where llama.cpp's prefill time goes: a sampling profile of the prefill alone, grouped by kind of work.

The ``prefill`` child (:mod:`.children`) loads a bundle, computes the image rows, then runs the same cold
prefill several times. It runs under ``perf record`` (linux-perf, software ``cpu-clock`` event, so it works on
virtual machines without hardware counters) started with its events disabled; the child enables them through
``perf``'s control FIFO just around the prefills, so loading, vision and Python start-up are not in the
profile. ``perf report`` then gives the share of samples per shared object and symbol, which :func:`group`
sorts into the kinds of work a person can act on (quantized matmul kernels, activation quantization,
attention, thread synchronisation, other ggml ops, the rest).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

# kind of work -> (symbol pattern, shared-object pattern); the first match wins, in this order
KINDS: list[tuple[str, str, str]] = [
    ("matmul kernels", r"ggml_vec_dot_|ggml_gemm_|ggml_gemv_|sgemm|tinyBLAS|llamafile|mul_mat|gemm", r"$^"),
    ("activation quantization", r"quantize_row_|quantize_mat_|from_float|ggml_cpu_fp32_to|fp32_to_bf16|fp32_to_fp16",
     r"$^"),
    ("attention (softmax, flash-attn)", r"soft_max|flash_attn|ggml_vec_scale|ggml_vec_mad", r"$^"),
    ("thread sync (barrier, OpenMP)", r"ggml_barrier|gomp|omp_|sched_yield|futex|ggml_graph_compute_thread_sync",
     r"libgomp|libiomp"),
    ("other ggml ops (norm, rope, add, copy)", r"ggml_", r"libggml|libllama"),
    ("kernel", r"$^", r"kernel"),
]
OTHER = "the rest (Python, libc, ...)"
_LINE = re.compile(r"^\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.+?)\s*$")


def perf_available() -> str | None:
    """The perf binary when it can sample here (software event), else None."""
    perf = shutil.which("perf")
    if not perf:
        return None
    try:
        p = subprocess.run([perf, "record", "-e", "cpu-clock", "-o", os.devnull, "--", "true"], capture_output=True,
                           text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return perf if p.returncode == 0 else None


def record_command(perf: str, data: Path, ctl_fifo: Path, ack_fifo: Path, freq: int = 499) -> list[str]:
    """The ``perf record`` prefix for a child that enables the events itself (``-D -1`` + control FIFOs)."""
    return [perf, "record", "-e", "cpu-clock", "-F", str(freq), "-D", "-1", "--control",
            f"fifo:{ctl_fifo},{ack_fifo}", "-o", str(data), "--"]


def parse_report(text: str) -> list[dict]:
    """``perf report --stdio --no-children --sort dso,sym`` lines -> [{share, dso, symbol}] (share in %)."""
    rows = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            rows.append({"share": float(m.group(1)), "dso": m.group(2), "symbol": m.group(4)})
    return rows


def kind_of(dso: str, symbol: str) -> str:
    for name, sym_re, dso_re in KINDS:
        if re.search(sym_re, symbol) or re.search(dso_re, dso):
            return name
    return OTHER


def group(rows: list[dict], top: int = 12) -> dict:
    """Shares per kind of work (sum 100 over the sampled rows) and the top symbols."""
    total = sum(r["share"] for r in rows) or 1.0
    rows = [{**r, "share": r["share"] * 100.0 / total, "kind": kind_of(r["dso"], r["symbol"])} for r in rows]
    kinds: dict[str, float] = {}
    for r in rows:
        kinds[r["kind"]] = kinds.get(r["kind"], 0.0) + r["share"]
    return {"kinds": dict(sorted(kinds.items(), key=lambda kv: -kv[1])),
            "top": sorted(rows, key=lambda r: -r["share"])[:top]}


def report(perf: str, data: Path) -> dict:
    """Read a perf data file back: samples grouped by kind, top symbols."""
    p = subprocess.run([perf, "report", "-i", str(data), "--stdio", "--no-children", "--sort", "dso,sym", "-q",
                        "--percent-limit", "0.05"], capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        raise RuntimeError(f"perf report failed: {p.stderr.strip()[-300:]}")
    rows = parse_report(p.stdout)
    if not rows:
        raise RuntimeError("perf recorded no samples in the prefill window")
    return group(rows)


class Control:
    """The child's side of perf's control FIFOs: enable / disable sampling around the measured work."""

    def __init__(self, ctl: str | None, ack: str | None):
        self.ctl = open(ctl, "w") if ctl else None  # noqa: SIM115 - held for the child's lifetime
        self.ack = open(ack) if ack else None  # noqa: SIM115

    def _send(self, cmd: str) -> None:
        if self.ctl is None:
            return
        self.ctl.write(cmd + "\n")
        self.ctl.flush()
        if self.ack is not None:
            self.ack.readline()  # perf answers "ack" once the events are switched

    def enable(self) -> None:
        self._send("enable")

    def disable(self) -> None:
        self._send("disable")
