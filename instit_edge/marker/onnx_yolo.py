"""``onnx:PATH``: any YOLO-family detection model exported to ONNX, run with ONNX Runtime.

Supported output layouts (first output; batch 1):

* ``[1, 4 + nc, N]``: YOLOv8 / v11 (and v9, v12): rows ``cx, cy, w, h``, then
  ``nc`` class scores (no objectness). Extra rows past ``4 + nc`` (the mask
  coefficients of ``-seg`` models) are ignored when the class names are known.
* ``[1, N, 5 + nc]``: YOLOv5 / v7: ``cx, cy, w, h, objectness`` then ``nc``
  class scores; score = objectness x class score.
* ``[1, N, 4 + nc]``: a transposed v8 head, recognised only when the class
  names (metadata) say ``nc``.
* ``[1, N, 6]`` with metadata ``end2end`` / ``nms``: already-suppressed
  ``x0, y0, x1, y1, score, class`` (YOLOv10, ``nms=True`` exports).

Without class names, ``[1, A, B]`` with ``A < B`` is read as v8 (``nc = A - 4``)
and otherwise as v5 (``nc = B - 5``). Boxes in ``[0, 1]`` are taken as
normalised. Preprocessing is the Ultralytics letterbox: keep the aspect
ratio, pad with grey 114 centred, RGB, ``/255``, NCHW. Class names come from
the model's ``names`` metadata (as written by Ultralytics), else the 80 COCO
names when ``nc == 80``, else ``class0..``. Non-maximum suppression is
``cv2.dnn.NMSBoxesBatched`` (per class).
"""

from __future__ import annotations

import ast
from pathlib import Path

import cv2
import numpy as np

from instit_edge.errors import InstitError
from instit_edge.marker.base import Detection, Detector

COCO_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)

_LAYOUT_HINT = "expected a YOLO detection layout [1, 4+nc, N] (v8/v11) or [1, N, 5+nc] (v5)"


def _parse_names(raw) -> list[str] | None:
    if not raw:
        return None
    try:
        val = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return None
    if isinstance(val, dict):
        try:
            return [str(val[k]) for k in sorted(val, key=int)]
        except (ValueError, TypeError):
            return None
    if isinstance(val, (list, tuple)):
        return [str(v) for v in val]
    return None


def letterbox(frame: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, float, float, float]:
    """Resize keeping the aspect ratio into ``size`` ``(W, H)``, pad with 114: (image, scale, pad_x, pad_y)."""
    W, H = size
    h, w = frame.shape[:2]
    s = min(W / w, H / h)
    nw, nh = int(round(w * s)), int(round(h * s))
    img = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_LINEAR) if (nw, nh) != (w, h) else frame
    px, py = (W - nw) / 2, (H - nh) / 2
    top, left = int(round(py - 0.1)), int(round(px - 0.1))
    img = cv2.copyMakeBorder(img, top, H - nh - top, left, W - nw - left, cv2.BORDER_CONSTANT, value=(114, 114, 114))
    return img, s, float(left), float(top)


