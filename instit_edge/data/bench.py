"""Inst-IT Bench readers and writers, for both published layouts.

1. JSON layout (the GitHub / hub JSON files)::

       root/image_multi_choices.json   root/image_open_ended.json
       root/video_multi_choices.json   root/video_open_ended.json
       root/images_vpt/001.jpg         root/videos_vpt/001/<frames>

   items ``{"image_id", "question_id": "001-01", "image_path", "question",
   "answer": "C", "options": {"A": .., "D": ..}}`` (open ended: no options, the
   answer is text); video items carry ``video_id`` and ``video_path`` (a folder
   of frames, sorted by name).

2. Hub parquet layout: config folders ``image_multi_choice/``,
   ``image_open_ended/``, ``video_multi_choice/``, ``video_open_ended/``, each
   with ``test-00000-of-00001.parquet`` (any ``*.parquet`` below the folder is
   read, sorted): ``question_id, question, answer, choice_a..choice_d`` (MC) and
   ``image`` (struct ``{bytes, path}``, decoded once into ``root/.decoded/``) or
   ``video_path`` (a frame folder relative to root).

:func:`load_bench` detects the layout and validates every item; each problem
is an :class:`InstitError` naming the file and question_id.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from instit_edge.atomic import atomic_path, link_or_copy, write_bytes, write_json
from instit_edge.data.records import FORMATS, OPTION_LETTERS, SPLITS, BenchItem, list_frames
from instit_edge.errors import InstitError
from instit_edge.prompting import check_text

JSON_FILES = {
    ("image", "mc"): "image_multi_choices.json",
    ("image", "oe"): "image_open_ended.json",
    ("video", "mc"): "video_multi_choices.json",
    ("video", "oe"): "video_open_ended.json",
}
PARQUET_CONFIGS = {
    ("image", "mc"): "image_multi_choice",
    ("image", "oe"): "image_open_ended",
    ("video", "mc"): "video_multi_choice",
    ("video", "oe"): "video_open_ended",
}
PARQUET_FILE = "test-00000-of-00001.parquet"
DECODED_DIR = ".decoded"


# --------------------------------------------------------------------------
# layout detection
# --------------------------------------------------------------------------


def _parquet_files(root: Path, config: str) -> list[Path]:
    folder = root / config
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*.parquet") if not p.name.startswith("."))


def detect_layout(root) -> str:
    """``"json"`` or ``"parquet"``; InstitError when ``root`` holds neither layout."""
    root = Path(root)
    if not root.is_dir():
        raise InstitError(f"bench folder not found: {root} (give the Inst-IT Bench root folder)")
    if any((root / name).is_file() for name in JSON_FILES.values()):
        return "json"
    if any(_parquet_files(root, cfg) for cfg in PARQUET_CONFIGS.values()):
        return "parquet"
    raise InstitError(
        f"{root}: no Inst-IT Bench files found (expected image_multi_choices.json ... or "
        "image_multi_choice/test-00000-of-00001.parquet ...); point at the bench root folder"
    )


def _selection(split, fmt) -> list[tuple[str, str]]:
    if split is not None and split not in SPLITS:
        raise InstitError(f"unknown bench split {split!r} (use image or video)")
    if fmt is not None and fmt not in FORMATS:
        raise InstitError(f"unknown bench format {fmt!r} (use mc or oe)")
    return [(s, f) for (s, f) in JSON_FILES if (split is None or s == split) and (fmt is None or f == fmt)]


# --------------------------------------------------------------------------
# validation shared by both layouts
# --------------------------------------------------------------------------


class _Checker:
    """Validates raw rows of one file and turns them into BenchItems."""

    def __init__(self, root: Path, source: Path, split: str, fmt: str):
        self.root, self.source, self.split, self.fmt = root, source, split, fmt
        self.seen: set[str] = set()
        self.frame_cache: dict[Path, list[Path]] = {}

    def fail(self, qid, what: str):
        where = f"{self.source}: question {qid}" if qid is not None else f"{self.source}"
        raise InstitError(f"{where}: {what}")

    def text(self, row: dict, key: str, qid) -> str:
        if key not in row or row[key] is None:
            self.fail(qid, f"missing field {key!r} (fix or regenerate the file)")
        value = row[key]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            self.fail(qid, f"field {key!r} must be text, got {type(value).__name__}")
        try:
            check_text(value, f"field {key!r}")
        except InstitError as e:
            self.fail(qid, e.message)
        return value

    def item(self, row, index: int, options: dict | None, media: Path) -> BenchItem:
        if not isinstance(row, dict):
            self.fail(None, f"item {index} is not an object (each item must be a JSON object)")
        qid = row.get("question_id")
        if qid is None:
            self.fail(None, f"item {index}: missing field 'question_id' (fix or regenerate the file)")
        qid = str(qid)
        if qid in self.seen:
            self.fail(qid, "duplicate question_id (each question_id must appear once per file)")
        self.seen.add(qid)
        question = self.text(row, "question", qid)
        answer = self.text(row, "answer", qid).strip()
        if self.fmt == "mc":
            if not options:
                self.fail(qid, "multiple-choice item has no options (give options A-D)")
            if answer not in options:
                self.fail(qid, f"answer {answer!r} is not one of the option letters {', '.join(options)}")
        src_key = "image_id" if self.split == "image" else "video_id"
        source_id = row.get(src_key)
        source_id = str(source_id) if source_id is not None else qid.rsplit("-", 1)[0]
        category = row.get("category")
        item = BenchItem(
            question_id=qid, split=self.split, format=self.fmt, question=question, answer=answer,
            options=options if self.fmt == "mc" else None, source_id=source_id,
            category=str(category) if category is not None else None,
        )
        if self.split == "image":
            if not media.is_file():
                self.fail(qid, f"image not found: {media} (restore the image or fix image_path)")
            item.image_path = media
        else:
            if not media.is_dir():
                self.fail(qid, f"video frame folder not found: {media} (restore the frames or fix video_path)")
            frames = self.frame_cache.get(media)
            if frames is None:
                frames = self.frame_cache[media] = list_frames(media)
            if not frames:
                self.fail(qid, f"video folder {media} has no frames (add the frame images)")
            item.video_path = media
            item.frame_paths = list(frames)
            self.check_frames(item, len(frames))
        return item

    def check_frames(self, item: BenchItem, n_frames: int):
        from instit_edge.prompting import find_timestamps

        texts = [("question", item.question), ("answer", item.answer)]
        texts += [(f"option {k}", v) for k, v in (item.options or {}).items()]
        for where, text in texts:
            for start, end in find_timestamps(text):
                if start < 1 or end > n_frames or start > end:
                    ref = f"<{start}>" if start == end else f"<{start}>-<{end}>"
                    self.fail(
                        item.question_id,
                        f"{where} refers to frame {ref} but the video has {n_frames} frames "
                        f"(<1>-<{n_frames}>); fix the reference or the frames",
                    )


def _resolve(root: Path, rel, chk: _Checker, qid, key: str) -> Path:
    """``rel`` below ``root``; an absolute path, ``~`` or ``..`` that leaves the bench folder is refused."""
    from instit_edge.prompting import check_text

    text = str(rel)
    try:
        check_text(text, f"field {key!r}")
    except InstitError as e:
        chk.fail(qid, e.message)
    if not text.strip() or "\x00" in text:
        chk.fail(qid, f"field {key!r} is not a usable path: {text!r}")
    p = Path(text)
    full = Path(os.path.normpath(root / p))
    if p.is_absolute() or text.startswith("~") or (full != root and root not in full.parents):
        chk.fail(qid, f"{key} {text!r} points outside the bench folder {root}; media paths must be relative "
                      "to the bench folder and stay inside it")
    try:
        return full.resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        chk.fail(qid, f"{key} {text!r} cannot be resolved ({type(e).__name__})")


# --------------------------------------------------------------------------
# JSON layout
# --------------------------------------------------------------------------


def _load_json_file(root: Path, path: Path, split: str, fmt: str) -> list[BenchItem]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise InstitError(f"cannot read {path}: {e.strerror or type(e).__name__}") from None
    except RecursionError:
        raise InstitError(f"{path}: not a list of questions (JSON nested too deeply); fix or regenerate it") from None
    except json.JSONDecodeError as e:
        raise InstitError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); fix or regenerate it") from None
    except UnicodeDecodeError:
        raise InstitError(f"{path}: not UTF-8 text; fix or regenerate it") from None
    if not isinstance(data, list):
        raise InstitError(f"{path}: expected a JSON list of questions, got {type(data).__name__}")
    chk = _Checker(root, path, split, fmt)
    key = "image_path" if split == "image" else "video_path"
    items = []
    for i, row in enumerate(data):
        qid = row.get("question_id") if isinstance(row, dict) else None
        options = None
        if isinstance(row, dict) and fmt == "mc":
            options = row.get("options")
            if options is None:
                chk.fail(qid, "missing field 'options' (multiple-choice items need options A-D)")
            if not isinstance(options, dict) or not all(isinstance(v, str) for v in options.values()):
                chk.fail(qid, "'options' must map letters to option text")
            options = {str(k).strip(): v for k, v in options.items()}
        media = None
        if isinstance(row, dict):
            if row.get(key) is None:
                chk.fail(qid, f"missing field {key!r} (fix or regenerate the file)")
            media = _resolve(root, row[key], chk, qid, key)
        items.append(chk.item(row, i, options, media))
    return items


# --------------------------------------------------------------------------
# parquet layout
# --------------------------------------------------------------------------


def _decode_dir(root: Path) -> Path:
    d = root / DECODED_DIR
    try:
        d.mkdir(parents=True, exist_ok=True)
        if os.access(d, os.W_OK):
            return d
    except OSError:
        pass
    tag = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:12]
    d = Path(tempfile.gettempdir()) / "instit_edge_decoded" / tag
    d.mkdir(parents=True, exist_ok=True)
    return d


def _image_suffix(data: bytes, name: str | None) -> str:
    if name and Path(name).suffix:
        return Path(name).suffix.lower()
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    if data[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return ".img"


def _load_parquet_file(root: Path, path: Path, split: str, fmt: str, chk: _Checker) -> list[BenchItem]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise InstitError(f"{path}: cannot read parquet ({type(e).__name__}: {e}); re-download or regenerate it") from None
    chk.source = path
    decoded = None
    items = []
    for i, row in enumerate(rows):
        qid = row.get("question_id")
        options = None
        if fmt == "mc":
            options = {}
            for letter in OPTION_LETTERS:
                value = row.get(f"choice_{letter.lower()}")
                if value is not None:
                    options[letter] = str(value)
        if split == "image":
            img = row.get("image")
            if img is None:
                chk.fail(qid, "missing field 'image' (fix or regenerate the file)")
            data = img.get("bytes") if isinstance(img, dict) else None
            name = img.get("path") if isinstance(img, dict) else None
            if data:
                decoded = decoded or _decode_dir(root)
                digest = hashlib.sha1(data).hexdigest()[:20]
                media = decoded / f"{digest}{_image_suffix(data, name)}"
                if not (media.is_file() and media.stat().st_size == len(data)):
                    write_bytes(media, data)
            elif name:
                media = _resolve(root, name, chk, qid, "image.path")
            else:
                chk.fail(qid, "field 'image' has neither bytes nor a path (fix or regenerate the file)")
        else:
            if row.get("video_path") is None:
                chk.fail(qid, "missing field 'video_path' (fix or regenerate the file)")
            media = _resolve(root, row["video_path"], chk, qid, "video_path")
        items.append(chk.item(row, i, options, media))
    return items


# --------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------


def load_bench(root, split: str | None = None, fmt: str | None = None) -> list[BenchItem]:
    """Read an Inst-IT Bench folder (JSON or hub parquet layout, auto-detected).

    ``split``: "image" | "video" | None (both); ``fmt``: "mc" | "oe" | None (both).
    Items come in file order: image MC, image OE, video MC, video OE.
    """
    root = Path(root)
    wanted = _selection(split, fmt)
    layout = detect_layout(root)
    root = root.resolve()
    items: list[BenchItem] = []
    found = False
    for s, f in wanted:
        if layout == "json":
            path = root / JSON_FILES[(s, f)]
            if not path.is_file():
                continue
            found = True
            items += _load_json_file(root, path, s, f)
        else:
            files = _parquet_files(root, PARQUET_CONFIGS[(s, f)])
            if not files:
                continue
            found = True
            chk = _Checker(root, files[0], s, f)  # one checker: question_ids unique across shards
            for path in files:
                items += _load_parquet_file(root, path, s, f, chk)
    if not found:
        what = " ".join(x for x in (split, fmt) if x) or "any"
        raise InstitError(f"{root}: no {what} questions in this bench ({layout} layout); check --split / --format")
    if not items:
        what = " ".join(x for x in (split, fmt) if x)
        raise InstitError(f"{root}: the bench files hold no {what + ' ' if what else ''}questions (empty lists); "
                          "fix or regenerate the bench")
    return items


def _group(items) -> dict[tuple[str, str], list[BenchItem]]:
    groups: dict[tuple[str, str], list[BenchItem]] = {}
    for item in items:
        if (item.split, item.format) not in JSON_FILES:
            raise InstitError(f"question {item.question_id}: unknown split/format {item.split}/{item.format}")
        groups.setdefault((item.split, item.format), []).append(item)
    return groups




def _place_media(path: Path, root: Path, media_root: Path | None, kind: str) -> str:
    """Relative posix path of ``path`` under ``root``; media outside ``root`` is copied in."""
    path = Path(path).resolve()
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        pass
    rel = None
    if media_root is not None:
        try:
            rel = path.relative_to(Path(media_root).resolve())
        except ValueError:
            rel = None
    if rel is None:
        rel = Path("images_vpt" if kind == "image" else "videos_vpt") / path.name
    dst = root / rel
    if kind == "image":
        link_or_copy(path, dst)
    else:
        for frame in list_frames(path):
            link_or_copy(frame, dst / frame.name)
    return rel.as_posix()


def write_bench_json(items, root, media_root=None) -> list[Path]:
    """Write ``items`` as the JSON layout under ``root``; returns the files written.

    Media already under ``root`` are referenced relatively; others are copied
    (hard-linked when possible) to the same path relative to ``media_root``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    written = []
    for (s, f), group in _group(items).items():
        rows = []
        for it in group:
            row = {"image_id" if s == "image" else "video_id": it.source_id, "question_id": it.question_id}
            if s == "image":
                row["image_path"] = _place_media(it.image_path, root, media_root, "image")
            else:
                row["video_path"] = _place_media(it.video_path, root, media_root, "video")
            row["question"] = it.question
            row["answer"] = it.answer
            if f == "mc":
                row["options"] = dict(it.options or {})
            if it.category is not None:
                row["category"] = it.category
            rows.append(row)
        path = root / JSON_FILES[(s, f)]
        write_json(path, rows)
        written.append(path)
    return written


