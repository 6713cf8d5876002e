"""``motion``: MOG2 background subtraction for a fixed camera (see :mod:`instit_edge.marker.base`)."""

from __future__ import annotations

import cv2
import numpy as np

from instit_edge.marker.base import Detection, Detector, blobs_to_detections


def _fill_holes(binary: np.ndarray) -> np.ndarray:
    """Fill the holes of a 0/255 mask (pixels not reachable from the border through background)."""
    h, w = binary.shape
    pad = np.zeros((h + 2, w + 2), np.uint8)
    pad[1:-1, 1:-1] = binary
    flood = pad.copy()
    cv2.floodFill(flood, np.zeros((h + 4, w + 4), np.uint8), (0, 0), 255)
    holes = cv2.bitwise_not(flood)[1:-1, 1:-1]
    return cv2.bitwise_or(binary, holes)


class MotionDetector(Detector):
    """MOG2 background subtraction + morphology + connected components (model-free; see module doc)."""

    name = "motion"

    def __init__(self, *, history: int = 500, var_threshold: float = 25.0, work_width: int = 320,
                 min_area: float = 0.0005, suppress_ghosts: bool = True, relearn_rate: float = 0.25,
                 label: str = "object", want_masks: bool = False):
        self.history = int(history)
        self.var_threshold = float(var_threshold)
        self.work_width = int(work_width)
        self.min_area = float(min_area)
        self.suppress_ghosts = bool(suppress_ghosts)
        self.relearn_rate = float(relearn_rate)
        self.label = label
        self.want_masks = want_masks
        self._k3 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
        self._k5 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
        self.reset()

    def reset(self) -> None:
        self._sub = cv2.createBackgroundSubtractorMOG2(history=self.history, varThreshold=self.var_threshold,
                                                       detectShadows=False)
        self._n = 0
        self._size = None

    def _small(self, frame: np.ndarray) -> np.ndarray:
        H, W = frame.shape[:2]
        if W <= self.work_width:
            return frame
        w = self.work_width
        h = max(1, int(round(H * w / W)))
        return cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)

    def foreground(self, frame: np.ndarray) -> np.ndarray:
        """The cleaned 0/255 foreground mask at working resolution (updates the background model)."""
        small = self._small(frame)
        if self._size != small.shape:  # a new video size: start over
            self.reset()
            self._size = small.shape
        rate = 1.0 if self._n == 0 else 1.0 / self.history
        fg = self._sub.apply(small, learningRate=rate)
        self._n += 1
        self._last_small = small
        if self._n == 1:
            return np.zeros(fg.shape, np.uint8)
        fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, self._k3)
        fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, self._k5, iterations=2)
        return _fill_holes(fg)

    def detect(self, frame: np.ndarray) -> list[Detection]:
        fg = self.foreground(frame)
        if not fg.any():
            return []
        dets = blobs_to_detections(fg, frame.shape, min_area=self.min_area, label=self.label,
                                   want_masks=self.want_masks)
        if self.suppress_ghosts and dets:
            dets = self._drop_ghosts(dets, fg, frame.shape)
        return dets

    def _drop_ghosts(self, dets, fg, frame_shape):
        """Drop blobs whose outline has edges in the background image but not in the current frame.

        A real object has edges along its outline in the current frame; a ghost
        (where an object used to be when the model learnt it) only in the
        background image. Ghost regions are then re-learnt quickly: a second
        MOG2 update with a frame that is the current frame inside the ghosts and
        the background image elsewhere (which only reinforces the background).
        """
        small = self._last_small
        bg = self._sub.getBackgroundImage()
        if bg is None or bg.shape != small.shape:
            return dets
        cur_g = _grad(small)
        bg_g = _grad(bg)
        H, W = frame_shape[:2]
        h, w = fg.shape
        sx, sy = w / W, h / H
        keep, ghosts = [], []
        for d in dets:
            x0, y0 = max(0, int(d.box[0] * sx) - 2), max(0, int(d.box[1] * sy) - 2)
            x1, y1 = min(w, int(np.ceil(d.box[2] * sx)) + 2), min(h, int(np.ceil(d.box[3] * sy)) + 2)
            crop = fg[y0:y1, x0:x1]
            edge = cv2.morphologyEx(crop, cv2.MORPH_GRADIENT, self._k3) > 0
            if edge.any() and float(cur_g[y0:y1, x0:x1][edge].mean()) < 0.5 * float(bg_g[y0:y1, x0:x1][edge].mean()):
                ghosts.append((x0, y0, x1, y1))
            else:
                keep.append(d)
        if ghosts:
            comp = bg.copy()
            for x0, y0, x1, y1 in ghosts:
                region = fg[y0:y1, x0:x1] > 0
                comp[y0:y1, x0:x1][region] = small[y0:y1, x0:x1][region]
            self._sub.apply(comp, learningRate=self.relearn_rate)
        return keep


def _grad(img: np.ndarray) -> np.ndarray:
    gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img
    gx = cv2.Sobel(gray, cv2.CV_16S, 1, 0, ksize=3)
    gy = cv2.Sobel(gray, cv2.CV_16S, 0, 1, ksize=3)
    return cv2.addWeighted(cv2.convertScaleAbs(gx), 0.5, cv2.convertScaleAbs(gy), 0.5, 0)


def from_spec(name: str, arg: str, *, want_masks: bool = False, **kwargs) -> MotionDetector:
    return MotionDetector(want_masks=want_masks, **kwargs)
