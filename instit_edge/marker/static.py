"""``static``: objects that differ from a plain backdrop's border colour (see :mod:`instit_edge.marker.base`)."""

from __future__ import annotations

import cv2
import numpy as np

from instit_edge.marker.base import Detection, Detector, blobs_to_detections


class StaticDetector(Detector):
    """Objects that differ from the border colour (plain backdrops; see module doc). Always gives masks."""

    name = "static"

    def __init__(self, *, threshold: float = 40.0, border: int = 4, work_width: int = 640, min_area: float = 0.0005,
                 label: str = "object", want_masks: bool = True):
        self.threshold = float(threshold)
        self.border = int(border)
        self.work_width = int(work_width)
        self.min_area = float(min_area)
        self.label = label
        self.want_masks = want_masks
        self._k3 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))

    def foreground(self, frame: np.ndarray) -> np.ndarray:
        H, W = frame.shape[:2]
        small = frame
        if W > self.work_width:
            small = cv2.resize(frame, (self.work_width, max(1, int(round(H * self.work_width / W)))),
                               interpolation=cv2.INTER_AREA)
        b = max(1, min(self.border, min(small.shape[:2]) // 4))
        ring = np.concatenate([small[:b].reshape(-1, 3), small[-b:].reshape(-1, 3),
                               small[:, :b].reshape(-1, 3), small[:, -b:].reshape(-1, 3)])
        bg = np.median(ring, axis=0).astype(np.int16)
        diff = np.abs(small.astype(np.int16) - bg).max(axis=2)
        fg = (diff > self.threshold).astype(np.uint8) * 255
        return cv2.morphologyEx(fg, cv2.MORPH_OPEN, self._k3)

    def detect(self, frame: np.ndarray) -> list[Detection]:
        fg = self.foreground(frame)
        return blobs_to_detections(fg, frame.shape, min_area=self.min_area, label=self.label,
                                   want_masks=self.want_masks, max_area_frac=0.9)


def from_spec(name: str, arg: str, *, want_masks: bool = False, **kwargs) -> StaticDetector:
    return StaticDetector(**kwargs)  # always gives masks
