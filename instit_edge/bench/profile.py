"""Where llama.cpp's prefill time goes: a sampling profile of the prefill alone, grouped by kind of work.

The ``prefill`` child (:mod:`.children`) loads a bundle, computes the image rows, then runs the same cold
prefill several times. It runs under ``perf record`` (linux-perf, software ``cpu-clock`` event, so it works on
virtual machines without hardware counters) started with its events disabled; the child enables them through
``perf``'s control FIFO just around the prefills, so loading, vision and Python start-up are not in the
profile. ``perf report`` then gives the share of samples per shared object and symbol, which :func:`group`
sorts into the kinds of work a person can act on (quantized matmul kernels, activation quantization,
attention, thread synchronisation, other ggml ops, the rest). llama-cpp-python's libraries are stripped, so
static functions (llamafile's tinyBLAS GEMMs among them) are bare addresses: :func:`read_stripped` reads their
instructions with objdump and counts code with dot-product / FMA instructions as matmul kernels (measured on
the edge preset, q4_k_m, AMX-free build: 80% of the prefill was such code, ``vpdpbusd`` / ``vfmadd231ps``,
which the symbol names alone had put under "other ggml ops").
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
STRIPPED = "unresolved code in ggml (no symbol, instructions unread)"
MATMUL = KINDS[0][0]
# dot-product / FMA instructions of a GEMM inner loop (x86 AVX-512 VNNI / BF16 / FMA / AMX, Arm NEON / SVE)
_MATMUL_INSNS = re.compile(r"^(vpdpbusds?|vpdpbssds?|vpdpwssds?|vdpbf16ps|vfn?madd\w*|vpmaddubsw|vpmaddwd|tdp\w+|"
                           r"fmla|sdot|udot|smmla|ummla|bfmmla|bfdot)$")
_HEX = re.compile(r"^0x[0-9a-f]+$")
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
    if _HEX.match(symbol) and re.search(r"libggml|libllama", dso):
        return STRIPPED  # a static function of a stripped library: "other ggml ops" would be a guess
    for name, sym_re, dso_re in KINDS:
        if re.search(sym_re, symbol) or re.search(dso_re, dso):
            return name
    return OTHER


def instructions_at(library: Path, address: int, window: int = 96) -> list[str]:
    """Mnemonics of the machine code around ``address`` in ``library`` (objdump), [] when unreadable."""
    objdump = shutil.which("objdump")
    if not objdump or not library.is_file():
        return []
    try:
        p = subprocess.run([objdump, "-d", "--no-show-raw-insn", f"--start-address={max(0, address - window)}",
                            f"--stop-address={address + window}", str(library)], capture_output=True, text=True,
                           timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return []
    out = []
    for line in p.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and parts[0].strip().endswith(":"):
            out.append(parts[1].split()[0] if parts[1].split() else "")
    return [m for m in out if m]


def read_stripped(rows: list[dict], libdirs: list[Path]) -> list[dict]:
    """Name the kind of work of sampled addresses without a symbol (llama-cpp-python's libraries are stripped:
    llamafile's tinyBLAS GEMMs and other static functions show as bare addresses) from their instructions:
    a dot-product / FMA instruction within the window marks a matmul kernel."""
    out = []
    for r in rows:
        r = dict(r)
        if _HEX.match(r["symbol"]) and re.search(r"libggml|libllama", r["dso"]):
            lib = next((d / r["dso"] for d in libdirs if (d / r["dso"]).is_file()), None)
            insns = instructions_at(lib, int(r["symbol"], 16)) if lib else []
            hits = sorted({m for m in insns if _MATMUL_INSNS.match(m)})
            if hits:
                r["kind"] = MATMUL
                r["note"] = "no symbol; " + ", ".join(hits[:3])
            elif insns:
                r["kind"] = KINDS[-2][0]  # read, and no GEMM instruction: other ggml ops
                r["note"] = "no symbol"
        out.append(r)
    return out


def group(rows: list[dict], top: int = 12) -> dict:
    """Shares per kind of work (sum 100 over the sampled rows) and the top symbols; a row that already has
    a ``kind`` (:func:`read_stripped`) keeps it."""
    total = sum(r["share"] for r in rows) or 1.0
    rows = [{**r, "share": r["share"] * 100.0 / total, "kind": r.get("kind") or kind_of(r["dso"], r["symbol"])}
            for r in rows]
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
    return group(read_stripped(rows, _llama_libdirs()))


def _llama_libdirs() -> list[Path]:
    try:
        import llama_cpp
    except ImportError:
        return []
    root = Path(llama_cpp.__file__).parent
    return [root / "lib", root]


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
