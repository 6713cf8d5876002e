"""Inst-IT Dataset reader and writer.

Layout (the hub's ``inst_it_dataset_image_51k.json`` / ``..._video_21k.json``):

* image records ``{image_id, image_path, instance_level_caption: {"1": ..},
  image_level_caption}``;
* video records ``{video_id, video_path, frame_level_caption: [{timestamp,
  frame_name, instance_level: {"1": ..}, image_level, temporal_change}],
  question_answer_pairs: [{question, answer}], video_level_caption}``
  (``temporal_change`` is null on the first frame; frames are
  ``video_path/frame_name``).

``path`` is one JSON file or a folder holding ``inst_it_dataset_image*.json``
and/or ``inst_it_dataset_video*.json``. Media paths resolve relative to the
JSON file's folder (or ``media_root``). Problems raise :class:`InstitError`
naming the file and record.
"""

from __future__ import annotations

import json
from pathlib import Path

from instit_edge.atomic import link_or_copy, write_json
from instit_edge.data.records import FrameCaption, ImageRecord, VideoRecord
from instit_edge.errors import InstitError

IMAGE_FILE = "inst_it_dataset_image.json"
VIDEO_FILE = "inst_it_dataset_video.json"


def _dataset_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InstitError(f"Inst-IT dataset not found: {path} (give a dataset JSON file or its folder)")
    files = []
    for stem in ("inst_it_dataset_image", "inst_it_dataset_video"):
        exact = path / f"{stem}.json"
        files += [exact] if exact.is_file() else sorted(path.glob(f"{stem}*.json"))
    if not files:
        raise InstitError(
            f"{path}: no {IMAGE_FILE} or {VIDEO_FILE} in this folder; point at the Inst-IT dataset folder or file"
        )
    return files


class _Ctx:
    def __init__(self, source: Path, base: Path, check_media: bool):
        self.source, self.base, self.check_media = source, base, check_media

    def fail(self, where: str, what: str):
        raise InstitError(f"{self.source}: {where}: {what}")

    def field(self, rec: dict, key: str, where: str, kind=str, optional: bool = False):
        if key not in rec or (rec[key] is None and not optional):
            self.fail(where, f"missing field {key!r} (fix or regenerate the file)")
        value = rec[key]
        if value is None:
            return None
        if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, kind):
            self.fail(where, f"field {key!r} must be {kind.__name__}, got {type(value).__name__}")
        return value

    def captions(self, value: dict, key: str, where: str) -> dict[str, str]:
        out = {}
        for k, v in value.items():
            if not str(k).strip().isdigit():
                self.fail(where, f"{key} has key {k!r}; instance keys must be numeric IDs like \"1\"")
            if not isinstance(v, str):
                self.fail(where, f"{key}[{k!r}] must be text, got {type(v).__name__}")
            out[str(int(k))] = v
        return out

    def check_ids(self, text: str, allowed: set[int], where: str, what: str, scope: str):
        from instit_edge.prompting import find_ids

        for i in find_ids(text):
            if i not in allowed:
                self.fail(
                    where,
                    f"{what} refers to [{i}] but {scope} has no instance [{i}] "
                    "(add its instance caption or fix the ID)",
                )

    def check_times(self, text: str, last: int, where: str, what: str):
        from instit_edge.prompting import find_timestamps

        for s, e in find_timestamps(text):
            if s < 1 or e > last or s > e:
                ref = f"<{s}>" if s == e else f"<{s}>-<{e}>"
                self.fail(where, f"{what} refers to frame {ref} but the video's frames are <1>-<{last}> "
                                 "(fix the reference)")

    def media(self, rel: str) -> Path:
        p = Path(rel)
        return (p if p.is_absolute() else self.base / p).resolve()


def _timestamp(value, ctx: _Ctx, where: str) -> int:
    if isinstance(value, bool):
        value = None
    if isinstance(value, str):
        v = value.strip().strip("<>").strip()
        value = int(v) if v.isdigit() else None
    if not isinstance(value, int) or value < 1:
        ctx.fail(where, "timestamp must be a frame number >= 1 (like 1 or \"<1>\")")
    return value


