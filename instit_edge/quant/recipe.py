"""``instit-edge quantize``: add quantized variants to an existing bundle.

New files are written beside the bundle's files under temporary names and
renamed into place; ``bundle.json`` is rewritten atomically at the end with
each variant's recipe, size, sha256, tensor types and fidelity against the
reference (the F32 GGUF when the bundle has one, else F16; fp32 vision).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from ..bundle import Bundle
from ..errors import InstitError
from .gguf_quant import QTYPES, check_qtypes, quantize_gguf
from .onnx_quant import check_vision_qtypes, quantize_vision


def _reference_llm(b: Bundle) -> str:
    return "f32" if "f32" in b.variants("llm") else "f16"


def _calib_pixels(pre, prompts, limit: int = 64) -> np.ndarray:
    from PIL import Image

    from ..runtime.anyres import load_image
    from ..runtime.media import load_frames

    crops = []
    for p in prompts:
        if p.image is not None:
            crops.append(pre.crops(load_image(p.image), anyres=True)[0])
        else:
            for f in load_frames(p.frames, max_frames=4):
                crops.append(pre.crops(Image.fromarray(f), anyres=False)[0])
    if not crops:
        raise InstitError("calibration set has no readable images")
    return np.concatenate(crops)[:limit]


def quantize_bundle(
    bundle_dir: str | Path,
    llm_types: list[str] = (),
    vision_types: list[str] = (),
    calib: str | Path | None = None,
    imatrix: str = "auto",  # auto | on | off
    model: str | None = None,
    n_threads: int = 2,
    n_calib: int = 24,
    progress=None,
) -> list[dict]:
    """Quantize and return one table row per new variant."""

    llm_types, vision_types = list(llm_types), list(vision_types)
    check_qtypes(llm_types)
    check_vision_qtypes(vision_types)
    if not llm_types and not vision_types:
        raise InstitError("nothing to do: give --llm TYPES and/or --vision TYPES")
    step = progress or (lambda name: None)
    b = Bundle.load(bundle_dir, verify=True)
    from ..atomic import check_writable

    check_writable(b.root, "bundle folder")  # new variants and bundle.json are written there
    import tempfile

    with tempfile.TemporaryDirectory(prefix="instit-calib-") as work:
        return _quantize(b, llm_types, vision_types, calib, imatrix, model, n_threads, n_calib, step, work)


def _quantize(b, llm_types, vision_types, calib, imatrix, model, n_threads, n_calib, step, work) -> list[dict]:
    from ..atomic import write_json
    from ..runtime.anyres import Preprocess
    from ..runtime.session import EdgeSession
    from ..runtime.vision_onnx import OnnxVision
    from .calib import load_calibration
    from .fidelity import llm_fidelity, reference_logits, vision_fidelity

    root = b.root
    cal, held = load_calibration(calib, n=n_calib, workdir=work)
    step("calibration prompts")
    rows: list[dict] = []

    if llm_types:
        ref_name = _reference_llm(b)
        src = b.path("llm", ref_name)
        imat = None
        if imatrix != "off":
            imat = _multimodal_imatrix(b, cal, model, required=imatrix == "on", step=step)
        ref_sess = EdgeSession.load(b, llm=ref_name, verify=False, n_threads=n_threads)
        ref_logits = reference_logits(ref_sess, held)
        del ref_sess
        for q in llm_types:
            rel = f"llm.{q}.gguf"
            tmp = root / f".{rel}.partial"
            t0 = time.perf_counter()
            report = quantize_gguf(src, tmp, q, imatrix=imat, n_threads=n_threads)
            os.replace(tmp, root / rel)
            b.add_file("llm", q, rel, recipe={"type": q, "source": ref_name, "imatrix": imat is not None,
                                              "tensor_types": report["types"], "fallbacks": report["fallbacks"]})
            sess = EdgeSession.load(b, llm=q, verify=False, n_threads=n_threads)
            fid = llm_fidelity(ref_logits, sess, held)
            del sess
            b.manifest["files"]["llm"][q]["fidelity"] = fid
            rows.append({"group": "llm", "variant": q, "size_mb": (root / rel).stat().st_size / 1e6,
                         "imatrix": imat is not None, "kld": fid["kld_mean"], "top1": fid["top1"],
                         "fallbacks": len(report["fallbacks"]), "seconds": time.perf_counter() - t0})
            step(rel)

    if vision_types:
        pre = Preprocess.from_dict(b.preprocess)
        cal_px = _calib_pixels(pre, cal)
        held_px = _calib_pixels(pre, held, limit=32)
        ref_vis = OnnxVision(b.path("vision", "fp32"), n_threads=n_threads, prefer_gpu=False)
        for q in vision_types:
            rel = f"vision.{q}.onnx"
            tmp = root / f".{rel}.partial.onnx"
            t0 = time.perf_counter()
            recipe = quantize_vision(b.path("vision", "fp32"), tmp, q, calib_pixels=cal_px)
            os.replace(tmp, root / rel)
            b.add_file("vision", q, rel, recipe=recipe)
            fid = vision_fidelity(ref_vis, OnnxVision(root / rel, n_threads=n_threads, prefer_gpu=False), held_px)
            b.manifest["files"]["vision"][q]["fidelity"] = fid
            rows.append({"group": "vision", "variant": q, "size_mb": (root / rel).stat().st_size / 1e6,
                         "cosine": fid["cosine_mean"], "seconds": time.perf_counter() - t0})
            step(rel)

    b.manifest.setdefault("quant_recipes", {})["last"] = {"llm": llm_types, "vision": vision_types,
                                                         "calibration_prompts": len(cal), "held_out_prompts": len(held)}
    write_json(root / "bundle.json", b.manifest)
    return rows


def _multimodal_imatrix(b: Bundle, cal, model: str | None, required: bool, step) -> dict | None:
    """Collect the multimodal importance matrix from the source checkpoint; write imatrix.dat to the bundle."""
    src = model or b.manifest.get("source", {}).get("model")
    try:
        import torch  # noqa: F401
    except ImportError:
        if required:
            raise InstitError("the multimodal importance matrix needs torch: pip install 'instit-edge[export]'") from None
        return None
    if not src or not Path(src).exists():
        if required:
            raise InstitError(f"source checkpoint {src!r} not found: pass --model PATH for the importance matrix")
        return None
    from ..runtime.torch_ref import TorchSession
    from .imatrix import collect_imatrix, write_imatrix_dat

    ts = TorchSession.load(src)
    imat, ncall = collect_imatrix(ts, cal)
    write_imatrix_dat(b.root / "imatrix.dat", imat, ncall, dataset="instit-edge multimodal calibration")
    b.add_file("extra", "imatrix", "imatrix.dat", recipe={"prompts": ncall, "format": "llama.cpp legacy imatrix.dat",
                                                          "multimodal": True})
    step("imatrix")
    return imat


__all__ = ["quantize_bundle", "QTYPES"]
