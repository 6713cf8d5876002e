"""What the bench runner drives: the edge bundle (no torch) or the torch reference.

Both answer an official prompt about a bench item's image or frame folder,
greedily, and give the logits of the prompt's text positions (for the
report's KL divergence). Bench items were validated when the bench was read,
so ``<t>`` references are not checked again here: the official pre-prompts
quote examples such as ``<7>-<8>`` that a short video does not have.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..data.records import BenchItem
from ..errors import InstitError


def _media(item: BenchItem) -> dict:
    return {"image": item.image_path} if item.split == "image" else {"video": item.video_path}


class BundleBackend:
    """``EdgeSession`` on a bundle (llama.cpp + ONNX Runtime)."""

    kind = "bundle"

    def __init__(self, bundle, llm: str = "f16", vision: str = "fp32", n_threads: int | None = None,
                 n_gpu_layers: int = 0, verify: bool = True, max_tiles: int | None = None):
        from ..runtime.session import EdgeSession

        self.session = EdgeSession.load(bundle, llm=llm, vision=vision, n_threads=n_threads,
                                        n_gpu_layers=n_gpu_layers, verify=verify)
        self.session.set_max_tiles(max_tiles)

    def describe(self) -> dict:
        b = self.session.bundle
        files = {}
        for group, name in (("llm", self.session.llm_variant), ("vision", self.session.vision_variant)):
            e = b.entry(group, name)
            files[group] = {"variant": name, "path": e["path"], "size": e["size"], "sha256": e.get("sha256")}
        return {"backend": self.kind, "bundle": str(Path(b.root).resolve()), "model": None,
                "llm": self.session.llm_variant, "vision": self.session.vision_variant, "files": files,
                "max_tiles": self.session.max_tiles}

    def _segments(self, prompt: str, item: BenchItem):
        s = self.session
        if item.split == "image":
            rows, key = s.image_embeddings(item.image_path)
        else:
            rows, key, _ = s.video_embeddings(item.video_path)
        return s.segments(prompt, rows, key)

    def generate(self, prompt: str, item: BenchItem, max_new_tokens: int = 128) -> tuple[str, dict]:
        from ..runtime.llm_llamacpp import GenStats

        s, llm = self.session, self.session.llm
        t0 = time.perf_counter()
        segs = self._segments(prompt, item)
        vision_ms = (time.perf_counter() - t0) * 1000
        # Reuse the KV cache at most through the media rows (the same image asked again), never into the
        # question text: then an answer does not depend on which question came before it, and a resumed
        # or sharded run gives exactly the predictions of an uninterrupted one.
        keep = sum(len(x) for x in segs[:-1])
        llm.truncate(keep)
        stats = GenStats()
        text = "".join(llm.generate(segs, max_new_tokens, 0.0, 1.0, 0, None, s.prompt_cfg.get("stop", []), stats))
        timings = {"vision_ms": round(vision_ms, 3), **stats.as_dict(), "total_s": round(time.perf_counter() - t0, 6)}
        return text.strip(), timings

    def logits(self, prompt: str, item: BenchItem) -> np.ndarray:
        out, _ = self.session.llm.prefill(self._segments(prompt, item), all_logits=True)
        return out


class TorchBackend:
    """``TorchSession`` on an HF checkpoint (the reference)."""

    kind = "torch"

    def __init__(self, checkpoint: str, device: str | None = None):
        from ..runtime.torch_ref import TorchSession

        try:
            import torch
        except ImportError:
            raise InstitError("the torch backend needs torch (pip install 'instit-edge[export]')") from None
        self.checkpoint = str(checkpoint)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.session = TorchSession.load(self.checkpoint, device=device)

    def describe(self) -> dict:
        p = Path(self.checkpoint)
        size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else None
        return {"backend": self.kind, "bundle": None, "model": str(p.resolve()) if p.exists() else self.checkpoint,
                "llm": "torch", "vision": "torch", "files": {"checkpoint": {"path": str(p), "size": size}}}

    def generate(self, prompt: str, item: BenchItem, max_new_tokens: int = 128) -> tuple[str, dict]:
        t0 = time.perf_counter()
        ans = self.session.ask(prompt, max_new_tokens=max_new_tokens, **_media(item))
        return ans.text, {**ans.stats, "total_s": round(time.perf_counter() - t0, 6)}

    def logits(self, prompt: str, item: BenchItem) -> np.ndarray:
        return self.session.logits(prompt, **_media(item))


def open_backend(backend: str, bundle=None, llm: str = "f16", vision: str = "fp32", model: str | None = None,
                 n_threads: int | None = None, n_gpu_layers: int = 0, verify: bool = True,
                 max_tiles: int | None = None):
    if backend == "bundle":
        if bundle is None:
            raise InstitError("the bundle backend needs a BUNDLE directory")
        return BundleBackend(bundle, llm, vision, n_threads, n_gpu_layers, verify, max_tiles)
    if max_tiles is not None:
        raise InstitError("--max-tiles applies to the bundle backend only")
    if backend == "torch":
        if model is None and bundle is not None:
            from ..bundle import Bundle

            model = Bundle.load(bundle, verify=False).manifest.get("source", {}).get("model")
        if not model:
            raise InstitError("the torch backend needs --model CHECKPOINT (or a bundle that names its source)")
        if not Path(model).exists():
            raise InstitError(f"checkpoint not found: {model} (give --model PATH)")
        return TorchBackend(model)
    raise InstitError(f"unknown backend {backend!r}; use bundle or torch")
