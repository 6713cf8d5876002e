"""llama.cpp's own vision path (libmtmd) on the exported ``mmproj.f16.gguf``.

Not used to answer questions: our runtime computes LLaVA-Next embeddings in
ONNX Runtime with exact HF semantics. This wrapper exists to measure how far
upstream llama.cpp tools (llama-server, mtmd-cli) are from PyTorch on the same
tower, and for benchmarks.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from ..errors import InstitError
from .llm_llamacpp import load_llama


class MtmdVision:
    def __init__(self, mmproj: str | Path, llm_gguf: str | Path, n_threads: int = 2):
        import llama_cpp.mtmd_cpp as mtmd

        self.mtmd = mtmd
        self.llm = load_llama(llm_gguf, n_ctx=2048, n_batch=2048, verbose=False)
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = False
        params.n_threads = n_threads
        params.print_timings = False
        params.warmup = False
        self.ctx = mtmd.mtmd_init_from_file(str(mmproj).encode(), self.llm._model.model, params)
        if not self.ctx:
            raise InstitError(f"libmtmd could not load {mmproj} (mtmd_init_from_file returned NULL)")
        self.n_embd = self.llm.n_embd()
        self.marker = mtmd.mtmd_default_marker().decode()

    def encode(self, rgb: np.ndarray) -> np.ndarray:
        """Embedding rows llama.cpp's vision path produces for one RGB uint8 image."""
        mtmd = self.mtmd
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        h, w = rgb.shape[:2]
        buf = (ctypes.c_ubyte * rgb.nbytes).from_buffer_copy(rgb.tobytes())
        bmp = mtmd.mtmd_bitmap_init(w, h, buf)
        chunks = mtmd.mtmd_input_chunks_init()
        try:
            text = self.marker.encode()
            it = mtmd.mtmd_input_text(text, len(text), False, True)
            arr = (ctypes.c_void_p * 1)(bmp)
            rc = mtmd.mtmd_tokenize(self.ctx, chunks, ctypes.byref(it), arr, 1)
            if rc != 0:
                raise InstitError(f"mtmd_tokenize failed with code {rc}")
            rows = []
            for i in range(mtmd.mtmd_input_chunks_size(chunks)):
                ch = mtmd.mtmd_input_chunks_get(chunks, i)
                if mtmd.mtmd_input_chunk_get_type(ch) != 1:  # MTMD_INPUT_CHUNK_TYPE_IMAGE
                    continue
                n = mtmd.mtmd_input_chunk_get_n_tokens(ch)
                if mtmd.mtmd_encode_chunk(self.ctx, ch) != 0:
                    raise InstitError("mtmd_encode_chunk failed")
                ptr = mtmd.mtmd_get_output_embd(self.ctx)
                rows.append(np.ctypeslib.as_array(ptr, shape=(n * self.n_embd,)).reshape(n, self.n_embd).copy())
            return np.concatenate(rows, 0) if rows else np.zeros((0, self.n_embd), np.float32)
        finally:
            mtmd.mtmd_input_chunks_free(chunks)
            mtmd.mtmd_bitmap_free(bmp)

    def close(self) -> None:
        if self.ctx:
            self.mtmd.mtmd_free(self.ctx)
            self.ctx = None
