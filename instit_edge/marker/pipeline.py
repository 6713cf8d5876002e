"""One frame through the marker: detect -> track -> draw marks, with per-stage timings.

>>> m = Marker("motion", style="box+id")
>>> mf = m.process(frame_rgb)          # MarkedFrame
>>> mf.image, mf.instances, mf.timings  # marked RGB frame, [Detection] with track IDs, {"detect_ms", "track_ms", "render_ms"}
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from instit_edge.errors import InstitError
from instit_edge.marker.base import Detection, check_frame, make_detector
from instit_edge.marker.instances import check_question, visible_ids
from instit_edge.marker.render import STYLES, draw_marks
from instit_edge.marker.tracker import ByteTracker

MASK_STYLES = ("mask+id", "contour+id")


@dataclass
class MarkedFrame:
    """A frame after marking: ``index`` counts the frames the marker has processed (0-based)."""

    index: int
    timestamp: float
    image: np.ndarray
    instances: list[Detection]
    timings: dict = field(default_factory=dict)

    @property
    def ids(self) -> list[int]:
        return visible_ids(self.instances)

    def check_question(self, question: str) -> None:
        """InstitError when ``question`` names an ``[ID]`` not visible in this frame."""
        check_question(question, self.instances)

    def to_dict(self) -> dict:
        return {"frame": int(self.index), "t": round(float(self.timestamp), 4), "ids": self.ids,
                "instances": [i.to_dict() for i in self.instances]}


class Marker:
    """Detector + :class:`ByteTracker` + Set-of-Marks renderer."""

    def __init__(self, detector="motion", *, style: str = "box+id", tracker: ByteTracker | None = None,
                 draw: bool = True, **detector_kwargs):
        if style not in STYLES:
            raise InstitError(f"unknown mark style {style!r} (use one of: {', '.join(STYLES)})")
        self.style = style
        self.draw = draw
        self.detector = make_detector(detector, want_masks=style in MASK_STYLES, **detector_kwargs)
        if style in MASK_STYLES and hasattr(self.detector, "want_masks"):
            self.detector.want_masks = True
        self.tracker = tracker or ByteTracker()
        self.n = 0

    def process(self, frame, timestamp: float | None = None) -> MarkedFrame:
        frame = check_frame(frame)
        t0 = time.perf_counter()
        dets = self.detector(frame)
        t1 = time.perf_counter()
        inst = self.tracker.update(dets, self.n)
        t2 = time.perf_counter()
        image = draw_marks(frame, inst, style=self.style) if self.draw else frame
        t3 = time.perf_counter()
        mf = MarkedFrame(self.n, float(self.n if timestamp is None else timestamp), image, inst,
                         {"detect_ms": (t1 - t0) * 1e3, "track_ms": (t2 - t1) * 1e3, "render_ms": (t3 - t2) * 1e3,
                          "detections": len(dets)})
        self.n += 1
        return mf

    def reset(self) -> None:
        """A new video: forget the background model and tracks (IDs keep counting up)."""
        if hasattr(self.detector, "reset"):
            self.detector.reset()
        self.tracker.reset()
        self.n = 0

    def close(self) -> None:
        if hasattr(self.detector, "close"):
            self.detector.close()
