"""Reading videos (files or frame folders) into RGB frames, with one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InstitError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def sample_indices(n: int, k: int) -> list[int]:
    """``k`` frame indices spread uniformly over ``n`` frames (all when n <= k)."""
    if n <= k:
        return list(range(n))
    return [int(round(i * (n - 1) / (k - 1))) for i in range(k)] if k > 1 else [0]


def load_frames(source, max_frames: int = 32) -> list[np.ndarray]:
    """Frames as HxWx3 uint8 RGB arrays from a frame folder, a video file, or a list."""
    return load_numbered_frames(source, max_frames)[0]


def load_numbered_frames(source, max_frames: int = 32) -> tuple[list[np.ndarray], list[int]]:
    """:func:`load_frames`, and each kept frame's 1-based number in the whole video (what ``<t>`` names)."""
    from .anyres import load_image

    if isinstance(source, (list, tuple)):
        frames = [np.asarray(load_image(f)) for f in source]
        numbers = list(range(1, len(frames) + 1))
    else:
        p = Path(source)
        if not p.exists():
            raise InstitError(f"video not found: {p}")
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS)
            if not files:
                raise InstitError(f"video folder {p} has no frames (*.jpg, *.png)")
            keep = sample_indices(len(files), max_frames)
            frames = [np.asarray(load_image(files[i])) for i in keep]
        else:
            frames, keep = _read_video_file(p, max_frames)
        numbers = [i + 1 for i in keep]
    if not frames:
        raise InstitError(f"video {source} has zero frames")
    if len(frames) > max_frames:
        keep = sample_indices(len(frames), max_frames)
        frames, numbers = [frames[i] for i in keep], [numbers[i] for i in keep]
    return frames, numbers


def open_capture(path):
    """``cv2.VideoCapture(path)`` without FFmpeg's / OpenCV's own log lines for unreadable files.

    Our caller reports an unreadable video as one line; FFmpeg's ``moov atom
    not found`` and OpenCV's image-sequence fallback (``imread_ ... can't read
    header``) would add lines of their own on stderr.
    """
    import os

    import cv2

    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET; read when a capture opens
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    old = logging.getLogLevel() if logging is not None else None
    if logging is not None:
        logging.setLogLevel(logging.LOG_LEVEL_SILENT)
    try:
        return cv2.VideoCapture(str(path))
    finally:
        if logging is not None:
            logging.setLogLevel(old)


def _read_video_file(p: Path, max_frames: int) -> list[np.ndarray]:
    import cv2

    cap = open_capture(p)
    if not cap.isOpened():
        raise InstitError(f"cannot open video {p} (unreadable or unsupported codec)")
    frames = []
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    finally:
        cap.release()
    if not frames:
        raise InstitError(f"video {p} has zero readable frames (corrupt or empty file)")
    keep = sample_indices(len(frames), max_frames)
    return [frames[i] for i in keep], keep
