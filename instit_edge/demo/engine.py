"""The demo's processing path, independent of Gradio (the UI in :mod:`.app` only calls this).

Two objects:

* :class:`LiveView`: the state of one viewer (one browser tab): a
  :class:`~instit_edge.marker.pipeline.Marker` (detector + tracker + marks),
  the newest marked frame, a ring of keyframes for video questions, manual
  marks and the "held" frame. Frames go in, marked frames come out.
* :class:`DemoEngine`: what all viewers share: the
  :class:`~instit_edge.runtime.session.EdgeSession` (one model in memory,
  one question at a time) and the variant in use.

Questions are answered from cached work. A question about ``[ID]`` s uses the
current (or held) marked frame; a question with ``<t>`` uses the last N
keyframes (``<1>`` the oldest). The session caches image embeddings by
content hash and keeps the llama.cpp KV of the longest common prompt prefix,
so asking about the same frame again decodes only the new question tokens;
keyframes are encoded in the background while the model is idle, so a video
question finds most of its frames already encoded. A question that names an
``[ID]`` not visible gets a clear reply without a model call.

>>> eng = DemoEngine("bundle/", detector="motion")
>>> view = eng.new_view()
>>> res = eng.process(view, frame_rgb)             # FrameResult: marked image, instances, timings
>>> for text in eng.answer(view, "What is [1]?"):  # accumulated answer text, streamed
...     print(text)
>>> eng.latency(view)                              # marker ms, vision ms, tok/s, TTFT
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from instit_edge.errors import InstitError
from instit_edge.marker.base import Detection, Detector, make_detector
from instit_edge.marker.instances import visible_ids
from instit_edge.marker.live import Keyframe
from instit_edge.marker.manual import ManualDetector
from instit_edge.marker.pipeline import Marker
from instit_edge.marker.tracker import iou_matrix
from instit_edge.prompting import find_ids, find_timestamps, format_ids

MAX_SIDE = 1280  # frames with a longer side are downscaled (the camera may send 4K; the marker needs far less)
MIN_SIDE = 16


# --------------------------------------------------------------------------- frames


def prepare_frame(frame, max_side: int = MAX_SIDE) -> np.ndarray:
    """``frame`` as a contiguous HxWx3 uint8 RGB array, downscaled so its longer side is ``<= max_side``.

    Anything else (no frame, grayscale, RGBA, float or 16-bit pixels, a tiny
    frame) is an :class:`InstitError` with a message for the UI.
    """
    if frame is None:
        raise InstitError("no camera frame received (is the camera on and streaming?)")
    a = np.asarray(frame)
    if a.dtype != np.uint8:
        raise InstitError(f"frame has {a.dtype} pixels; the demo takes 8-bit RGB frames (uint8)")
    if a.ndim != 3 or a.shape[2] != 3:
        raise InstitError(f"frame has shape {tuple(a.shape)}; the demo takes RGB frames of shape HxWx3 "
                          "(no grayscale, no alpha channel)")
    h, w = a.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise InstitError(f"frame of {w}x{h} pixels is too small (at least {MIN_SIDE} px per side)")
    side = max(h, w)
    if side > max_side:
        import cv2

        s = max_side / side
        a = cv2.resize(a, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(a)


def parse_box(text) -> tuple[float, float, float, float]:
    """``"x0,y0,x1,y1"`` (or 4 numbers) -> a box; InstitError when it is not one."""
    if isinstance(text, str):
        parts = [p for p in text.replace(";", ",").replace(" ", ",").split(",") if p.strip()]
    else:
        parts = list(text)
    try:
        nums = [float(p) for p in parts]
    except (TypeError, ValueError):
        nums = []
    if len(nums) != 4 or not all(np.isfinite(nums)):
        raise InstitError(f"cannot read a box from {text!r}: give x0,y0,x1,y1 in frame pixels")
    x0, y0, x1, y1 = nums
    if x1 <= x0 or y1 <= y0:
        raise InstitError(f"box {x0:g},{y0:g},{x1:g},{y1:g} is empty: x1 must exceed x0 and y1 must exceed y0")
    return x0, y0, x1, y1


# --------------------------------------------------------------------------- manual marks


class ManualMarks(Detector):
    """A detector plus boxes the user added: each box is followed by its own KCF tracker.

    Detections of the base detector that overlap a manual box (IoU >= ``overlap``)
    are dropped, so one object stays one instance. A manual box whose tracker
    has lost the object for ``max_misses`` frames is forgotten.
    """

    name = "with-manual"

    def __init__(self, base, overlap: float = 0.3, max_misses: int = 30):
        self.base = base
        self.overlap = overlap
        self.max_misses = max_misses
        self.manual: list[list] = []  # [ManualDetector, misses]

    def add(self, box, frame: np.ndarray) -> None:
        """Start following ``box`` (frame pixels) from ``frame``."""
        d = ManualDetector([box], label="manual")
        d(frame)  # initialises the tracker on this frame (raises when the box is off the frame)
        self.manual.append([d, 0])

    def clear(self) -> None:
        self.manual = []

    def detect(self, frame: np.ndarray) -> list[Detection]:
        dets = list(self.base(frame)) if self.base is not None else []
        man: list[Detection] = []
        keep = []
        for entry in self.manual:
            found = entry[0](frame)
            entry[1] = 0 if found else entry[1] + 1
            man += found
            if entry[1] <= self.max_misses:
                keep.append(entry)
        self.manual = keep
        if man and dets:
            iou = iou_matrix([d.box for d in dets], [m.box for m in man])
            dets = [d for d, row in zip(dets, iou) if row.max() < self.overlap]
        return dets + man

    def reset(self) -> None:
        if hasattr(self.base, "reset"):
            self.base.reset()

    def close(self) -> None:
        if hasattr(self.base, "close"):
            self.base.close()


# --------------------------------------------------------------------------- one viewer


@dataclass
class FrameResult:
    """One marked frame: ``instances`` rows are ``{"id", "label", "seen_s", "box"}``."""

    image: np.ndarray
    instances: list[dict]
    timings: dict
    frame: int
    new_keyframe: bool = False


@dataclass
class Snapshot:
    """What a question is asked about: one marked frame, or the kept keyframes."""

    kind: str  # "frame" | "keyframes"
    images: list[np.ndarray]
    ids: list[int]
    label: str  # for the latency panel: "frame 42 (live)", "keyframes <1>-<8>"


class LiveView:
    """One viewer's marking state (see the module doc). Thread-safe: frames and questions come from different threads."""

    def __init__(self, detector="motion", *, keyframes: int = 8, keyframe_interval: float = 1.0,
                 style: str = "box+id", max_side: int = MAX_SIDE, clock=time.monotonic):
        if not 1 <= int(keyframes) <= 32:
            raise InstitError(f"keyframes must be 1..32 (got {keyframes}); Inst-IT video prompts use at most 32")
        base = make_detector(detector) if isinstance(detector, str) else detector
        self.detector = ManualMarks(base)
        self.marker = Marker(self.detector, style=style)
        self.max_side = int(max_side)
        self.keyframe_interval = float(keyframe_interval)
        self.ring: deque[Keyframe] = deque(maxlen=int(keyframes))
        self.clock = clock
        self.t0: float | None = None
        self.lock = threading.Lock()
        self.latest: Keyframe | None = None  # newest marked frame (image, instances, raw)
        self.held: Keyframe | None = None
        self.first_ts: dict[int, float] = {}
        self.size: tuple[int, int] | None = None
        self.frames = 0
        self.marker_ms: float | None = None  # moving average
        self.fps: float | None = None
        self._last_arrival: float | None = None
        self._last_kf_ts: float | None = None
        self.error: str | None = None  # the last bad-frame message (the UI shows it until a good frame comes)

    # ---- frames
    def process(self, frame, timestamp: float | None = None) -> FrameResult:
        """Mark one frame (RGB uint8; downscaled when larger than ``max_side``)."""
        now = self.clock()
        raw = prepare_frame(frame, self.max_side)
        with self.lock:
            if self.t0 is None:
                self.t0 = now
            ts = now - self.t0 if timestamp is None else float(timestamp)
            if self.size is not None and raw.shape[:2] != self.size:
                # the camera changed resolution: boxes of the old size mean nothing now (IDs keep counting up)
                self.marker.reset()
                self.detector.clear()
            self.size = raw.shape[:2]
            t0 = time.perf_counter()
            mf = self.marker.process(raw, timestamp=ts)
            ms = (time.perf_counter() - t0) * 1e3
            self.marker_ms = ms if self.marker_ms is None else 0.8 * self.marker_ms + 0.2 * ms
            if self._last_arrival is not None and now > self._last_arrival:
                inst_fps = 1.0 / (now - self._last_arrival)
                self.fps = inst_fps if self.fps is None else 0.8 * self.fps + 0.2 * inst_fps
            self._last_arrival = now
            for i in mf.instances:
                self.first_ts.setdefault(int(i.id), ts)
            kf = Keyframe(mf.index, ts, mf.image, list(mf.instances), raw)
            self.latest = kf
            self.frames += 1
            new_kf = self._last_kf_ts is None or ts - self._last_kf_ts >= self.keyframe_interval
            if new_kf:
                self.ring.append(Keyframe(mf.index, ts, mf.image, list(mf.instances)))
                self._last_kf_ts = ts
            rows = [{"id": int(i.id), "label": i.label, "seen_s": round(ts - self.first_ts[int(i.id)], 1),
                     "box": [int(v) for v in i.box]} for i in mf.instances]
            timings = {"marker_ms": round(ms, 2), **{k: round(v, 2) for k, v in mf.timings.items()
                                                      if k.endswith("_ms")}}
            return FrameResult(mf.image, rows, timings, mf.index, new_kf)

    def add_mark(self, box) -> str:
        """Follow a user box (``"x0,y0,x1,y1"`` in pixels of the marked frame) from the newest frame on."""
        x0, y0, x1, y1 = parse_box(box)
        with self.lock:
            if self.latest is None:
                raise InstitError("no camera frame yet: start the webcam, then add a mark")
            h, w = self.latest.raw.shape[:2]
            cx0, cy0, cx1, cy1 = max(0.0, x0), max(0.0, y0), min(float(w), x1), min(float(h), y1)
            if cx1 - cx0 < 4 or cy1 - cy0 < 4:
                raise InstitError(f"box {x0:g},{y0:g},{x1:g},{y1:g} is outside the {w}x{h} frame (or under 4 px)")
            self.detector.add((cx0, cy0, cx1, cy1), self.latest.raw)
        return (f"added a mark at {int(cx0)},{int(cy0)},{int(cx1)},{int(cy1)}; "
                "it gets its ID within two frames and is tracked like the others")

    def clear_marks(self) -> str:
        with self.lock:
            n = len(self.detector.manual)
            self.detector.clear()
        return f"removed {n} manual mark(s)"

    # ---- questions
    def hold(self, on: bool = True) -> Keyframe | None:
        """Keep asking about the newest frame as it is now (``on``), or go back to the live frame."""
        with self.lock:
            self.held = self.latest if on else None
            return self.held

    def keyframes(self) -> list[Keyframe]:
        with self.lock:
            return list(self.ring)

    def snapshot(self, question: str) -> Snapshot:
        """The frame(s) ``question`` is about, or InstitError with the clear reply (no model needed)."""
        stamps = find_timestamps(question)
        with self.lock:
            if stamps:
                kfs = list(self.ring)
                if not kfs:
                    raise InstitError("no keyframes yet: start the webcam and wait a second before asking about <t>")
                n = len(kfs)
                for s, e in stamps:
                    if s < 1 or e > n or s > e:
                        ref = f"<{s}>" if s == e else f"<{s}>-<{e}>"
                        raise InstitError(f"I only keep {n} keyframe(s), <1>-<{n}> (oldest first); {ref} is not "
                                          "one of them")
                ids = visible_ids(i for k in kfs for i in k.instances)
                snap = Snapshot("keyframes", [k.image for k in kfs], ids,
                                f"keyframes <1>-<{n}> ({kfs[0].timestamp:.1f}-{kfs[-1].timestamp:.1f} s)")
                where = f"the last {n} keyframes"
            else:
                kf = self.held or self.latest
                if kf is None:
                    raise InstitError("no camera frame yet: start the webcam (the record button under the camera), "
                                      "then ask")
                snap = Snapshot("frame", [kf.image], visible_ids(kf.instances),
                                f"frame {kf.frame} ({'held' if self.held is not None else 'live'})")
                where = "the held frame" if self.held is not None else "the current frame"
        missing = [i for i in dict.fromkeys(find_ids(question)) if i not in snap.ids]
        if missing:
            shown = (f"the marked instances are {format_ids(snap.ids)}" if snap.ids else "no instance is marked")
            raise InstitError(f"I can't see {format_ids(missing)} in {where}: {shown}. Ask about one of those, "
                              "or add a mark for the object you mean.")
        return snap

    def stats(self) -> dict:
        with self.lock:
            return {"frames": self.frames, "marker_ms": None if self.marker_ms is None else round(self.marker_ms, 2),
                    "fps": None if self.fps is None else round(self.fps, 1), "keyframes": len(self.ring),
                    "manual_marks": len(self.detector.manual)}

    def close(self) -> None:
        self.marker.close()


