"""What the server shares between requests: the model, its caches, the marker, admission and the worker.

* One :class:`~instit_edge.runtime.session.EdgeSession` per worker
  (``max_concurrency``, 1 by default: on a CPU one model job at a time is the
  fastest order anyway). The session caches image embeddings by content and
  keeps the llama.cpp KV of the longest common prompt prefix, so a follow-up
  question about the same image, or the next turn of a conversation, decodes
  only what is new.
* Admission is bounded: at most ``max_concurrency`` jobs run and ``queue``
  wait; a request beyond that is refused at once (429) instead of piling up.
* The model loads in a background thread; until it is ready requests get 503.
* :meth:`ServeEngine.close` lets the running job stop at the next token,
  answers the queued ones with 503, waits for the workers, then frees the model.

A chat job emits events through a callback: ``("start", instit)`` once the
prompt is built and checked (so the HTTP status is known before the first
byte of a stream), ``("piece", text)`` per piece, ``("end", finish, stats)``,
or ``("error", ApiError)``.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

from instit_edge.errors import InstitError
from instit_edge.serve.protocol import ApiError, ChatRequest, MarkSpec, Turn, png_data_url, question_text

log = logging.getLogger("instit_edge.serve")

LOAD_DELAY_ENV = "INSTIT_SERVE_TEST_LOAD_DELAY"  # tests only: seconds to wait before loading (to see the 503)


class Admission:
    """A counter of admitted jobs (running + queued) with a hard capacity."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.n = 0
        self._lock = threading.Lock()

    def try_enter(self) -> bool:
        with self._lock:
            if self.n >= self.capacity:
                return False
            self.n += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.n = max(0, self.n - 1)


def mark_frames(spec: MarkSpec, frames: list[np.ndarray]) -> tuple[list[np.ndarray], dict]:
    """Run the marker over ``frames`` in order (one tracker: IDs persist across frames).

    Returns the marked frames and the ``instit`` response part: ``ids`` (all
    IDs seen), ``instances`` (the image's instances; for several frames each ID
    once, with its box where last seen and the frames it is in), ``frames``.
    """
    from instit_edge.marker.pipeline import Marker

    t0 = time.perf_counter()
    m = Marker(spec.detector, style=spec.style)
    marked, per_frame = [], []
    latest: dict[int, dict] = {}
    try:
        for k, frame in enumerate(frames):
            mf = m.process(frame)
            marked.append(mf.image)
            insts = []
            for inst in mf.instances:
                d = inst.to_dict()
                d.pop("first_seen", None)
                d.pop("last_seen", None)
                insts.append(d)
                seen = latest.setdefault(d["id"], {**d, "frames": []})
                seen.update(d)
                seen["frames"].append(k + 1)
            entry = {"frame": k + 1, "ids": mf.ids, "instances": insts}
            if spec.return_images:
                entry["image"] = png_data_url(mf.image)
            per_frame.append(entry)
    finally:
        m.close()
    if len(frames) == 1:
        instances = per_frame[0]["instances"]
    else:
        instances = [latest[i] for i in sorted(latest)]
    info = {"detector": spec.detector, "style": spec.style, "ids": sorted(latest), "instances": instances,
            "frames": per_frame, "mark_ms": round((time.perf_counter() - t0) * 1e3, 3)}
    return marked, info


def _frames_key(frames: list[np.ndarray]) -> str:
    h = hashlib.sha1()
    for f in frames:
        h.update(str(f.shape).encode())
        h.update(f.tobytes())
    return "vid:" + h.hexdigest()[:20]


_SLOT = "\x00instit-serve-{}\x00"


def _media_block(session, imgs: list[np.ndarray]):
    """Embedding rows of one message's images: one image (AnyRes) or the frames of a video, in order."""
    if len(imgs) == 1:
        rows, key = session.image_embeddings(imgs[0])
        return rows, key, None
    if hasattr(session, "frames_embeddings"):  # the session's own packing (newlines, frame labels)
        return session.frames_embeddings(imgs)
    rows = np.concatenate([session.frame_embeddings(f) for f in imgs], 0)
    return rows, _frames_key(imgs), len(imgs)


