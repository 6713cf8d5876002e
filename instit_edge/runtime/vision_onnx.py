"""Vision tower + projector in ONNX Runtime (CUDA provider when present)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InstitError


def providers(prefer_gpu: bool = True) -> list[str]:
    import onnxruntime as ort

    avail = ort.get_available_providers()
    order = ["CUDAExecutionProvider", "CPUExecutionProvider"] if prefer_gpu else ["CPUExecutionProvider"]
    return [p for p in order if p in avail] or ["CPUExecutionProvider"]


class OnnxVision:
    def __init__(self, path: str | Path, n_threads: int | None = None, prefer_gpu: bool = True):
        import onnxruntime as ort

        so = ort.SessionOptions()
        if n_threads:
            so.intra_op_num_threads = n_threads
        so.log_severity_level = 3
        try:
            self.sess = ort.InferenceSession(str(path), sess_options=so, providers=providers(prefer_gpu))
        except Exception as e:  # onnxruntime raises its own exception types
            raise InstitError(f"ONNX Runtime cannot load {path}: {str(e).splitlines()[0][:200]}") from None
        self.input = self.sess.get_inputs()[0].name
        self.provider = self.sess.get_providers()[0]

    def __call__(self, pixel_values: np.ndarray, max_batch: int = 16) -> np.ndarray:
        outs = []
        for i in range(0, len(pixel_values), max_batch):
            chunk = np.ascontiguousarray(pixel_values[i:i + max_batch], dtype=np.float32)
            outs.append(self.sess.run(None, {self.input: chunk})[0])
        return np.concatenate(outs, 0).astype(np.float32, copy=False)
