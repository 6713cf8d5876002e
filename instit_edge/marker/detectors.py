"""Instance detectors behind one small interface: RGB frame in, :class:`Detection` list out.

A detector is any callable ``detector(frame_rgb_uint8) -> list[Detection]``;
the classes here also have ``reset()`` (forget per-video state) and
``close()``. :func:`make_detector` builds one from a CLI spec:

``motion``
    Model-free, for a fixed camera: OpenCV MOG2 background subtraction on a
    downscaled frame (``work_width`` 320 px), morphology, hole filling,
    connected components. The first frame initialises the background model
    and yields nothing. The model learns at a fixed rate ``1/history`` so a
    uniformly coloured object keeps being foreground while it moves (the
    adaptive default of MOG2 absorbs object interiors within a few frames);
    an object that stops is absorbed after about ``history/10`` frames.
    Objects already in the first frame leave a "ghost" in the background
    model where they started; ghosts are suppressed by an edge test (a real
    object has edges along its outline in the current frame, a ghost only in
    the background image).
``static``
    Model-free, for a plain backdrop (the synthetic Inst-IT world, a desk, a
    wall): pixels whose colour differs from the frame's border colour (the
    per-channel median of a thin border ring) by more than ``threshold``.
    It sees objects that never move, which ``motion`` cannot; it fails on
    cluttered backgrounds.
``onnx:PATH``
    Any YOLO-family detection ONNX (see :mod:`instit_edge.marker.onnx_yolo`).
``face`` / ``person`` / ``tflite:PATH``
    mediapipe Tasks (see :mod:`instit_edge.marker.mediapipe_tasks`); needs the
    ``[demo]`` extra and ``instit-edge models``.
``manual:x0,y0,x1,y1;x,y;...``
    User boxes (4 numbers) or points (2 numbers: a square box of
    ``point_box`` px around the point) on the first frame, followed by OpenCV
    KCF trackers (contrib build); the ID tracker then numbers them 1..N in
    the order given.

Scores of the model-free detectors are a shape-quality heuristic in [0, 1]:
``min(1, area / (4 * min_area)) * (0.5 + 0.5 * fill)`` where ``min_area`` is a
fraction of the frame (default 0.0005: 154 px at 640x480) and ``fill`` is the
blob's share of its box, so small fragments get low scores and are only used
to continue existing tracks (ByteTrack's second association stage).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from instit_edge.errors import InstitError

DETECTOR_SPECS = ("motion", "static", "onnx:PATH", "tflite:PATH", "face", "person", "manual:BOXES")


@dataclass
class Detection:
    """One detected object: ``box`` ``(x0, y0, x1, y1)`` in frame pixels (x1/y1 exclusive)."""

    box: tuple[float, float, float, float]
    mask: np.ndarray | None = None  # bool HxW of the full frame, or None
    label: str = "object"
    score: float = 1.0


def check_frame(frame) -> np.ndarray:
    """``frame`` as a contiguous HxWx3 uint8 array, or InstitError."""
    a = np.asarray(frame)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise InstitError(f"detector: expected an RGB uint8 frame of shape HxWx3, got {a.dtype} {a.shape} "
                          "(convert the frame first)")
    return np.ascontiguousarray(a)


class Detector:
    """Base class: subclasses implement :meth:`detect`."""

    name = "detector"
    #: set by the pipeline when the mark style draws masks; detectors that can give masks cheaply always do
    want_masks = False

    def __call__(self, frame) -> list[Detection]:
        return self.detect(check_frame(frame))

    def detect(self, frame: np.ndarray) -> list[Detection]:  # pragma: no cover - interface
        raise NotImplementedError

    def reset(self) -> None:
        """Forget per-video state (background model, manual trackers)."""

    def close(self) -> None:
        """Release resources (model sessions)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


# --------------------------------------------------------------------------- blobs


def _fill_holes(binary: np.ndarray) -> np.ndarray:
    """Fill the holes of a 0/255 mask (pixels not reachable from the border through background)."""
    h, w = binary.shape
    pad = np.zeros((h + 2, w + 2), np.uint8)
    pad[1:-1, 1:-1] = binary
    flood = pad.copy()
    cv2.floodFill(flood, np.zeros((h + 4, w + 4), np.uint8), (0, 0), 255)
    holes = cv2.bitwise_not(flood)[1:-1, 1:-1]
    return cv2.bitwise_or(binary, holes)


def blobs_to_detections(binary: np.ndarray, frame_shape, *, min_area: float, label: str, want_masks: bool,
                        max_area_frac: float = 0.6) -> list[Detection]:
    """Connected components of a 0/255 ``binary`` (possibly downscaled) as detections in frame pixels.

    ``min_area``: the smallest blob as a fraction of the frame area (so the
    behaviour does not depend on the resolution); components covering more
    than ``max_area_frac`` of the frame (a lighting change, a camera bump) are dropped.
    """
    H, W = frame_shape[:2]
    h, w = binary.shape
    sx, sy = W / w, H / h
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    out = []
    small_min = max(4.0, min_area * h * w)
    for k in range(1, n):
        x, y, bw, bh, area = (int(v) for v in stats[k])
        if area < small_min or area > max_area_frac * h * w:
            continue
        fill = area / float(bw * bh)
        score = min(1.0, area / (4.0 * small_min)) * (0.5 + 0.5 * fill)
        box = (x * sx, y * sy, min(W, (x + bw) * sx), min(H, (y + bh) * sy))
        mask = None
        if want_masks:
            m = (labels[y:y + bh, x:x + bw] == k).view(np.uint8)
            mask = np.zeros((H, W), bool)
            X0, Y0 = int(round(box[0])), int(round(box[1]))
            X1, Y1 = int(round(box[2])), int(round(box[3]))
            if X1 > X0 and Y1 > Y0:
                mask[Y0:Y1, X0:X1] = cv2.resize(m, (X1 - X0, Y1 - Y0), interpolation=cv2.INTER_NEAREST) > 0
        out.append(Detection(box, mask, label, float(score)))
    return out


# --------------------------------------------------------------------------- motion


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


# --------------------------------------------------------------------------- static


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


# --------------------------------------------------------------------------- manual


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


# --------------------------------------------------------------------------- factory


def make_detector(spec, *, want_masks: bool = False, **kwargs) -> Detector:
    """A detector from a spec string (see :data:`DETECTOR_SPECS`) or pass a Detector/callable through."""
    if not isinstance(spec, str):
        if callable(spec):
            return spec
        raise InstitError(f"detector must be a name like 'motion' or a callable, got {type(spec).__name__}")
    name, _, arg = spec.partition(":")
    name = name.strip().lower()
    if name == "motion" and not arg:
        return MotionDetector(want_masks=want_masks, **kwargs)
    if name == "static" and not arg:
        return StaticDetector(**kwargs)
    if name == "onnx" and arg:
        from instit_edge.marker.onnx_yolo import OnnxYoloDetector

        return OnnxYoloDetector(arg, **kwargs)
    if name == "manual" and arg:
        return ManualDetector(parse_manual(arg), **kwargs)
    if name in ("face", "person") and not arg:
        from instit_edge.marker.mediapipe_tasks import make_mediapipe_detector

        return make_mediapipe_detector(name, **kwargs)
    if name == "tflite" and arg:
        from instit_edge.marker.mediapipe_tasks import make_mediapipe_detector

        return make_mediapipe_detector("tflite", path=arg, **kwargs)
    raise InstitError(f"unknown detector {spec!r} (use one of: {', '.join(DETECTOR_SPECS)})")