def build_segments(session, turns: list[Turn], media: list[list[np.ndarray]]):
    """The prompt of a conversation as llama.cpp segments, and the frame count of the newest media.

    Each user message with images gets one image placeholder before its text
    (the official Inst-IT layout): one image is packed like
    ``EdgeSession.image_embeddings`` (AnyRes for LLaVA-Next), several are the
    frames of a video in order (``<1>``..``<N>``, pooled like
    ``EdgeSession.frame_embeddings``). A single user question goes through
    ``EdgeSession.segments`` itself, so it gets exactly the prompt of
    ``EdgeSession.ask``. Message text is always plain text: special-token
    spellings in it (``</s>``, ``<image>``) are not parsed as tokens.
    """
    from instit_edge.prompting import render_chat
    from instit_edge.runtime.llm_llamacpp import Segment

    if len(turns) == 1:
        block = _media_block(session, media[0]) if media[0] else None
        if block is None:
            return session.segments(turns[0].text, None), None
        rows, key, n_frames = block
        text = session.wrap_question(turns[0].text, video=n_frames is not None) if hasattr(session, "wrap_question") \
            else turns[0].text
        return session.segments(text, rows, key), n_frames

    p = session.prompt_cfg
    tok = p["image_token"]
    chat, blocks = [], []
    n_frames = None
    for k, (t, imgs) in enumerate(zip(turns, media)):
        content = _SLOT.format(k)
        if imgs:
            rows, key, n_frames = _media_block(session, imgs)
            blocks.append(session.media_segments(rows, key) if hasattr(session, "media_segments")
                          else [Segment(embd=rows, key=key)])
            content = f"{tok}\n{content}"
        chat.append((t.role, content))
    try:
        full = render_chat(p["template"], chat, add_generation_prompt=True)
    except InstitError as e:
        raise ApiError(400, e.message, "invalid_messages") from None
    # [(text, is_template)] runs, split at the image placeholders of the template text
    groups: list[list[tuple[str, bool]]] = [[]]
    rest = full
    for k, t in enumerate(turns):
        before, slot, rest = rest.partition(_SLOT.format(k))
        if not slot:
            raise ApiError(500, "the chat template dropped a message", "internal_error")
        pieces = before.split(tok)
        for j, piece in enumerate(pieces):
            if j:
                groups.append([])
            groups[-1].append((piece, True))
        groups[-1].append((t.text, False))
    groups[-1].append((rest, True))
    if tok in rest or len(groups) != len(blocks) + 1:
        raise ApiError(400, f"the prompt has {len(groups) - 1} image placeholders for {len(blocks)} images",
                       "invalid_messages")

    def tokens(parts, add_bos):
        if hasattr(session.llm, "tokenize_parts"):
            return session.llm.tokenize_parts(parts, add_bos=add_bos)
        return session.llm.tokenize("".join(t for t, _ in parts), add_bos=add_bos)

    segs = [Segment(tokens=tokens(groups[0], p["add_bos"]))]
    for block, parts in zip(blocks, groups[1:]):
        segs.extend(block)
        toks = tokens(parts, False)
        if toks:
            segs.append(Segment(tokens=toks))
    return segs, n_frames


