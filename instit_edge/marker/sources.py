"""Frame sources for the marker: a camera index, a video file, a folder of frames, an image, or any iterator.

:func:`open_source` checks the input up front and fails with one line
(InstitError) on a camera that does not open, an unreadable video, an empty
or unreadable frame folder. A source yields ``(timestamp_s, rgb_uint8)``;
frames of a folder are resized to the first frame's size so a video writer
can take them.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import cv2
import numpy as np

from instit_edge.errors import InstitError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


@contextlib.contextmanager
def quiet_stderr():
    """Silence C-level stderr (OpenCV / FFmpeg warnings) inside the block, so errors stay one line."""
    try:
        fd = os.dup(2)
    except OSError:  # pragma: no cover
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(fd, 2)
        os.close(fd)


def _is_camera(x) -> bool:
    return isinstance(x, (int, np.integer)) or (isinstance(x, str) and x.strip().isdigit())


class FrameSource:
    """Iterable of ``(timestamp_s, frame_rgb)``; ``fps``, ``size`` (W, H), ``count`` (None if unknown), ``live``."""

    kind = "source"
    live = False
    fps: float = 30.0
    count: int | None = None
    size: tuple[int, int] | None = None

    def __iter__(self):  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return self.kind


class CaptureSource(FrameSource):
    """``cv2.VideoCapture`` over a camera index or a video file."""

    def __init__(self, target, *, fps: float | None = None):
        self.camera = _is_camera(target)
        self.target = int(target) if self.camera else Path(target)
        self.kind = f"camera {self.target}" if self.camera else f"video {self.target}"
        self.live = self.camera
        with quiet_stderr():
            cap = cv2.VideoCapture(self.target if self.camera else str(self.target))
            ok = cap.isOpened()
            first = cap.read() if ok else (False, None)
        if not ok or not first[0] or first[1] is None:
            cap.release()
            if self.camera:
                raise InstitError(f"camera {self.target} cannot be opened or gives no frames (no such device, or it "
                                  "is busy; check `ls /dev/video*` and try another index)")
            if not ok:
                raise InstitError(f"cannot open video {self.target} (unreadable file or unsupported codec)")
            raise InstitError(f"video {self.target} has no readable frames (corrupt or empty file)")
        self.cap = cap
        self._first = first[1]
        src_fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps or (src_fps if src_fps and 1 <= src_fps <= 240 else 30.0))
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.count = None if self.camera or n <= 0 else n
        self.size = (self._first.shape[1], self._first.shape[0])

    def read(self) -> np.ndarray | None:
        """The next RGB frame, or None at the end of the stream."""
        if self.cap is None:
            return None
        if self._first is not None:
            bgr, self._first = self._first, None
        else:
            ok, bgr = self.cap.read()
            if not ok or bgr is None:
                return None
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def __iter__(self):
        """``(timestamp, rgb)``: wall-clock seconds for a camera, ``k / fps`` for a file."""
        k = 0
        while True:
            rgb = self.read()
            if rgb is None:
                return
            yield (time.monotonic() if self.camera else k / self.fps), rgb
            k += 1

    def close(self) -> None:
        if getattr(self, "cap", None) is not None:
            self.cap.release()
            self.cap = None


class FolderSource(FrameSource):
    """Image files of a folder in name order (or a single image file)."""

    def __init__(self, path, *, fps: float | None = None):
        p = Path(path)
        if p.is_dir():
            self.files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS)
            if not self.files:
                raise InstitError(f"frame folder {p} has no images ({', '.join(sorted(IMAGE_EXTS))})")
        else:
            self.files = [p]
        self.kind = f"frames {p}"
        self.fps = float(fps or 10.0)
        self.count = len(self.files)
        first = self._load(self.files[0])
        self.size = (first.shape[1], first.shape[0])
        self._first = first

    @staticmethod
    def _load(f: Path) -> np.ndarray:
        bgr = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if bgr is None:
            raise InstitError(f"cannot read image {f} (corrupt or not an image)")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def __iter__(self):
        for k, f in enumerate(self.files):
            rgb = self._first if k == 0 and self._first is not None else self._load(f)
            if (rgb.shape[1], rgb.shape[0]) != self.size:
                rgb = cv2.resize(rgb, self.size, interpolation=cv2.INTER_AREA)
            yield k / self.fps, rgb
        self._first = None


class IterSource(FrameSource):
    """Any iterable of RGB uint8 frames (or ``(timestamp, frame)`` pairs); timestamps default to arrival time.

    A generator / iterator counts as live (a camera-like stream: LiveMarker drops
    stale frames); a sized collection (a list of frames) does not, unless ``live=True``.
    """

    kind = "iterator"

    def __init__(self, frames, *, fps: float | None = None, live: bool | None = None):
        self.frames = frames
        self.fps = float(fps or 30.0)
        try:
            self.count = len(frames)
        except TypeError:
            self.count = None
        self.live = (self.count is None) if live is None else bool(live)

    def __iter__(self):
        t0 = time.monotonic()
        for item in self.frames:
            if isinstance(item, tuple) and len(item) == 2:
                ts, frame = item
            else:
                ts, frame = time.monotonic() - t0, item
            a = np.asarray(frame)
            if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
                raise InstitError(f"frame iterator gave {a.dtype} {a.shape}; expected RGB uint8 HxWx3")
            if self.size is None:
                self.size = (a.shape[1], a.shape[0])
            yield float(ts), a


def open_source(source, *, fps: float | None = None) -> FrameSource:
    """A :class:`FrameSource` for a camera index, video file, frame folder, image file or frame iterable."""
    if isinstance(source, FrameSource):
        return source
    if _is_camera(source):
        return CaptureSource(int(source), fps=fps)
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if not p.exists():
            raise InstitError(f"input not found: {p} (give a video file, a folder of frames, or a camera index)")
        if p.is_dir() or p.suffix.lower() in IMAGE_EXTS:
            return FolderSource(p, fps=fps)
        return CaptureSource(p, fps=fps)
    if hasattr(source, "__iter__"):
        return IterSource(source, fps=fps)
    raise InstitError(f"cannot read frames from {type(source).__name__} (give a path, a camera index or an iterable)")