# --------------------------------------------------------------------------- shared engine


@dataclass
class AskInfo:
    """What the last question did: ``answered`` (the model ran) or a clear reply without a model call."""

    question: str = ""
    answered: bool = False
    reply: str = ""
    about: str = ""
    ttft_ms: float | None = None
    total_ms: float | None = None
    stats: dict = field(default_factory=dict)


class DemoEngine:
    """The shared model (one question at a time) and the per-viewer marker factory; see the module doc."""

    def __init__(self, bundle, llm: str = "f16", vision: str = "fp32", *, detector="motion", keyframes: int = 8,
                 keyframe_interval: float = 1.0, style: str = "box+id", max_side: int = MAX_SIDE,
                 n_threads: int | None = None, n_gpu_layers: int = 0, verify: bool = True,
                 max_new_tokens: int | None = None, prefetch: bool = True, session=None):
        from instit_edge.bundle import Bundle

        if not 1 <= int(keyframes) <= 32:
            raise InstitError(f"--keyframes must be 1..32 (got {keyframes}); Inst-IT video prompts use at most 32")
        if int(max_side) < 64:
            raise InstitError(f"the frame-size cap must be at least 64 px (got {max_side})")
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle, verify=False)
        self.view_kw = dict(detector=detector, keyframes=int(keyframes), keyframe_interval=float(keyframe_interval),
                            style=style, max_side=int(max_side))
        if isinstance(detector, str):  # a bad detector spec fails now, not in the first frame
            d = make_detector(detector)
            if hasattr(d, "close"):
                d.close()
        self.load_kw = dict(n_threads=n_threads, n_gpu_layers=n_gpu_layers, verify=verify)
        self.max_new_tokens = max_new_tokens
        self.lock = threading.Lock()  # the model: one question (or variant switch, or prefetch) at a time
        if session is None:
            from instit_edge.runtime.session import EdgeSession

            session = EdgeSession.load(self.bundle, llm=llm, vision=vision, **self.load_kw)
        self.session = session
        self.last = AskInfo()  # the last question, answered or not
        self.last_answered = AskInfo()  # the last question the model answered (the latency panel shows it)
        self.prefetch = prefetch
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="instit-prefetch") if prefetch else None
        self._pending = False
        self._pending_lock = threading.Lock()
        self._encoded: weakref.WeakValueDictionary[int, Keyframe] = weakref.WeakValueDictionary()
        self.prefetched = 0

    # ---- variants
    @property
    def name(self) -> str:
        return Path(self.bundle.root).name

    def variants(self) -> dict[str, list[str]]:
        return {"llm": self.bundle.variants("llm"), "vision": self.bundle.variants("vision")}

    @property
    def variant(self) -> tuple[str, str]:
        return self.session.llm_variant, self.session.vision_variant

    def switch(self, llm: str | None = None, vision: str | None = None, timeout: float = 600.0) -> str:
        """Load another LLM / vision variant of the bundle (verified); the caches start empty."""
        from instit_edge.runtime.session import EdgeSession

        llm = llm or self.session.llm_variant
        vision = vision or self.session.vision_variant
        if (llm, vision) == self.variant:
            return f"using llm {llm}, vision {vision}"
        if not self.lock.acquire(timeout=timeout):
            raise InstitError("the model is busy answering; switch again when the answer is done")
        try:
            new = EdgeSession.load(self.bundle, llm=llm, vision=vision, **self.load_kw)
            new.set_max_tiles(getattr(self.session, "max_tiles", None))  # the token budget survives a switch
            old, self.session = self.session, new
            self._encoded.clear()
            _close_session(old)
        finally:
            self.lock.release()
        return f"switched to llm {llm}, vision {vision}"

    # ---- frames
    def new_view(self) -> LiveView:
        return LiveView(**self.view_kw)

    def process(self, view: LiveView, frame, timestamp: float | None = None) -> FrameResult:
        """Mark ``frame`` for ``view`` (``timestamp``: seconds, default the arrival time); keyframes are
        encoded in the background while the model is idle."""
        res = view.process(frame, timestamp)
        if res.new_keyframe:
            self._submit(self._encode_keyframes, view)
        return res

    def _submit(self, job, *args) -> None:
        """Queue one background encoding job; at most one waits, so a slow tower never builds a backlog
        (the waiting job encodes everything not yet encoded when it runs)."""
        if self._pool is None:
            return
        with self._pending_lock:
            if self._pending:
                return
            self._pending = True
        self._pool.submit(self._run_job, job, *args)

    def _run_job(self, job, *args) -> None:
        with self._pending_lock:
            self._pending = False
        try:
            job(*args)
        except Exception:  # noqa: BLE001 - an optimisation; the question reports real errors
            pass

    def _encode_keyframes(self, view: LiveView) -> None:
        """Encode the view's keyframes while the model is idle; when it is busy, stop (a question encodes what
        it needs itself)."""
        for kf in view.keyframes():
            if id(kf) in self._encoded:
                continue
            if not self.lock.acquire(blocking=False):
                return
            try:
                self.session.frame_embeddings(np.ascontiguousarray(kf.image))
            finally:
                self.lock.release()
            self._encoded[id(kf)] = kf  # a weak reference: the entry goes when the keyframe leaves the ring
            self.prefetched += 1

    def _encode_image(self, image: np.ndarray) -> None:
        """Vision rows and the KV of the prompt up to the end of the image (``EdgeSession.prefetch``): a question
        about this frame then prefills only its own tokens."""
        if not self.lock.acquire(blocking=False):
            return
        try:
            if hasattr(self.session, "prefetch"):
                self.session.prefetch(image=image, background=False)
            else:
                self.session.image_embeddings(image)
            self.prefetched += 1
        finally:
            self.lock.release()

    def prefetch_held(self, view: LiveView) -> None:
        """Encode the held frame now, so the first question about it is as fast as a repeat."""
        held = view.held
        if held is not None:
            self._submit(self._encode_image, held.image)

    # ---- questions
    def answer(self, view: LiveView, question: str, timeout: float = 120.0) -> Iterator[str]:
        """Stream the answer as accumulated text. A question that cannot be answered from what is on screen
        (an absent ``[ID]``, a ``<t>`` past the keyframes, no frame yet) yields one clear reply and never
        reaches the model; ``self.last`` tells which happened."""
        question = (question or "").strip()
        info = AskInfo(question=question)
        self.last = info
        if not question:
            info.reply = "Type a question, e.g. “What is [1] doing?” or “What changed for [1] between <1> and <3>?”"
            yield info.reply
            return
        try:
            snap = view.snapshot(question)
        except InstitError as e:
            info.reply = e.message
            yield info.reply
            return
        info.about = snap.label
        t0 = time.perf_counter()
        if not self.lock.acquire(timeout=timeout):
            info.reply = "The model is busy with another question; ask again in a moment."
            yield info.reply
            return
        try:
            kw = {"image": snap.images[0]} if snap.kind == "frame" else {"video": snap.images}
            text = ""
            for piece in self.session.stream(question, valid_ids=snap.ids, max_new_tokens=self.max_new_tokens, **kw):
                if info.ttft_ms is None:
                    info.ttft_ms = round((time.perf_counter() - t0) * 1e3, 2)
                text += piece
                yield text
            info.answered = True
            self.last_answered = info
            info.total_ms = round((time.perf_counter() - t0) * 1e3, 2)
            info.stats = dict(self.session.last_stats)
            info.reply = text.strip()
            if not info.reply:
                info.reply = "(the model ended its answer without any text)"
                yield info.reply
        except InstitError as e:
            info.reply = e.message
            yield info.reply
        finally:
            self.lock.release()

    def ask(self, view: LiveView, question: str) -> str:
        """The whole answer (or the clear reply) as one string."""
        text = ""
        for text in self.answer(view, question):  # noqa: B007 - the last accumulated text is the answer
            pass
        return text

    # ---- stats
    def latency(self, view: LiveView | None = None) -> dict:
        """The latency panel: marker ms and fps of the viewer, and the last question's vision ms, tok/s, TTFT."""
        last = self.last_answered
        s = last.stats
        d = {"llm": self.session.llm_variant, "vision": self.session.vision_variant}
        if view is not None:
            v = view.stats()
            d.update(marker_ms=v["marker_ms"], fps=v["fps"], frames=v["frames"], keyframes=v["keyframes"])
        d.update(question_about=last.about or None, vision_ms=s.get("vision_ms"),
                 prefill_tok_s=s.get("prefill_tok_s"), decode_tok_s=s.get("decode_tok_s"),
                 ttft_ms=last.ttft_ms, llm_ttft_ms=None if s.get("ttft_s") is None else round(s["ttft_s"] * 1e3, 2),
                 prompt_tokens=s.get("prompt_tokens"), reused_tokens=s.get("reused_tokens"),
                 generated_tokens=s.get("generated_tokens"), prefetched=self.prefetched)
        return d

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        _close_session(self.session)


def _close_session(session) -> None:
    llm = getattr(session, "llm", None)
    inner = getattr(llm, "llm", None)
    if inner is not None and hasattr(inner, "close"):
        try:
            inner.close()
        except Exception:  # noqa: BLE001 - freeing at shutdown must not raise
            pass


__all__ = ["MAX_SIDE", "AskInfo", "DemoEngine", "FrameResult", "LiveView", "ManualMarks", "Snapshot", "parse_box",
           "prepare_frame"]