class OnnxYoloDetector(Detector):
    """YOLO-family ONNX detector (see module doc)."""

    name = "onnx"

    def __init__(self, path, *, conf: float = 0.25, iou: float = 0.45, imgsz: int | None = None,
                 names=None, threads: int | None = None, max_det: int = 100):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise InstitError(f"ONNX model not found: {self.path} (give onnx:PATH to a YOLO .onnx file)")
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = int(threads)
        so.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InstitError(f"cannot load ONNX model {self.path}: {first[:200]} "
                              "(is it a valid, complete .onnx file?)") from None
        self.conf, self.iou, self.max_det = float(conf), float(iou), int(max_det)
        meta = self.session.get_modelmeta().custom_metadata_map or {}
        self.meta = meta
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_dtype = np.float16 if "float16" in inp.type else np.float32
        shape = list(inp.shape)
        if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
            raise InstitError(f"ONNX model {self.path}: input {inp.name!r} has shape {shape}; "
                              "expected an image batch [1, 3, H, W]")
        h, w = shape[2], shape[3]
        if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
            sz = _parse_names(meta.get("imgsz"))
            if imgsz:
                h = w = int(imgsz)
            elif sz and len(sz) == 2:
                h, w = int(sz[0]), int(sz[1])
            else:
                h = w = 640
        self.input_size = (int(w), int(h))
        self.names = list(names) if names is not None else _parse_names(meta.get("names"))
        self.end2end = str(meta.get("end2end", "")).lower() == "true" or "'nms': True" in str(meta.get("args", ""))
        out = self.session.get_outputs()[0]
        self.output_name = out.name
        static = [d if isinstance(d, int) else None for d in out.shape]
        if len(static) != 3 or static[0] not in (1, None):
            raise InstitError(f"ONNX model {self.path}: output {out.name!r} has shape {list(out.shape)}; "
                              f"{_LAYOUT_HINT}")
        if static[1] is not None and static[2] is not None:
            self._layout(static[1], static[2])  # fail early on a static non-detection shape

    # ------------------------------------------------------------------ layout
    def _layout(self, a: int, b: int) -> tuple[str, int]:
        """('v8' | 'v8t' | 'v5' | 'e2e', nc) for an output of shape [1, a, b], or InstitError."""
        nc = len(self.names) if self.names else None
        if self.end2end and b == 6:
            return "e2e", nc or 0
        if nc:
            if a >= 4 + nc and a < b:
                return "v8", nc
            if b == 5 + nc:
                return "v5", nc
            if b == 4 + nc:
                return "v8t", nc
        else:
            if a < b and a >= 5:
                return "v8", a - 4
            if a >= b and b >= 6:
                return "v5", b - 5
        raise InstitError(f"ONNX model {self.path}: output {self.output_name!r} has shape [1, {a}, {b}]"
                          + (f" with {nc} class names" if nc else "") + f"; {_LAYOUT_HINT}")

    def label(self, k: int) -> str:
        if self.names and 0 <= k < len(self.names):
            return self.names[k]
        return f"class{k}"

    # ------------------------------------------------------------------ run
    def detect(self, frame: np.ndarray) -> list[Detection]:
        H, W = frame.shape[:2]
        img, s, px, py = letterbox(frame, self.input_size)
        x = (img.astype(np.float32) / 255.0).transpose(2, 0, 1)[None].astype(self.input_dtype)
        out = np.asarray(self.session.run([self.output_name], {self.input_name: x})[0], np.float32)
        if out.ndim != 3 or out.shape[0] != 1:
            raise InstitError(f"ONNX model {self.path}: output {self.output_name!r} has shape {list(out.shape)}; "
                              f"{_LAYOUT_HINT}")
        kind, nc = self._layout(out.shape[1], out.shape[2])
        if not self.names and nc == 80:
            self.names = list(COCO_NAMES)
        p = out[0]
        if kind == "e2e":
            boxes, scores, cls = p[:, :4].copy(), p[:, 4], p[:, 5].astype(int)
        else:
            if kind == "v8":
                p = p.T
            if kind == "v5":
                cls_scores = p[:, 5:5 + nc] * p[:, 4:5]
            else:
                cls_scores = p[:, 4:4 + nc]
            cls = cls_scores.argmax(1)
            scores = cls_scores[np.arange(len(p)), cls]
            c = p[:, :4]
            boxes = np.stack([c[:, 0] - c[:, 2] / 2, c[:, 1] - c[:, 3] / 2, c[:, 0] + c[:, 2] / 2,
                              c[:, 1] + c[:, 3] / 2], 1)
        keep = scores >= self.conf
        boxes, scores, cls = boxes[keep], scores[keep], cls[keep]
        if not len(boxes):
            return []
        if np.abs(boxes).max() <= 1.5:  # normalised coordinates
            boxes = boxes * np.array([*self.input_size, *self.input_size], np.float32)
        if kind != "e2e":
            xywh = [[float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])] for b in boxes]
            idx = cv2.dnn.NMSBoxesBatched(xywh, scores.astype(float).tolist(), cls.astype(int).tolist(),
                                          self.conf, self.iou)
            idx = np.asarray(idx, int).reshape(-1)
            idx = idx[np.argsort(-scores[idx])][: self.max_det]
            boxes, scores, cls = boxes[idx], scores[idx], cls[idx]
        boxes = (boxes - np.array([px, py, px, py], np.float32)) / s
        boxes = np.clip(boxes, 0, [W, H, W, H])
        out_dets = []
        for b, sc, k in zip(boxes, scores, cls):
            if b[2] - b[0] >= 1 and b[3] - b[1] >= 1:
                out_dets.append(Detection(tuple(float(v) for v in b), None, self.label(int(k)), float(sc)))
        return out_dets


def from_spec(name: str, arg: str, *, want_masks: bool = False, **kwargs) -> OnnxYoloDetector:
    return OnnxYoloDetector(arg, **kwargs)
