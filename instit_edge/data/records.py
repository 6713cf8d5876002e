"""Typed records for Inst-IT Bench items and Inst-IT Dataset annotations.

Paths in records are absolute (resolved from the bench / dataset root by the
readers); the writers turn them back into paths relative to the output root.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

SPLITS = ("image", "video")
FORMATS = ("mc", "oe")
OPTION_LETTERS = ("A", "B", "C", "D")
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass
class BenchItem:
    """One Inst-IT Bench question (multiple choice or open ended, image or video)."""

    question_id: str
    split: str  # "image" | "video"
    format: str  # "mc" | "oe"
    question: str
    answer: str  # MC: the option letter; OE: the reference text
    options: dict[str, str] | None = None  # MC only: {"A": ..., "D": ...}
    source_id: str = ""  # image_id / video_id
    image_path: Path | None = None  # image split: absolute path of the marked image
    video_path: Path | None = None  # video split: absolute folder of frames
    frame_paths: list[Path] = field(default_factory=list)  # video split: frames sorted by name
    category: str | None = None

    @property
    def media_path(self) -> Path | None:
        return self.image_path if self.split == "image" else self.video_path


@dataclass
class ImageRecord:
    """One Inst-IT Dataset image annotation."""

    image_id: str
    image_path: Path
    instance_level_caption: dict[str, str]
    image_level_caption: str


@dataclass
class FrameCaption:
    """Annotations of one video frame; ``timestamp`` is the 1-based frame index ``<t>``."""

    timestamp: int
    frame_name: str
    instance_level: dict[str, str]
    image_level: str
    temporal_change: str | None = None  # None on the first frame


@dataclass
class VideoRecord:
    """One Inst-IT Dataset video annotation; frames live in ``video_path / frame_name``."""

    video_id: str
    video_path: Path
    frames: list[FrameCaption]
    question_answer_pairs: list[tuple[str, str]]
    video_level_caption: str

    @property
    def frame_paths(self) -> list[Path]:
        return [self.video_path / f.frame_name for f in self.frames]


def list_frames(folder: Path) -> list[Path]:
    """Image files in ``folder``, sorted by name (hidden files skipped)."""
    return sorted(
        (p for p in Path(folder).iterdir() if p.suffix.lower() in FRAME_EXTENSIONS and not p.name.startswith(".")),
        key=lambda p: p.name,
    )
