"""The detector interface: RGB frame in, :class:`Detection` list out, and the factory table.

A detector is any callable ``detector(frame_rgb_uint8) -> list[Detection]``;
the classes here also have ``reset()`` (forget per-video state) and
``close()``. :func:`make_detector` builds one from a CLI spec through :data:`FACTORIES`
(name -> the module that implements it; each of those modules imports only this one):

``motion`` (:mod:`instit_edge.marker.motion`)
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
``static`` (:mod:`instit_edge.marker.static`)
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
``manual:x0,y0,x1,y1;x,y;...`` (:mod:`instit_edge.marker.manual`)
    User boxes (4 numbers) or points (2 numbers: a square box of
    ``point_box`` px around the point) on the first frame, followed by OpenCV
    KCF trackers (contrib build); the ID tracker then numbers them 1..N in
    the order given.

Scores of the model-free detectors are a shape-quality heuristic in [0, 1]:
``min(1, area / (4 * min_area)) * (0.5 + 0.5 * fill)`` where ``min_area`` is a
fraction of the frame (default 0.0005: 154 px at 640x480) and ``fill`` is the
blob's share of its box, so small fragments get low scores and are only used
to continue existing tracks (ByteTrack's second association stage).

To add a detector: a module here with a :class:`Detector` subclass and a ``from_spec(name, arg, *,
want_masks=False, **kwargs)`` builder, and one row in :data:`FACTORIES`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import cv2
import numpy as np

from instit_edge.errors import InstitError

DETECTOR_SPECS = ("motion", "static", "onnx:PATH", "tflite:PATH", "face", "person", "manual:BOXES")

# spec name -> (takes an argument after ':', "module:builder" under instit_edge.marker). The modules are imported
# by name when a detector is built, so this table adds no import edge and a heavy stack (onnxruntime, mediapipe)
# is loaded only for the detector that needs it.
FACTORIES: dict[str, tuple[bool, str]] = {
    "motion": (False, "motion:from_spec"),
    "static": (False, "static:from_spec"),
    "onnx": (True, "onnx_yolo:from_spec"),
    "manual": (True, "manual:from_spec"),
    "face": (False, "mediapipe_tasks:from_spec"),
    "person": (False, "mediapipe_tasks:from_spec"),
    "tflite": (True, "mediapipe_tasks:from_spec"),
}


@dataclass
class Detection:
    """One object in one frame, the one type from detector to tracker to renderer.

    ``box`` ``(x0, y0, x1, y1)`` in frame pixels (x1/y1 exclusive) and/or ``mask`` (bool HxW of the full
    frame); ``label`` and ``score`` from the detector. The tracker sets ``id`` (the persistent track ID, the
    number drawn on the object; None before tracking) and ``first_seen`` / ``last_seen`` (0-based frame
    indices over the frames the marker has seen). ``color`` overrides the ID's palette colour when drawn.
    """

    box: tuple[float, float, float, float] | None = None
    mask: np.ndarray | None = None
    label: str = "object"
    score: float = 1.0
    id: int | None = None
    first_seen: int = 0
    last_seen: int = 0
    color: tuple[int, int, int] | None = None

    def to_dict(self) -> dict:
        """JSON-ready dict of a tracked object (the mask is summarised by its pixel count)."""
        d = {"id": None if self.id is None else int(self.id), "box": [int(v) for v in self.box],
             "label": self.label, "score": round(float(self.score), 4), "first_seen": int(self.first_seen),
             "last_seen": int(self.last_seen)}
        if self.mask is not None:
            d["mask_area"] = int(np.count_nonzero(self.mask))
        return d


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


# --------------------------------------------------------------------------- factory


def make_detector(spec, *, want_masks: bool = False, **kwargs) -> Detector:
    """A detector from a spec string (see :data:`DETECTOR_SPECS`) or pass a Detector/callable through."""
    if not isinstance(spec, str):
        if callable(spec):
            return spec
        raise InstitError(f"detector must be a name like 'motion' or a callable, got {type(spec).__name__}")
    name, _, arg = spec.partition(":")
    name = name.strip().lower()
    entry = FACTORIES.get(name)
    if entry is None or entry[0] != bool(arg):
        raise InstitError(f"unknown detector {spec!r} (use one of: {', '.join(DETECTOR_SPECS)})")
    module, builder = entry[1].split(":")
    build = getattr(importlib.import_module(f"instit_edge.marker.{module}"), builder)
    return build(name, arg, want_masks=want_masks, **kwargs)
