"""The on-device marker: detect -> track (persistent IDs) -> draw Set-of-Marks, live or over a video.

Modules, one concern each: ``base`` (the Detection type, the Detector
interface, the factory table), one module per detector (``motion``,
``static``, ``manual``, ``onnx_yolo`` (YOLO ONNX), ``mediapipe_tasks`` (face /
person / tflite, optional)); each imports only ``base``; ``models`` (mediapipe model cache), ``tracker``
(ByteTrack-style IDs), ``instances`` (per-frame output, question checks),
``render`` (drawing), ``pipeline`` (one frame through all stages),
``sources`` (camera / file / folder / iterator), ``live`` (LiveMarker),
``synthvideo`` (unmarked synthetic clips + metrics), ``commands`` (CLI).

The names below are imported lazily so ``import instit_edge.marker`` stays cheap.
"""

_EXPORTS = {
    "Detection": "base", "Detector": "base", "make_detector": "base",
    "MotionDetector": "motion", "StaticDetector": "static", "ManualDetector": "manual",
    "OnnxYoloDetector": "onnx_yolo",
    "ByteTracker": "tracker",
    "visible_ids": "instances", "check_question": "instances",
    "Marker": "pipeline", "MarkedFrame": "pipeline",
    "LiveMarker": "live", "Keyframe": "live",
    "open_source": "sources",
    "draw_marks": "render",
}


def __getattr__(name):
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{mod}"), name)


__all__ = list(sorted(_EXPORTS))  # noqa: PLE0605 (built from the lazy export table)
