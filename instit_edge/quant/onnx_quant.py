"""ONNX Runtime quantization of the vision tower + projector.

- ``int8``: dynamic int8 weights (activations quantized at run time).
- ``int8s``: static int8 (QDQ, per-channel weights), activations calibrated on crops of real images.
- ``int4`` / ``int4-hqq``: 4-bit MatMulNBits weights, round-to-nearest or HQQ, block 32.
- ``fp16``: fp16 weights and compute, float32 I/O.

ONNX Runtime's matmul_nbits "GPTQ" option is deliberately not offered: it
returns exactly the RTN weights (its error feedback reads the wrong slice), so
it is not GPTQ. Real GPTQ lives in ``quant.gptq`` (gptqmodel).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import InstitError

VISION_QTYPES = ("int8", "int8s", "int4", "int4-hqq", "fp16")


def check_vision_qtypes(names: list[str]) -> None:
    bad = [n for n in names if n not in VISION_QTYPES]
    if bad:
        raise InstitError(f"unknown vision quant type(s) {', '.join(bad)}; valid: {', '.join(VISION_QTYPES)}")


def quantize_vision(src: str | Path, dst: str | Path, qtype: str, calib_pixels: np.ndarray | None = None) -> dict:
    """Write a ``qtype`` variant of the fp32 vision ONNX ``src`` to ``dst``; returns its recipe."""
    check_vision_qtypes([qtype])
    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    src, dst = Path(src), Path(dst)
    if qtype == "fp16":
        from ..export.onnx_vision import convert_fp16

        convert_fp16(src, dst)
        return {"type": "fp16", "io": "float32"}
    if qtype == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True)
        return {"type": "int8", "method": "dynamic", "weights": "per-channel int8"}
    if qtype == "int8s":
        if calib_pixels is None or len(calib_pixels) == 0:
            raise InstitError("static int8 needs calibration images (--calib DATA with at least one image)")
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

        class Reader(CalibrationDataReader):
            def __init__(self, pixels):
                self.it = iter([{"pixel_values": p[None].astype(np.float32)} for p in pixels])

            def get_next(self):
                return next(self.it, None)

        quantize_static(str(src), str(dst), Reader(calib_pixels), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                        extra_options={"ActivationSymmetric": True})
        return {"type": "int8s", "method": "static QDQ", "calibration_crops": int(len(calib_pixels))}
    # 4-bit weight-only MatMulNBits
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        HQQWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    model = onnx.load(str(src))
    if qtype == "int4":
        cfg = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True)
        method = "RTN"
    else:
        cfg = HQQWeightOnlyQuantConfig(block_size=32, bits=4)
        method = "HQQ"
    q = MatMulNBitsQuantizer(model, algo_config=cfg)
    q.process()
    q.model.save_model_to_file(str(dst), use_external_data_format=False)
    return {"type": qtype, "method": method, "bits": 4, "block_size": 32}
