"""instit-edge: instance-aware (Inst-IT) vision-language models on edge devices."""

import os as _os

__version__ = "0.1.0"

# FFmpeg (inside OpenCV) prints its own lines for unreadable videos ("moov atom not found") when a capture
# opens; every such error reaches the user as our one-line message instead. Read once, when OpenCV's FFmpeg
# backend starts, so it is set on import. An explicit setting wins.
_os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")


def __getattr__(name):  # lazy: `import instit_edge` stays cheap and torch-free
    if name == "EdgeSession":
        from .runtime.session import EdgeSession

        return EdgeSession
    if name == "Bundle":
        from .bundle import Bundle

        return Bundle
    raise AttributeError(name)


__all__ = ["EdgeSession", "Bundle", "__version__"]
