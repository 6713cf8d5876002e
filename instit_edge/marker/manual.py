"""``manual:x0,y0,x1,y1;x,y;...``: user boxes or points on the first frame, then OpenCV KCF trackers
(see :mod:`instit_edge.marker.base`)."""

from __future__ import annotations

import cv2
import numpy as np

from instit_edge.errors import InstitError
from instit_edge.marker.base import Detection, Detector


def parse_manual(spec: str, point_box: int = 40) -> list[tuple[float, float, float, float]]:
    """``"x0,y0,x1,y1;x,y"`` -> boxes (a point becomes a ``point_box`` square around it)."""
    boxes = []
    for part in [p.strip() for p in spec.replace(" ", "").split(";") if p.strip()]:
        try:
            nums = [float(v) for v in part.split(",")]
        except ValueError:
            nums = []
        if len(nums) == 4 and nums[2] > nums[0] and nums[3] > nums[1]:
            boxes.append(tuple(nums))
        elif len(nums) == 2:
            x, y = nums
            r = point_box / 2
            boxes.append((x - r, y - r, x + r, y + r))
        else:
            raise InstitError(f"manual detector: cannot read {part!r} (give boxes as x0,y0,x1,y1 with x1>x0, y1>y0, "
                              "or points as x,y, separated by ';')")
    if not boxes:
        raise InstitError("manual detector: no boxes given (use manual:x0,y0,x1,y1;x,y)")
    return boxes


class ManualDetector(Detector):
    """User boxes on the first frame, followed by OpenCV KCF trackers on later frames."""

    name = "manual"

    def __init__(self, boxes, *, label: str = "object", tracker: str = "kcf"):
        self.boxes = [tuple(float(v) for v in b) for b in boxes]
        self.label = label
        self.kind = tracker
        self.reset()

    def reset(self) -> None:
        self._trackers = None

    def _make(self):
        if self.kind == "csrt" and hasattr(cv2, "TrackerCSRT_create"):
            return cv2.TrackerCSRT_create()
        if hasattr(cv2, "TrackerKCF_create"):
            return cv2.TrackerKCF_create()
        raise InstitError("manual detector: this OpenCV build has no KCF tracker "
                          "(install opencv-contrib-python-headless, not opencv-python)")

    def detect(self, frame: np.ndarray) -> list[Detection]:
        H, W = frame.shape[:2]
        bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
        if self._trackers is None:
            self._trackers = []
            out = []
            for b in self.boxes:
                x0, y0 = max(0.0, b[0]), max(0.0, b[1])
                x1, y1 = min(float(W), b[2]), min(float(H), b[3])
                if x1 - x0 < 2 or y1 - y0 < 2:
                    raise InstitError(f"manual detector: box {b} lies outside the {W}x{H} frame")
                t = self._make()
                t.init(bgr, (int(x0), int(y0), int(x1 - x0), int(y1 - y0)))
                self._trackers.append(t)
                out.append(Detection((x0, y0, x1, y1), None, self.label, 1.0))
            return out
        out = []
        for t in self._trackers:
            ok, (x, y, w, h) = t.update(bgr)
            if ok and w > 1 and h > 1:
                out.append(Detection((max(0.0, x), max(0.0, y), min(float(W), x + w), min(float(H), y + h)),
                                     None, self.label, 0.9))
        return out


def from_spec(name: str, arg: str, *, want_masks: bool = False, **kwargs) -> ManualDetector:
    return ManualDetector(parse_manual(arg), **kwargs)
