"""Measurements shared by the parent and the children: summaries of repetitions, peak RSS, the machine,
and the weight bytes a decoded token reads from a GGUF file."""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from ..system import cpu_flags, cpu_name, package_version


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
    info["cpu"] = cpu_name()
    flags = cpu_flags()
    info["simd"] = " ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags)
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
        info[mod] = package_version({"llama_cpp": "llama-cpp-python"}.get(mod, mod))
    return info


def gguf_weight_bytes(path: str | Path) -> dict:
    """Bytes of weights a decoded token reads: every tensor but ``token_embd`` (a row lookup).

    When the model has no ``output.weight`` (tied embeddings), ``token_embd`` is the output matrix and is read.
    """
    import gguf

    r = gguf.GGUFReader(str(path))
    by_type: dict[str, int] = {}
    total = embd = params = embd_params = 0
    has_output = False
    for t in r.tensors:
        nb = int(t.n_bytes)
        if t.name == "token_embd.weight":
            embd, embd_params = nb, int(t.n_elements)
            continue
        if t.name == "output.weight":
            has_output = True
        total += nb
        params += int(t.n_elements)
        by_type[t.tensor_type.name] = by_type.get(t.tensor_type.name, 0) + nb
    if not has_output:
        total += embd
        params += embd_params
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
    # a prompt token costs ~2 FLOPs per weight it multiplies (attention's n_ctx-dependent part not counted)
    return {"bytes_per_token": total, "params_per_token": params, "token_embd_bytes": embd, "file_bytes": Path(path).stat().st_size,
            "by_type": by_type, "tied_output": not has_output, "n_layer": n_layer, "n_head_kv": n_head_kv,
            "head_dim": head_dim}
