"""``instit-edge doctor``: what this machine can run, and how to fix what it cannot (:func:`run_doctor`; the
command is in :mod:`.commands`)."""

from __future__ import annotations

import importlib
import platform
import shutil
from pathlib import Path

from ..system import package_version


def opencv_wheels() -> list[str]:
    """The installed distributions that provide the ``cv2`` package (more than one collide in one folder)."""
    from importlib.metadata import distributions

    found = []
    for d in distributions():
        name = (d.metadata["Name"] or "").lower()
        if name.startswith("opencv") and any(str(f).startswith("cv2/") for f in (d.files or [])):
            found.append(f"{name} {d.version}")
    return sorted(set(found))


BUNDLE_DISK_BYTES = 1 << 30  # a tiny bundle is a few MB, the edge preset's ~2 GB: warn below 1 GiB


def _environment_rows(out_dir: Path) -> tuple[list, list[str]]:
    """Write access and free disk where outputs go, compilers for a first llama-cpp-python build, the CPU."""
    import os

    rows, missing = [], []
    probe = out_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if os.access(probe, os.W_OK | os.X_OK):
        free = shutil.disk_usage(probe).free
        ok = free >= BUNDLE_DISK_BYTES
        rows.append(("output folder", True if ok else False,
                     f"{out_dir} writable; {free / 2**30:.1f} GiB free" + ("" if ok else " (a bundle needs ~1 GiB)")))
        if not ok:
            missing.append(f"free disk: only {free / 2**30:.2f} GiB free under {probe}; free some space or use --out")
    else:
        rows.append(("output folder", False, f"{probe} is not writable"))
        missing.append(f"write access: cannot write to {probe}; run from a folder you own or pass --out")
    tools = {t: shutil.which(t) for t in ("cc", "c++", "cmake")}
    have = [t for t, p in tools.items() if p]
    rows.append(("compilers", True if len(have) == 3 else None,
                 ", ".join(have) + ("" if len(have) == 3 else
                                    f"; missing {', '.join(t for t in tools if not tools[t])}: a first "
                                    "llama-cpp-python install compiles llama.cpp (`apt-get install build-essential "
                                    "cmake`)")))
    try:
        from ..runtime.llm_llamacpp import build_has_amx, cpu_has_amx, weight_repacking
        from ..system import cpu_name

        cpu = cpu_name()
        amx = cpu_has_amx()
        kernels = f" (llama.cpp build: {'with' if build_has_amx() else 'without'} AMX kernels)" if amx else ""
        rows.append(("cpu", True, f"{cpu}, {os.cpu_count()} cores; AMX: {'yes' if amx else 'no'}{kernels}; "
                                  f"llama.cpp weight repacking: {'on' if weight_repacking() else 'off'}"))
    except Exception:  # the runtime import needs nothing heavy, but doctor must never crash
        pass
    return rows, missing


def run_doctor(out_dir: str | Path = "out") -> tuple[list[tuple[str, bool | None, str]], list[str]]:
    """Rows of (component, ok / None = optional and absent, detail) and the list of required misses."""
    rows: list[tuple[str, bool | None, str]] = []
    missing: list[str] = []
    rows.append(("python", True, platform.python_version()))

    # llama.cpp (required)
    try:
        import llama_cpp

        detail = f"llama-cpp-python {package_version('llama-cpp-python')}"
        gpu = bool(llama_cpp.llama_supports_gpu_offload())
        detail += f"; GPU offload: {'yes' if gpu else 'no (CPU build)'}"
        try:
            importlib.import_module("llama_cpp.mtmd_cpp")
            detail += "; mtmd: yes"
        except Exception:
            detail += "; mtmd: no"
        rows.append(("llama.cpp", True, detail))
    except Exception as e:
        rows.append(("llama.cpp", False, str(e).splitlines()[0]))
        missing.append("llama-cpp-python: `pip install 'llama-cpp-python>=0.3.36'` (compiles llama.cpp, ~15 min)")

    # ONNX Runtime (required)
    try:
        import onnxruntime as ort

        rows.append(("onnxruntime", True, f"{ort.__version__}; providers: {', '.join(ort.get_available_providers())}"))
    except Exception as e:
        rows.append(("onnxruntime", False, str(e).splitlines()[0]))
        missing.append("onnxruntime: `pip install onnxruntime` (or onnxruntime-gpu on CUDA devices)")

    wheels = opencv_wheels()
    try:
        import cv2

        ok = len(wheels) <= 1
        rows.append(("opencv", ok, f"cv2 {cv2.__version__} from {', '.join(wheels) or 'an unknown install'}"
                     + ("" if ok else " (several wheels share one cv2/ folder)")))
        if not ok:
            missing.append(f"opencv: {len(wheels)} wheels provide cv2 ({', '.join(wheels)}); keep only "
                           "opencv-contrib-python (mediapipe's): pip uninstall the others, then "
                           "pip install --force-reinstall opencv-contrib-python")
    except Exception as e:
        rows.append(("opencv", False, str(e).splitlines()[0]))
        missing.append("opencv: `pip install opencv-contrib-python` (and `apt-get install libgl1` for libGL.so.1)")
    for mod, pkg in (("numpy", "numpy"), ("PIL", "pillow")):
        try:
            m = importlib.import_module(mod)
            rows.append((pkg, True, getattr(m, "__version__", "")))
        except Exception as e:
            rows.append((pkg, False, str(e).splitlines()[0]))
            missing.append(f"{pkg}: `pip install {pkg}`")

    # optional: export / train stack
    try:
        import torch

        cuda = torch.cuda.is_available()
        rows.append(("torch", True, f"{torch.__version__}; CUDA: {'yes, ' + torch.cuda.get_device_name(0) if cuda else 'no'}"))
    except Exception:
        rows.append(("torch", None, "not installed: needed for export / train (`pip install 'instit-edge[export]'`)"))
    for pkg in ("transformers", "gguf", "onnx", "gptqmodel", "gradio", "mediapipe", "peft"):
        v = package_version(pkg)
        rows.append((pkg, True if v else None, v or "not installed (optional)"))
    env_rows, env_missing = _environment_rows(Path(out_dir))
    rows += env_rows
    missing += env_missing
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    rows.append(("chromium", True if chromium else None,
                 chromium or "not found: browser tests need it (`apt-get install chromium`)"))
    return rows, missing