def _hf_metadata(split: str, fmt: str) -> bytes:
    """``huggingface`` schema metadata so ``datasets`` reads ``image`` as an Image feature."""
    feats = {"question_id": {"dtype": "string", "_type": "Value"}}
    for k in ("question", "answer"):
        feats[k] = {"dtype": "string", "_type": "Value"}
    if fmt == "mc":
        for letter in "abcd":
            feats[f"choice_{letter}"] = {"dtype": "string", "_type": "Value"}
    feats["image" if split == "image" else "video_path"] = (
        {"_type": "Image"} if split == "image" else {"dtype": "string", "_type": "Value"}
    )
    feats["image_id" if split == "image" else "video_id"] = {"dtype": "string", "_type": "Value"}
    feats["category"] = {"dtype": "string", "_type": "Value"}
    return json.dumps({"info": {"features": feats}}).encode()


def write_bench_parquet(items, root, media_root=None) -> list[Path]:
    """Write ``items`` as the hub parquet layout under ``root``; returns the files written.

    Images are embedded as ``{bytes, path}``; video frame folders are placed
    under ``root`` (copied or hard-linked when outside it) and referenced by
    ``video_path``. Extra columns ``image_id`` / ``video_id`` and ``category``
    are written too (the reader falls back when they are absent).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    written = []
    for (s, f), group in _group(items).items():
        fields = [("question_id", pa.string()), ("question", pa.string()), ("answer", pa.string())]
        if f == "mc":
            fields += [(f"choice_{c}", pa.string()) for c in "abcd"]
        if s == "image":
            fields.append(("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])))
            fields.append(("image_id", pa.string()))
        else:
            fields.append(("video_path", pa.string()))
            fields.append(("video_id", pa.string()))
        fields.append(("category", pa.string()))
        schema = pa.schema(fields, metadata={b"huggingface": _hf_metadata(s, f)})
        cols: dict[str, list] = {name: [] for name, _ in fields}
        for it in group:
            cols["question_id"].append(it.question_id)
            cols["question"].append(it.question)
            cols["answer"].append(it.answer)
            if f == "mc":
                extra = set(it.options or {}) - set(OPTION_LETTERS)
                if extra:
                    raise InstitError(
                        f"question {it.question_id}: options {sorted(extra)} do not fit the parquet layout "
                        "(only A-D); write the JSON layout instead"
                    )
                for letter in OPTION_LETTERS:
                    cols[f"choice_{letter.lower()}"].append((it.options or {}).get(letter))
            if s == "image":
                p = Path(it.image_path)
                cols["image"].append({"bytes": p.read_bytes(), "path": p.name})
                cols["image_id"].append(it.source_id)
            else:
                cols["video_path"].append(_place_media(it.video_path, root, media_root, "video"))
                cols["video_id"].append(it.source_id)
            cols["category"].append(it.category)
        table = pa.table(cols, schema=schema)
        path = root / PARQUET_CONFIGS[(s, f)] / PARQUET_FILE
        with atomic_path(path, suffix=".parquet") as tmp:
            pq.write_table(table, tmp)
        written.append(path)
    return written