def _read_image(rec: dict, ctx: _Ctx, index: int) -> ImageRecord:
    where = f"image record {index}"
    image_id = ctx.field(rec, "image_id", where)
    where = f"image {image_id}"
    rel = ctx.field(rec, "image_path", where)
    inst = ctx.captions(ctx.field(rec, "instance_level_caption", where, dict), "instance_level_caption", where)
    caption = ctx.field(rec, "image_level_caption", where)
    path = ctx.media(rel)
    if ctx.check_media and not path.is_file():
        ctx.fail(where, f"image file not found: {path} (restore it or fix image_path)")
    ids = {int(k) for k in inst}
    for k, v in inst.items():
        ctx.check_ids(v, ids, where, f"instance caption [{k}]", "the image")
    ctx.check_ids(caption, ids, where, "image_level_caption", "the image")
    return ImageRecord(image_id=image_id, image_path=path, instance_level_caption=inst, image_level_caption=caption)


def _read_video(rec: dict, ctx: _Ctx, index: int) -> VideoRecord:
    where = f"video record {index}"
    video_id = ctx.field(rec, "video_id", where)
    where = f"video {video_id}"
    rel = ctx.field(rec, "video_path", where)
    raw_frames = ctx.field(rec, "frame_level_caption", where, list)
    raw_qa = ctx.field(rec, "question_answer_pairs", where, list)
    summary = ctx.field(rec, "video_level_caption", where)
    if not raw_frames:
        ctx.fail(where, "frame_level_caption is empty (a video needs at least one annotated frame)")
    folder = ctx.media(rel)
    frames: list[FrameCaption] = []
    all_ids: set[int] = set()
    prev_ids: set[int] = set()
    for j, fr in enumerate(raw_frames):
        fwhere = f"{where} frame {j + 1}"
        if not isinstance(fr, dict):
            ctx.fail(fwhere, "frame entry must be an object")
        ts = _timestamp(ctx.field(fr, "timestamp", fwhere, object), ctx, fwhere)
        name = ctx.field(fr, "frame_name", fwhere)
        fwhere = f"{where} frame <{ts}> ({name})"
        inst = ctx.captions(ctx.field(fr, "instance_level", fwhere, dict), "instance_level", fwhere)
        image_level = ctx.field(fr, "image_level", fwhere)
        change = ctx.field(fr, "temporal_change", fwhere, optional=True) if "temporal_change" in fr else None
        if ctx.check_media and not (folder / name).is_file():
            ctx.fail(fwhere, f"frame file not found: {folder / name} (restore it or fix frame_name / video_path)")
        ids = {int(k) for k in inst}
        for k, v in inst.items():
            ctx.check_ids(v, ids, fwhere, f"instance caption [{k}]", "that frame")
        ctx.check_ids(image_level, ids, fwhere, "image_level caption", "that frame")
        if change is not None:
            ctx.check_ids(change, ids | prev_ids, fwhere, "temporal_change", "that frame or the previous one")
        frames.append(FrameCaption(ts, name, inst, image_level, change))
        all_ids |= ids
        prev_ids = ids
    last = max(f.timestamp for f in frames)
    for f in frames:
        if f.temporal_change:
            ctx.check_times(f.temporal_change, last, f"{where} frame <{f.timestamp}>", "temporal_change")
    ctx.check_ids(summary, all_ids, where, "video_level_caption", "the video")
    ctx.check_times(summary, last, where, "video_level_caption")
    qa = []
    for j, pair in enumerate(raw_qa):
        qwhere = f"{where} QA pair {j + 1}"
        if not isinstance(pair, dict):
            ctx.fail(qwhere, "each QA pair must be an object with question and answer")
        q = ctx.field(pair, "question", qwhere)
        a = ctx.field(pair, "answer", qwhere)
        for what, text in (("question", q), ("answer", a)):
            ctx.check_ids(text, all_ids, qwhere, what, "the video")
            ctx.check_times(text, last, qwhere, what)
        qa.append((q, a))
    return VideoRecord(video_id=video_id, video_path=folder, frames=frames, question_answer_pairs=qa,
                       video_level_caption=summary)


