"""``instit-edge doctor``: what this machine can run, and how to fix what it cannot."""

from __future__ import annotations

import importlib
import platform
import shutil


def _version(mod: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:
        return None


def run_doctor() -> tuple[list[tuple[str, bool | None, str]], list[str]]:
    """Rows of (component, ok / None = optional and absent, detail) and the list of required misses."""
    rows: list[tuple[str, bool | None, str]] = []
    missing: list[str] = []
    rows.append(("python", True, platform.python_version()))

    # llama.cpp (required)
    try:
        import llama_cpp

        detail = f"llama-cpp-python {_version('llama-cpp-python')}"
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

    for mod, pkg in (("numpy", "numpy"), ("cv2", "opencv-contrib-python-headless"), ("PIL", "pillow")):
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
        v = _version(pkg)
        rows.append((pkg, True if v else None, v or "not installed (optional)"))
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    rows.append(("chromium", True if chromium else None,
                 chromium or "not found: browser tests need it (`apt-get install chromium`)"))
    return rows, missing