class ServeEngine:
    def __init__(self, bundle: str | Path, llm: str = "f16", vision: str = "fp32", *, max_concurrency: int = 1,
                 queue_size: int = 8, n_threads: int | None = None, n_gpu_layers: int = 0, verify: bool = True,
                 model_name: str | None = None, load_delay: float = 0.0,
                 loader: Callable[[], object] | None = None, on_load_failed: Callable[[str], None] | None = None,
                 max_tiles: int | None = None):
        if max_concurrency < 1:
            raise InstitError(f"--max-concurrency must be at least 1 (got {max_concurrency})")
        if queue_size < 0:
            raise InstitError(f"--queue must be 0 or more (got {queue_size})")
        self.bundle_path = Path(bundle)
        self.llm_variant, self.vision_variant = llm, vision
        self.max_tiles = max_tiles
        self.max_concurrency = max_concurrency
        self.queue_size = queue_size
        self.model_name = model_name or self.bundle_path.name
        self.admission = Admission(max_concurrency + queue_size)
        self.state = "loading"
        self.error: str | None = None
        self.closing = threading.Event()
        self.created = int(time.time())
        self.started = time.monotonic()
        self.served = 0
        self.refused = 0
        self._sessions: queue.Queue = queue.Queue()
        self._all_sessions: list = []
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="instit-model")
        self._load_delay = load_delay
        self._loader = loader or (lambda: self._load_session(n_threads, n_gpu_layers, verify))
        self._on_load_failed = on_load_failed
        self._load_thread: threading.Thread | None = None
        self.max_frames = 32
        self.image_token = "<image>"
        self.n_ctx = 0
        self.default_max_tokens = 128

    # ------------------------------------------------------------------ loading
    def _load_session(self, n_threads, n_gpu_layers, verify):
        from instit_edge.runtime.session import EdgeSession

        s = EdgeSession.load(self.bundle_path, llm=self.llm_variant, vision=self.vision_variant,
                             n_threads=n_threads, n_gpu_layers=n_gpu_layers, verify=verify)
        s.set_max_tiles(self.max_tiles)
        return s

    def start(self) -> None:
        """Load the model(s) in a background thread; ``state`` turns ``ready`` (or ``failed``). Idempotent."""
        if self._load_thread is not None:
            return
        self._load_thread = threading.Thread(target=self._load, name="instit-load", daemon=True)
        self._load_thread.start()

    def _load(self) -> None:
        try:
            if self._load_delay > 0:
                self.closing.wait(self._load_delay)
            for _ in range(self.max_concurrency):
                if self.closing.is_set():
                    return
                s = self._loader()
                self._all_sessions.append(s)
                self._sessions.put(s)
            s = self._all_sessions[0]
            self.max_frames = int(s.bundle.preprocess.get("video", {}).get("max_frames", 32))
            self.image_token = s.prompt_cfg["image_token"]
            self.n_ctx = int(s.llm.n_ctx)
            self.default_max_tokens = int(s.prompt_cfg.get("max_new_tokens", 128))
            self.state = "ready"
            log.info("model loaded: %s (llm %s, vision %s)", self.bundle_path, self.llm_variant, self.vision_variant)
        except Exception as e:  # noqa: BLE001 - reported through /health and the CLI
            self.error = e.message if isinstance(e, InstitError) else f"{type(e).__name__}: {e}"
            self.state = "failed"
            log.error("cannot load the model: %s", self.error)
            if self._on_load_failed is not None:
                self._on_load_failed(self.error)

    def wait_ready(self, timeout: float | None = None) -> bool:
        if self._load_thread is not None:
            self._load_thread.join(timeout)
        return self.state == "ready"

    def check_ready(self) -> None:
        if self.closing.is_set():
            raise ApiError(503, "the server is shutting down", "shutting_down")
        if self.state == "loading":
            raise ApiError(503, "the model is still loading; retry shortly", "model_loading")
        if self.state != "ready":
            raise ApiError(503, f"the model failed to load: {self.error}", "model_load_failed")

    def health(self) -> dict:
        return {"status": "ok" if self.state == "ready" and not self.closing.is_set() else self.state,
                "model": self.model_name, "llm": self.llm_variant, "vision": self.vision_variant,
                "queue": {"admitted": self.admission.n, "capacity": self.admission.capacity,
                          "max_concurrency": self.max_concurrency},
                "served": self.served, "refused": self.refused,
                "uptime_s": round(time.monotonic() - self.started, 1)}

    def variants(self) -> dict:
        from instit_edge.bundle import Bundle

        try:
            b = Bundle.load(self.bundle_path, verify=False)
            return {"llm": b.variants("llm"), "vision": b.variants("vision")}
        except InstitError:
            return {}

    # ------------------------------------------------------------------ admission + jobs
    def admit(self) -> None:
        """Take a place (running or queued) or raise 429 at once."""
        self.check_ready()
        if not self.admission.try_enter():
            self.refused += 1
            raise ApiError(429, f"the server is busy ({self.admission.capacity} requests running or queued); "
                                "retry shortly", "queue_full")

    def submit(self, job: Callable[[object], object]) -> Future:
        """Run ``job(session)`` on a worker; the admitted place is given back when it ends."""

        def run():
            try:
                if self.closing.is_set():
                    raise ApiError(503, "the server is shutting down", "shutting_down")
                session = self._sessions.get()
                try:
                    return job(session)
                finally:
                    self._sessions.put(session)
            finally:
                self.admission.leave()

        try:
            return self._pool.submit(run)
        except RuntimeError:  # the pool is shut down
            self.admission.leave()
            raise ApiError(503, "the server is shutting down", "shutting_down") from None

    def chat_job(self, req: ChatRequest, media: list[list[np.ndarray]], emit: Callable, cancel: threading.Event):
        """The job behind one chat completion (runs on a worker with a session)."""

        def job(session):
            try:
                instit = None
                valid_ids = None
                if req.mark is not None:
                    for k, imgs in enumerate(media):
                        if imgs:
                            media[k], instit = mark_frames(req.mark, imgs)
                    if instit is None:
                        raise ApiError(400, "'instit.mark' needs at least one image in the messages", "no_image")
                    valid_ids = instit["ids"]
                t0 = time.perf_counter()
                segs, n_frames = build_segments(session, req.turns, media)
                vision_ms = (time.perf_counter() - t0) * 1e3
                from instit_edge.prompting import validate_references

                validate_references(question_text(req.turns[-1].text), valid_ids=valid_ids, n_frames=n_frames)
                n_prompt = sum(len(s) for s in segs)
                if n_prompt + 1 > session.llm.n_ctx:
                    raise ApiError(400, f"the prompt is {n_prompt} tokens (text + image rows) but the context holds "
                                        f"{session.llm.n_ctx}; send fewer or smaller images or a shorter conversation",
                                   "context_length_exceeded")
                mnt = min(req.max_tokens or self.default_max_tokens, session.llm.n_ctx - n_prompt)
                emit(("start", instit))
                stats = self._generate(session, segs, req, mnt, emit, cancel, vision_ms, n_frames)
                self.served += 1
                return stats
            except ApiError as e:
                emit(("error", e))
            except InstitError as e:
                emit(("error", ApiError(400, e.message, "invalid_request")))
            except Exception as e:  # noqa: BLE001 - one failed request must not take the server down
                log.exception("request failed")
                emit(("error", ApiError(500, f"{type(e).__name__}: {e}", "internal_error")))

        return job

    def _generate(self, session, segs, req: ChatRequest, mnt: int, emit, cancel, vision_ms, n_frames):
        from instit_edge.runtime.llm_llamacpp import GenStats

        stats = GenStats(extra={"llm": self.llm_variant, "vision": self.vision_variant,
                                "vision_ms": round(vision_ms, 3), "frames": n_frames})
        stop = list(session.prompt_cfg.get("stop", [])) + list(req.stop)
        gen = session.llm.generate(segs, mnt, req.temperature, req.top_p, 0, req.seed, stop, stats)
        finish = None
        try:
            for piece in gen:
                if cancel.is_set() or self.closing.is_set():
                    finish = "cancelled"
                    break
                emit(("piece", piece))
        finally:
            gen.close()
        if finish is None:
            # GenStats does not say why generation ended: at the cap it is "length" (an end-of-generation
            # token exactly at the cap also reads as "length")
            finish = "length" if stats.n_generated >= mnt else "stop"
        d = stats.as_dict()
        emit(("end", finish, d))
        return d

    def instances_job(self, spec: MarkSpec, frames: list[np.ndarray]):
        def job(_session):
            _marked, info = mark_frames(spec, frames)
            return info

        return job

    # ------------------------------------------------------------------ shutdown
    def close(self, timeout: float = 30.0) -> None:
        """Stop the running job at its next token, refuse the queued ones, wait for the workers, free the model."""
        self.closing.set()
        self._pool.shutdown(wait=True)
        if self._load_thread is not None:
            self._load_thread.join(timeout)
        for s in self._all_sessions:
            inner = getattr(getattr(s, "llm", None), "llm", None)
            if inner is not None and hasattr(inner, "close"):
                try:
                    inner.close()
                except Exception:  # noqa: BLE001 - freeing at shutdown must not raise
                    pass
        self._all_sessions.clear()