def load_instit_dataset(path, media_root=None, check_media: bool = True) -> list[ImageRecord | VideoRecord]:
    """Read Inst-IT Dataset records from a JSON file or a folder (images first, then videos).

    ``media_root``: resolve image/video paths against this folder instead of the
    JSON file's folder. ``check_media=False`` skips the file-existence checks.
    """
    path = Path(path)
    out: list[ImageRecord | VideoRecord] = []
    for file in _dataset_files(path):
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise InstitError(
                f"{file}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); fix or regenerate it"
            ) from None
        except UnicodeDecodeError:
            raise InstitError(f"{file}: not UTF-8 text; fix or regenerate it") from None
        if not isinstance(data, list):
            raise InstitError(f"{file}: expected a JSON list of records, got {type(data).__name__}")
        ctx = _Ctx(file, Path(media_root).resolve() if media_root else file.parent.resolve(), check_media)
        for i, rec in enumerate(data):
            if not isinstance(rec, dict):
                ctx.fail(f"record {i}", "each record must be a JSON object")
            if "video_id" in rec or "frame_level_caption" in rec:
                out.append(_read_video(rec, ctx, i))
            elif "image_id" in rec or "instance_level_caption" in rec:
                out.append(_read_image(rec, ctx, i))
            else:
                ctx.fail(f"record {i}", "neither an image record (image_id) nor a video record (video_id)")
    return out




def _rel(path: Path, root: Path, media_root: Path | None, default: str) -> tuple[Path, bool]:
    """(relative path under root, whether it must be copied there)."""
    path = Path(path).resolve()
    try:
        return path.relative_to(root), False
    except ValueError:
        pass
    if media_root is not None:
        try:
            return path.relative_to(media_root), True
        except ValueError:
            pass
    return Path(default) / path.name, True


def write_instit_dataset(records, root, media_root=None) -> list[Path]:
    """Write records as ``root/inst_it_dataset_image.json`` / ``inst_it_dataset_video.json``.

    Media under ``root`` are referenced relatively; others are copied (or
    hard-linked) to their path relative to ``media_root`` (else ``images/`` or
    ``videos/``). Returns the files written.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    media_root = Path(media_root).resolve() if media_root else None
    images, videos = [], []
    for rec in records:
        if isinstance(rec, ImageRecord):
            rel, copy = _rel(rec.image_path, root, media_root, "images")
            if copy:
                link_or_copy(Path(rec.image_path), root / rel)
            images.append({
                "image_id": rec.image_id,
                "image_path": rel.as_posix(),
                "instance_level_caption": dict(rec.instance_level_caption),
                "image_level_caption": rec.image_level_caption,
            })
        elif isinstance(rec, VideoRecord):
            rel, copy = _rel(rec.video_path, root, media_root, "videos")
            if copy:
                for f in rec.frames:
                    link_or_copy(Path(rec.video_path) / f.frame_name, root / rel / f.frame_name)
            videos.append({
                "video_id": rec.video_id,
                "video_path": rel.as_posix(),
                "frame_level_caption": [
                    {
                        "timestamp": f.timestamp,
                        "frame_name": f.frame_name,
                        "instance_level": dict(f.instance_level),
                        "image_level": f.image_level,
                        "temporal_change": f.temporal_change,
                    }
                    for f in rec.frames
                ],
                "question_answer_pairs": [{"question": q, "answer": a} for q, a in rec.question_answer_pairs],
                "video_level_caption": rec.video_level_caption,
            })
        else:
            raise TypeError(f"not an Inst-IT record: {type(rec).__name__}")
    written = []
    if images:
        write_json(root / IMAGE_FILE, images)
        written.append(root / IMAGE_FILE)
    if videos:
        write_json(root / VIDEO_FILE, videos)
        written.append(root / VIDEO_FILE)
    return written
