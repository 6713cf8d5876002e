"""``face`` / ``person`` / ``tflite:PATH`` detectors through the mediapipe Tasks API (optional).

mediapipe is an optional dependency (the ``[demo]`` extra) and is imported
only when one of these detectors is built; without it the user gets one line
saying what to install. Models: ``face`` = BlazeFace short range
(``FaceDetector``), ``person`` = selfie segmentation (``ImageSegmenter``;
the person mask is split into instances by connected components, each with
its mask), ``tflite:PATH`` = any ``ObjectDetector``-compatible model. The
face / person models come from ``instit-edge models``
(:mod:`instit_edge.marker.models`).

Not exercised by the test suite of this repository (mediapipe is not
installed there); the import guard and the model checks are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from instit_edge.errors import InstitError
from instit_edge.marker.base import Detection, Detector, blobs_to_detections

_INSTALL = "pip install 'instit-edge[demo]'"


def import_mediapipe(what: str):
    """``(mediapipe, tasks.python, tasks.python.vision)`` or a one-line InstitError saying what to install."""
    try:
        import mediapipe as mp
        from mediapipe.tasks import python as mp_python
        from mediapipe.tasks.python import vision
    except ImportError:
        raise InstitError(f"the {what} detector needs mediapipe, which is not installed: run `{_INSTALL}` "
                          "(the demo extra), then `instit-edge models` to fetch the face / person models "
                          "(or use --detector motion)") from None
    return mp, mp_python, vision


def _mp_image(mp, frame: np.ndarray):
    return mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(frame))


def _boxes(result, W: int, H: int, default_label: str) -> list[Detection]:
    out = []
    for d in result.detections:
        bb = d.bounding_box
        x0, y0 = max(0.0, float(bb.origin_x)), max(0.0, float(bb.origin_y))
        x1, y1 = min(float(W), bb.origin_x + bb.width), min(float(H), bb.origin_y + bb.height)
        if x1 - x0 < 1 or y1 - y0 < 1:
            continue
        cat = d.categories[0] if d.categories else None
        label = (cat.category_name or default_label) if cat is not None else default_label
        out.append(Detection((x0, y0, x1, y1), None, label, float(cat.score) if cat is not None else 1.0))
    return out


class _TaskDetector(Detector):
    def __init__(self, what: str, path: Path):
        self.what = what
        self.path = Path(path)
        if not self.path.is_file():
            raise InstitError(f"model file not found: {self.path}")
        self.mp, self.mp_python, self.vision = import_mediapipe(what)
        self.task = None

    def _create(self, factory, options):
        try:
            return factory.create_from_options(options)
        except Exception as e:  # mediapipe raises RuntimeError / ValueError with long texts
            first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise InstitError(f"cannot load {self.path} as a mediapipe {self.what} model: {first} "
                              "(is it a complete .tflite file of the right kind?)") from None

    def close(self) -> None:
        if self.task is not None:
            self.task.close()
            self.task = None


class FaceDetector(_TaskDetector):
    name = "face"

    def __init__(self, path=None, *, min_confidence: float = 0.5):
        from instit_edge.marker.models import model_path

        if path is None:
            import_mediapipe("face")  # say "install mediapipe" before "fetch the models"
            path = model_path("face")
        super().__init__("face", path)
        v = self.vision
        opts = v.FaceDetectorOptions(base_options=self.mp_python.BaseOptions(model_asset_path=str(self.path)),
                                     running_mode=v.RunningMode.IMAGE, min_detection_confidence=min_confidence)
        self.task = self._create(v.FaceDetector, opts)

    def detect(self, frame):
        res = self.task.detect(_mp_image(self.mp, frame))
        return _boxes(res, frame.shape[1], frame.shape[0], "face")


class PersonSegmenter(_TaskDetector):
    name = "person"

    def __init__(self, path=None, *, threshold: float = 0.5, min_area: float = 0.005):
        from instit_edge.marker.models import model_path

        if path is None:
            import_mediapipe("person")
            path = model_path("person")
        super().__init__("person", path)
        v = self.vision
        opts = v.ImageSegmenterOptions(base_options=self.mp_python.BaseOptions(model_asset_path=str(self.path)),
                                       running_mode=v.RunningMode.IMAGE, output_confidence_masks=True,
                                       output_category_mask=False)
        self.task = self._create(v.ImageSegmenter, opts)
        self.threshold, self.min_area = float(threshold), float(min_area)

    def detect(self, frame):
        res = self.task.segment(_mp_image(self.mp, frame))
        if not res.confidence_masks:
            return []
        conf = np.asarray(res.confidence_masks[-1].numpy_view(), np.float32).squeeze()
        binary = (conf > self.threshold).astype(np.uint8) * 255
        return blobs_to_detections(binary, frame.shape, min_area=self.min_area, label="person", want_masks=True,
                                   max_area_frac=1.0)


class TfliteObjectDetector(_TaskDetector):
    name = "tflite"

    def __init__(self, path, *, score_threshold: float = 0.3, max_results: int = 20):
        super().__init__("tflite", path)
        v = self.vision
        opts = v.ObjectDetectorOptions(base_options=self.mp_python.BaseOptions(model_asset_path=str(self.path)),
                                       running_mode=v.RunningMode.IMAGE, score_threshold=score_threshold,
                                       max_results=max_results)
        self.task = self._create(v.ObjectDetector, opts)

    def detect(self, frame):
        res = self.task.detect(_mp_image(self.mp, frame))
        return _boxes(res, frame.shape[1], frame.shape[0], "object")


def make_mediapipe_detector(kind: str, path=None, **kwargs) -> Detector:
    if kind == "face":
        return FaceDetector(path, **kwargs)
    if kind == "person":
        return PersonSegmenter(path, **kwargs)
    if kind == "tflite":
        return TfliteObjectDetector(path, **kwargs)
    raise InstitError(f"unknown mediapipe detector {kind!r} (face, person, tflite:PATH)")


def from_spec(name: str, arg: str, *, want_masks: bool = False, **kwargs) -> Detector:
    if name == "tflite":
        return make_mediapipe_detector("tflite", path=arg, **kwargs)
    return make_mediapipe_detector(name, **kwargs)
