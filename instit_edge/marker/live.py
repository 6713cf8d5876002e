"""LiveMarker: a camera loop that marks frames at camera rate with bounded memory.

A capture thread reads the source (``cv2.VideoCapture`` on a camera index or a
file, or any frame iterator) into a bounded queue (1-2 frames); the consumer
(the caller's thread, iterating the LiveMarker) detects, tracks and draws.
When the consumer is slower than the camera, the capture thread throws the
oldest queued frame away (``dropped`` counts them) instead of letting memory
grow, so what gets marked is always the newest frame. A ring buffer keeps
the last ``keyframes`` marked frames, one every ``keyframe_interval``
seconds, for video questions: ``<1>`` is the oldest kept keyframe.

>>> with LiveMarker(0, detector="motion") as live:          # camera 0
...     for mf in live:                                       # MarkedFrame
...         show(mf.image)
...         if done: break
...     frames = live.keyframe_images()                       # <1>..<N> for session.ask(video=frames)
...     live.check_question("What did [2] do between <1> and <3>?", video=True)
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from instit_edge.errors import InstitError
from instit_edge.marker.base import Detection
from instit_edge.marker.instances import check_question, visible_ids
from instit_edge.marker.pipeline import MarkedFrame, Marker
from instit_edge.marker.sources import FrameSource, open_source

_END = object()


@dataclass
class Keyframe:
    """A marked frame kept for video questions (``frame`` is the marker's frame index)."""

    frame: int
    timestamp: float
    image: np.ndarray
    instances: list[Detection]
    raw: np.ndarray | None = None


class LiveMarker:
    """Capture thread + bounded queue + marking consumer + keyframe ring buffer (see module doc).

    ``drop_stale``: drop old frames when the consumer lags (default: True for
    a camera or an iterator, False for a video file or folder, which are
    then marked frame by frame). ``realtime``: pace a file at its frame rate
    and drop stale frames, as if it were a camera.
    """

    def __init__(self, source, marker: Marker | None = None, *, detector="motion", style: str = "box+id",
                 queue_size: int = 1, drop_stale: bool | None = None, realtime: bool = False,
                 keyframes: int = 8, keyframe_interval: float = 1.0, keep_raw: bool = False,
                 fps: float | None = None):
        if not 1 <= int(queue_size) <= 2:
            raise InstitError(f"queue_size must be 1 or 2 (got {queue_size}): a longer queue only adds latency")
        if not 1 <= int(keyframes) <= 32:
            raise InstitError(f"keyframes must be 1..32 (got {keyframes}); Inst-IT video prompts use at most 32")
        self.source: FrameSource = open_source(source, fps=fps)
        self.marker = marker or Marker(detector, style=style)
        self.queue_size = int(queue_size)
        self.realtime = bool(realtime)
        self.drop_stale = (self.source.live or self.realtime) if drop_stale is None else bool(drop_stale)
        self.keyframe_interval = float(keyframe_interval)
        self.keep_raw = keep_raw
        self._ring: deque[Keyframe] = deque(maxlen=int(keyframes))
        self._q: queue.Queue = queue.Queue(maxsize=self.queue_size)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.captured = 0
        self.dropped = 0
        self.processed = 0
        self.max_queue = 0
        self.latest: MarkedFrame | None = None
        self._last_kf_ts: float | None = None

    # ------------------------------------------------------------------ capture thread
    def _put(self, item) -> bool:
        """Queue ``item``; in drop mode evict the oldest frame when full. False when stopping."""
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.05) if not self.drop_stale else self._q.put_nowait(item)
                self.max_queue = max(self.max_queue, self._q.qsize())
                return True
            except queue.Full:
                if self.drop_stale:
                    try:
                        old = self._q.get_nowait()
                        if old is not _END:
                            self.dropped += 1
                    except queue.Empty:
                        pass
        return False

    def _capture(self) -> None:
        t_start = time.monotonic()
        try:
            for k, (ts, frame) in enumerate(self.source):
                if self._stop.is_set():
                    break
                if self.realtime and not self.source.live:
                    delay = t_start + k / self.source.fps - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                self.captured += 1
                if not self._put((ts, frame)):
                    break
        except BaseException as e:  # re-raised in the consumer
            self._error = e
        finally:
            self._put(_END)

    # ------------------------------------------------------------------ control
    def start(self) -> "LiveMarker":
        if self._thread is None:
            self._thread = threading.Thread(target=self._capture, name="instit-capture", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop capturing, release the source, join the thread."""
        self._stop.set()
        try:
            while True:
                self._q.get_nowait()
        except queue.Empty:
            pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self.source.close()

    def __enter__(self) -> "LiveMarker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def close(self) -> None:
        self.stop()
        self.marker.close()

    # ------------------------------------------------------------------ consumer
    def __iter__(self):
        self.start()
        try:
            while True:
                try:
                    item = self._q.get(timeout=0.1)
                except queue.Empty:
                    if self._stop.is_set() or (self._thread is not None and not self._thread.is_alive()
                                               and self._q.empty()):
                        break
                    continue
                if item is _END:
                    break
                ts, frame = item
                mf = self.marker.process(frame, timestamp=ts)
                self.processed += 1
                self._keyframe(mf, frame)
                self.latest = mf
                yield mf
            if self._error is not None:
                err, self._error = self._error, None
                raise err
        finally:
            self.stop()

    def run(self, max_frames: int | None = None, on_frame=None) -> dict:
        """Mark until the source ends, ``max_frames`` frames are marked, or ``on_frame(mf)`` returns False."""
        for mf in self:
            if on_frame is not None and on_frame(mf) is False:
                break
            if max_frames is not None and self.processed >= max_frames:
                break
        return self.stats

    @property
    def stats(self) -> dict:
        return {"captured": self.captured, "dropped": self.dropped, "processed": self.processed,
                "max_queue": self.max_queue, "keyframes": len(self._ring)}

    # ------------------------------------------------------------------ keyframes
    def _keyframe(self, mf: MarkedFrame, raw: np.ndarray) -> None:
        if self._last_kf_ts is None or mf.timestamp - self._last_kf_ts >= self.keyframe_interval:
            self._ring.append(Keyframe(mf.index, mf.timestamp, mf.image, list(mf.instances),
                                       raw if self.keep_raw else None))
            self._last_kf_ts = mf.timestamp

    def keyframes(self) -> list[Keyframe]:
        """Kept keyframes, oldest first: element ``k - 1`` is ``<k>`` in a video question."""
        return list(self._ring)

    def keyframe_images(self) -> list[np.ndarray]:
        return [k.image for k in self._ring]

    def video_ids(self) -> list[int]:
        """IDs visible in any kept keyframe."""
        return visible_ids(i for k in self._ring for i in k.instances)

    def check_question(self, question: str, video: bool = False) -> None:
        """InstitError when ``question`` names an ID not visible (latest frame, or any keyframe with ``video``)
        or, for video, a ``<t>`` past the kept keyframes."""
        if video:
            check_question(question, self.video_ids(), n_frames=len(self._ring))
        else:
            check_question(question, self.latest.instances if self.latest else [])
