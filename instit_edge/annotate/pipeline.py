"""``instit-edge annotate``: mark, ask a teacher, validate, cache, write an Inst-IT Dataset.

Stages, for every INPUT (a video file or a frame folder is one video record, an image file one image record):

1. **mark**: :class:`~instit_edge.marker.pipeline.Marker` sees every frame (so IDs persist across frames) and
   every K-th frame is kept, up to ``max_frames``; the kept Set-of-Marks frames are saved under
   ``OUT/videos/<id>/`` (``OUT/images/`` for images), exactly what the teacher sees and the student trains on;
2. **frames**: one request per kept frame (two images, the previous kept frame and this one, after the first):
   instance-level captions for every visible ID, an image-level caption, the temporal change ``<t-1>`` -> ``<t>``;
3. **summary**: per video, a chronological summary from the frame annotations (text only);
4. **qa**: per video, open-ended QA pairs that refer to ``[ID]`` and ``<t>`` (text only).

Every reply must be one JSON object that passes :func:`validate_frame` / :func:`validate_summary` /
:func:`validate_qa` (every ``[ID]`` exists in the frame or video, every ``<t>`` is in range); a malformed
reply is sent back to the teacher with the error (``fix_attempts`` times), then the item is recorded as
failed in ``OUT/failed.json`` with its error and last reply. A video goes into the dataset when its frames
and summary succeeded (failed QA leaves it without QA pairs, and is recorded); an image when its one request
succeeded.

Valid replies are appended to ``OUT/cache.jsonl`` (flushed and fsynced) under a key made of the model, the
generation settings, the prompt text and the sha256 of every frame's pixels, so rerunning the same command
(after a crash, or after one prompt changed) asks only what is not cached. HTTP 429 / 5xx / connection errors
are retried with exponential backoff (``Retry-After`` honoured); 401 / 403 / 404 stop the run.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from instit_edge.annotate import prompts as P
from instit_edge.errors import InstitError
from instit_edge.prompting import find_ids, find_timestamps, validate_references

MARKER_FILE = "annotate.json"
CACHE_FILE = "cache.jsonl"
FAILED_FILE = "failed.json"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


class ReplyError(ValueError):
    """A teacher reply that cannot be used; the message is shown to the teacher on the retry."""


# --------------------------------------------------------------------------- reply parsing and validation


def parse_json_object(text: str | None) -> dict:
    """The JSON object in a reply (a ```json fence or text around it tolerated)."""
    if not text or not text.strip():
        raise ReplyError("the reply is empty; expected a JSON object")
    s = text.strip()
    fence = re.search(r"```(?:json)?\s*(.*?)```", s, re.S)
    if fence:
        s = fence.group(1).strip()
    a, b = s.find("{"), s.rfind("}")
    if a < 0 or b <= a:
        raise ReplyError(f"the reply is not a JSON object (no {{...}} in {_clip(text)!r})")
    try:
        obj = json.loads(s[a:b + 1])
    except json.JSONDecodeError as e:
        raise ReplyError(f"the reply is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if not isinstance(obj, dict):
        raise ReplyError("the reply must be a JSON object")
    return obj


def _clip(text: str, n: int = 80) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[:n] + "..."


def _text(obj: dict, key: str, where: str | None = None) -> str:
    v = obj.get(key)
    if not isinstance(v, str) or not v.strip():
        raise ReplyError(f'"{where or key}" must be a non-empty string')
    return v.strip()


def _refs(text: str, ids, n_frames: int | None, where: str) -> None:
    """Every ``[ID]`` in ``ids``; every ``<t>`` in 1..n_frames (``n_frames`` 0: an image, no ``<t>`` at all)."""
    if n_frames == 0:
        ts = find_timestamps(text)
        if ts:
            raise ReplyError(f"{where} has the timestamp <{ts[0][0]}>, but an image has no frames; remove it")
        n_frames = None
    try:
        validate_references(text, valid_ids=ids, n_frames=n_frames, where=where)
    except InstitError as e:
        raise ReplyError(e.message) from None


def _id_key(k) -> int:
    s = str(k).strip()
    if s.startswith("[") and s.endswith("]"):
        s = s[1:-1].strip()
    if not s.isdigit():
        raise ReplyError(f'"instance_level" has the key {str(k)!r}; keys must be the numeric IDs like "1"')
    return int(s)


def validate_frame(text: str, ids, *, n_frames: int, prev_ids=None, change: bool = False) -> dict:
    """A frame (or image: ``n_frames`` 0) reply -> ``{instance_level, image_level, temporal_change}``."""
    obj = parse_json_object(text)
    ids = sorted(int(i) for i in ids)
    inst = obj.get("instance_level")
    if inst is None and not ids:
        inst = {}
    if not isinstance(inst, dict):
        raise ReplyError('"instance_level" must be an object mapping each ID ("1") to its caption')
    caps: dict[int, str] = {}
    for k, v in inst.items():
        i = _id_key(k)
        if not isinstance(v, str) or not v.strip():
            raise ReplyError(f'"instance_level"["{i}"] must be a non-empty caption')
        caps[i] = v.strip()
    extra = sorted(set(caps) - set(ids))
    if extra:
        shown = P.ids_text(ids) if ids else "none"
        raise ReplyError(f'"instance_level" has [{extra[0]}], but the marked IDs in this frame are {shown}')
    missing = sorted(set(ids) - set(caps))
    if missing:
        raise ReplyError(f'"instance_level" has no caption for {P.ids_text(missing)}; every marked ID needs one')
    for i, c in caps.items():
        _refs(c, ids, n_frames, f'"instance_level"["{i}"]')
    image_level = _text(obj, "image_level")
    _refs(image_level, ids, n_frames, '"image_level"')
    temporal = None
    if change:
        temporal = _text(obj, "temporal_change")
        _refs(temporal, sorted(set(ids) | set(int(i) for i in prev_ids or ())), n_frames, '"temporal_change"')
    return {"instance_level": {str(i): caps[i] for i in sorted(caps)}, "image_level": image_level,
            "temporal_change": temporal}


def validate_summary(text: str, ids, n_frames: int) -> dict:
    obj = parse_json_object(text)
    summary = _text(obj, "summary")
    _refs(summary, ids, n_frames, '"summary"')
    return {"summary": summary}


def validate_qa(text: str, ids, n_frames: int, k: int | None = None) -> dict:
    obj = parse_json_object(text)
    qa = obj.get("qa")
    if not isinstance(qa, list) or not qa:
        raise ReplyError('"qa" must be a non-empty list of {"question": ..., "answer": ...}')
    pairs = []
    for j, pair in enumerate(qa, 1):
        if not isinstance(pair, dict):
            raise ReplyError(f'"qa" item {j} must be an object with "question" and "answer"')
        q = _text(pair, "question", f"qa item {j} question")
        a = _text(pair, "answer", f"qa item {j} answer")
        if not find_ids(q):
            raise ReplyError(f"qa item {j}: the question refers to no object; name at least one by its [ID]")
        _refs(q, ids, n_frames, f"qa item {j} question")
        _refs(a, ids, n_frames, f"qa item {j} answer")
        pairs.append([q, a])
    return {"qa": pairs[:k] if k else pairs}


# --------------------------------------------------------------------------- the cache


class ReplyCache:
    """Valid teacher results by request key, in a JSON-lines file (each line flushed and fsynced)."""

    def __init__(self, path: Path | None):
        self.path = path
        self.entries: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._f = None
        if path is not None and path.is_file():
            with open(path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    try:
                        e = json.loads(line)
                    except ValueError:  # the torn last line of a killed run
                        continue
                    if isinstance(e, dict) and isinstance(e.get("key"), str) and "result" in e:
                        self.entries[e["key"]] = e

    def get(self, key: str) -> dict | None:
        return self.entries.get(key)

    def put(self, key: str, entry: dict) -> None:
        entry = {"key": key, **entry}
        with self._lock:
            self.entries[key] = entry
            if self.path is None:
                return
            if self._f is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._f = open(self.path, "a", encoding="utf-8")
                if self._f.tell() > 0:  # a torn last line of a killed run: start on a fresh line
                    with open(self.path, "rb") as r:
                        r.seek(-1, os.SEEK_END)
                        if r.read(1) != b"\n":
                            self._f.write("\n")
            self._f.write(json.dumps(entry, ensure_ascii=False) + "\n")
            self._f.flush()
            os.fsync(self._f.fileno())

    def close(self) -> None:
        with self._lock:
            if self._f is not None:
                self._f.close()
                self._f = None


# --------------------------------------------------------------------------- requests and the teacher


@dataclass
class Frame:
    t: int  # 1-based annotated-frame index (<t>); 0 for an image
    name: str  # file name under the record's folder
    jpeg: bytes
    sha: str  # sha256 of the marked pixels
    ids: list[int]
    marks: dict = field(default_factory=dict)

    def data_url(self) -> str:
        import base64

        return "data:image/jpeg;base64," + base64.b64encode(self.jpeg).decode()


@dataclass
class Source:
    """One marked input: an image record or a video record."""

    kind: str  # "image" | "video"
    rid: str
    path: Path
    frames: list[Frame]

    @property
    def all_ids(self) -> list[int]:
        return sorted({i for f in self.frames for i in f.ids})

    @property
    def label(self) -> str:
        return f"{self.kind} {self.rid}"


@dataclass
class Request:
    kind: str  # "image" | "frame" | "summary" | "qa"
    rid: str
    label: str
    text: str
    images: list[Frame]
    validate: Callable[[str], dict]
    key: str = ""

    def messages(self, shown: bool = False) -> list[dict]:
        """OpenAI messages; ``shown``: images as ``sha256:...`` placeholders (the cache key, --dry-run)."""
        parts: list[dict] = []
        for f in self.images:
            url = f"sha256:{f.sha}" if shown else f.data_url()
            parts.append({"type": "image_url", "image_url": {"url": url}})
        parts.append({"type": "text", "text": self.text})
        return [{"role": "system", "content": P.SYSTEM_PROMPT}, {"role": "user", "content": parts}]


def request_key(req: Request, model: str, settings: dict) -> str:
    blob = json.dumps({"model": model, "settings": settings, "messages": req.messages(shown=True)},
                      sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass
class Stats:
    planned: int = 0
    done: int = 0
    ok: int = 0
    failed: int = 0
    cached: int = 0
    http_requests: int = 0
    http_retries: int = 0
    fix_retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__} | {"tokens": self.tokens}


def normalise_base_url(url: str) -> str:
    from urllib.parse import urlparse

    u = urlparse(url.strip())
    if u.scheme not in ("http", "https") or not u.netloc:
        raise InstitError(f"--teacher must be an http(s) URL like http://127.0.0.1:8080/v1 (got {url!r})")
    path = u.path.rstrip("/")
    return f"{u.scheme}://{u.netloc}{path or '/v1'}"


class Teacher:
    """The teacher behind an OpenAI-compatible endpoint (official ``openai`` client, our own retry loop)."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, *, max_tokens: int = 1024,
                 temperature: float = 0.0, retries: int = 5, backoff: float = 1.0, timeout: float = 600.0,
                 fix_attempts: int = 2, stats: Stats | None = None):
        import openai

        self.openai = openai
        self.base_url = normalise_base_url(base_url)
        self.model = model
        self.client = openai.OpenAI(base_url=self.base_url, api_key=api_key or "none", max_retries=0,
                                    timeout=timeout)
        self.max_tokens, self.temperature = int(max_tokens), float(temperature)
        self.retries, self.backoff, self.fix_attempts = int(retries), float(backoff), int(fix_attempts)
        self.stats = stats or Stats()
        self._lock = threading.Lock()

    @property
    def settings(self) -> dict:
        return {"max_tokens": self.max_tokens, "temperature": self.temperature}

    def preflight(self) -> None:
        """Fail fast on an unreachable teacher or a refused key (a server without /models is fine)."""
        o = self.openai
        try:
            self.client.models.list()
        except (o.APIConnectionError, o.APITimeoutError) as e:
            raise InstitError(f"the teacher at {self.base_url} cannot be reached ({_clip(str(e))}); "
                              "check --teacher and that the server is up") from None
        except (o.AuthenticationError, o.PermissionDeniedError) as e:
            raise InstitError(f"the teacher at {self.base_url} refused the API key (HTTP {e.status_code}); "
                              "check --api-key-env") from None
        except o.APIError:
            pass

    def _delay(self, attempt: int, err) -> float:
        resp = getattr(err, "response", None)
        ra = resp.headers.get("retry-after") if resp is not None else None
        try:
            if ra is not None:
                return min(max(float(ra), 0.0), 60.0)
        except ValueError:
            pass
        return min(self.backoff * (2 ** attempt) * (1 + 0.25 * random.random()), 60.0)

    def _call(self, messages: list[dict]):
        o = self.openai
        for attempt in range(self.retries + 1):
            with self._lock:
                self.stats.http_requests += 1
            try:
                return self.client.chat.completions.create(model=self.model, messages=messages,
                                                           max_tokens=self.max_tokens, temperature=self.temperature)
            except (o.AuthenticationError, o.PermissionDeniedError) as e:
                raise InstitError(f"the teacher refused the request (HTTP {e.status_code}: {_api_message(e)}); "
                                  "check --api-key-env") from None
            except o.NotFoundError as e:
                raise InstitError(f"the teacher answered 404 ({_api_message(e)}); check --teacher (the base URL, "
                                  "usually ending in /v1) and --model") from None
            except (o.RateLimitError, o.InternalServerError, o.APIConnectionError, o.APITimeoutError) as e:
                retriable = e
            except o.APIStatusError as e:
                if e.status_code < 500 and e.status_code != 429:
                    raise ReplyError(f"the teacher answered HTTP {e.status_code}: {_api_message(e)}") from None
                retriable = e
            if attempt == self.retries:
                status = getattr(retriable, "status_code", None)
                if status is None:
                    raise InstitError(f"the teacher at {self.base_url} stopped answering "
                                      f"({_clip(str(retriable))}) after {self.retries} retries; rerun the same "
                                      "command to resume") from None
                raise ReplyError(f"the teacher kept answering HTTP {status} ({_api_message(retriable)}) "
                                 f"after {self.retries} retries")
            with self._lock:
                self.stats.http_retries += 1
            time.sleep(self._delay(attempt, retriable))
        raise AssertionError("unreachable")  # pragma: no cover

    def ask(self, req: Request) -> dict:
        """``{status: ok|failed, result, error, reply, usage, attempts}`` for one request."""
        messages = req.messages()
        usage = {"prompt_tokens": 0, "completion_tokens": 0}
        reply, error = None, None
        for attempt in range(self.fix_attempts + 1):
            if attempt:
                with self._lock:
                    self.stats.fix_retries += 1
            try:
                r = self._call(messages)
            except ReplyError as e:  # an HTTP refusal of this item (400, persistent 429 / 5xx): no fix-up turn
                return {"status": "failed", "error": str(e), "reply": reply, "usage": usage, "attempts": attempt + 1}
            u = getattr(r, "usage", None)
            pt, ct = int(getattr(u, "prompt_tokens", 0) or 0), int(getattr(u, "completion_tokens", 0) or 0)
            usage["prompt_tokens"] += pt
            usage["completion_tokens"] += ct
            with self._lock:
                self.stats.prompt_tokens += pt
                self.stats.completion_tokens += ct
            reply = (r.choices[0].message.content or "") if r.choices else ""
            try:
                return {"status": "ok", "result": req.validate(reply), "reply": reply, "usage": usage,
                        "attempts": attempt + 1}
            except ReplyError as e:
                error = str(e)
            messages = messages + [{"role": "assistant", "content": reply or "(empty)"},
                                   {"role": "user", "content": P.fix_prompt(error, bool(req.images))}]
        return {"status": "failed", "error": error, "reply": reply, "usage": usage, "attempts": self.fix_attempts + 1}


def _api_message(e) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return _clip(str(err["message"]), 200)
    return _clip(str(getattr(e, "message", e)), 200)


# --------------------------------------------------------------------------- marking


def _record_id(path: Path, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem if path.is_file() else path.name).strip("._") or "input"
    rid, n = base, 2
    while rid in taken:
        rid, n = f"{base}-{n}", n + 1
    taken.add(rid)
    return rid


def _encode(rgb) -> tuple[bytes, str]:
    import cv2
    import numpy as np

    a = np.ascontiguousarray(rgb)
    sha = hashlib.sha256(f"{a.shape}".encode() + a.tobytes()).hexdigest()
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(a, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
    if not ok:  # pragma: no cover
        raise InstitError("cannot encode a marked frame as JPEG")
    return buf.tobytes(), sha


def mark_input(path: Path, rid: str, *, detector: str = "auto", every: int = 1, max_frames: int = 32,
               style: str = "box+id") -> Source:
    """Mark one input; keep every ``every``-th frame (at most ``max_frames``) that has a marked instance.

    ``frames`` is empty when the detector marked nothing (the caller reports the input as skipped).
    """
    from instit_edge.marker.pipeline import Marker
    from instit_edge.marker.sources import open_source

    is_image = path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
    det = detector if detector != "auto" else ("static" if is_image else "motion")
    marker = Marker(det, style=style)
    source = open_source(path)
    frames: list[Frame] = []
    try:
        for k, (_ts, rgb) in enumerate(source):
            mf = marker.process(rgb)
            if k % every or not mf.ids:  # nothing marked: nothing instance-level to annotate (or to train on)
                continue
            jpeg, sha = _encode(mf.image)
            t = 0 if is_image else len(frames) + 1
            name = f"{rid}.jpg" if is_image else f"frame_{k + 1:05d}.jpg"
            frames.append(Frame(t, name, jpeg, sha, mf.ids, {"frame": k, "t": t, "ids": mf.ids,
                                                             "instances": [i.to_dict() for i in mf.instances]}))
            if is_image or len(frames) >= max_frames:
                break
    finally:
        source.close()
        marker.close()
    return Source("image" if is_image else "video", rid, path, frames)


# --------------------------------------------------------------------------- requests per stage


def frame_requests(src: Source) -> list[Request]:
    if src.kind == "image":
        f = src.frames[0]
        return [Request("image", src.rid, src.label, P.frame_prompt(f.ids), [f],
                        lambda text, ids=tuple(f.ids): validate_frame(text, ids, n_frames=0))]
    n = len(src.frames)
    reqs = []
    for j, f in enumerate(src.frames):
        prev = src.frames[j - 1] if j else None
        text = P.frame_prompt(f.ids, t=f.t, prev=prev.t if prev else None)

        def check(text, ids=tuple(f.ids), prev_ids=tuple(prev.ids if prev else ()), change=prev is not None):
            return validate_frame(text, ids, n_frames=n, prev_ids=prev_ids, change=change)

        reqs.append(Request("frame", src.rid, f"{src.label} frame <{f.t}>", text, [prev, f] if prev else [f], check))
    return reqs


def _frame_dicts(src: Source, results: dict[int, dict]) -> list[dict]:
    return [{"t": f.t, **results[f.t]} for f in src.frames]


def summary_request(src: Source, results: dict[int, dict]) -> Request:
    ids, n = tuple(src.all_ids), len(src.frames)
    return Request("summary", src.rid, f"{src.label} summary", P.summary_prompt(_frame_dicts(src, results), ids), [],
                   lambda text: validate_summary(text, ids, n))


def qa_request(src: Source, results: dict[int, dict], summary: str, k: int) -> Request:
    ids, n = tuple(src.all_ids), len(src.frames)
    return Request("qa", src.rid, f"{src.label} QA", P.qa_prompt(_frame_dicts(src, results), summary, ids, k), [],
                   lambda text: validate_qa(text, ids, n, k))


# --------------------------------------------------------------------------- the run


@dataclass
class Run:
    teacher: Teacher | None
    cache: ReplyCache
    concurrency: int
    stats: Stats
    progress: Callable[[Stats], None] | None = None
    failures: list[dict] = field(default_factory=list)

    def tick(self) -> None:
        if self.progress is not None:
            self.progress(self.stats)

    def resolve(self, reqs: list[Request]) -> dict[str, dict]:
        """key -> outcome for every request: cached ones at once, the rest from the teacher, ``concurrency`` at a
        time. A fatal teacher error (InstitError) cancels what has not started and is raised."""
        s, out, todo = self.stats, {}, []
        settings = self.teacher.settings
        for r in reqs:
            r.key = request_key(r, self.teacher.model, settings)
        s.planned += len(reqs)
        for r in reqs:
            hit = self.cache.get(r.key)
            if hit is not None:
                out[r.key] = {"status": "ok", "result": hit["result"], "cached": True}
                s.done, s.ok, s.cached = s.done + 1, s.ok + 1, s.cached + 1
            else:
                todo.append(r)
        self.tick()
        if not todo:
            return out
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="annotate") as pool:
            futs = {pool.submit(self.teacher.ask, r): r for r in todo}
            try:
                for fut in as_completed(futs):
                    r = futs[fut]
                    o = fut.result()
                    out[r.key] = o
                    s.done += 1
                    if o["status"] == "ok":
                        s.ok += 1
                        self.cache.put(r.key, {"kind": r.kind, "record": r.rid, "label": r.label,
                                               "model": self.teacher.model, "result": o["result"],
                                               "reply": o["reply"], "usage": o["usage"], "attempts": o["attempts"],
                                               "time": round(time.time(), 3)})
                    else:
                        s.failed += 1
                        self.failures.append({"record": r.rid, "item": r.label, "kind": r.kind, "error": o["error"],
                                              "attempts": o["attempts"], "last_reply": o["reply"]})
                    self.tick()
            except BaseException:
                for f in futs:
                    f.cancel()
                raise
        return out


def _check_inputs(inputs) -> list[Path]:
    paths = []
    for p in inputs:
        p = Path(p)
        if not p.exists():
            raise InstitError(f"input not found: {p} (give video files, frame folders or images)")
        paths.append(p)
    if not paths:
        raise InstitError("give at least one INPUT (a video file, a folder of frames or an image)")
    return paths


def prepare_output(out: Path, inputs: list[Path]) -> Path:
    """An existing annotate output is resumed (its cache reused); anything else that exists must be empty."""
    from instit_edge.atomic import guard_output

    out = Path(os.path.abspath(out))
    ours = (out / MARKER_FILE).is_file()
    empty = out.is_dir() and not any(out.iterdir())
    if out.exists() and out.is_dir() and not (ours or empty):
        raise InstitError(f"--out {out} exists and is not an annotate output (no {MARKER_FILE}); choose an empty "
                          "or new folder (rerunning into an annotate output resumes it)")
    return guard_output(out, force=ours or empty, marker=MARKER_FILE, what="annotate output", inputs=inputs)


def annotate(inputs, out, *, teacher: str, model: str, api_key: str | None = None, detector: str = "auto",
             every: int = 1, max_frames: int = 32, concurrency: int = 4, qa_pairs: int = 5, max_tokens: int = 1024,
             temperature: float = 0.0, retries: int = 5, backoff: float = 1.0, fix_attempts: int = 2,
             timeout: float = 600.0, style: str = "box+id", dry_run: bool = False,
             progress: Callable[[Stats], None] | None = None, echo: Callable[[str], None] | None = None,
             on_marked: Callable[[Source], None] | None = None) -> dict:
    """Annotate ``inputs`` into the Inst-IT Dataset folder ``out``; return a summary dict (see module doc).

    ``dry_run``: mark, then print (``echo``) every prompt and the request count; no teacher call, nothing written.
    """
    from instit_edge.atomic import check_writable, write_bytes, write_json
    from instit_edge.data.dataset import IMAGE_FILE, VIDEO_FILE, write_instit_dataset
    from instit_edge.data.records import FrameCaption, ImageRecord, VideoRecord
    from instit_edge.marker.render import STYLES

    for name, v, lo in (("--every", every, 1), ("--max-frames", max_frames, 1), ("--concurrency", concurrency, 1),
                        ("--qa-pairs", qa_pairs, 0), ("--max-tokens", max_tokens, 1), ("--retries", retries, 0),
                        ("--fix-attempts", fix_attempts, 0)):
        if v < lo:
            raise InstitError(f"{name} must be at least {lo} (got {v})")
    if style not in STYLES or style == "none":
        raise InstitError(f"--style must be one of {', '.join(s for s in STYLES if s != 'none')} (got {style!r})")
    if not model or not model.strip():
        raise InstitError("--model is empty; give the teacher's model name")
    paths = _check_inputs(inputs)
    out = Path(os.path.abspath(out))
    if not dry_run:
        out = prepare_output(out, paths)
        check_writable(out)
    echo = echo or print
    t0 = time.perf_counter()
    if not dry_run:
        meta_path = out / MARKER_FILE
        if not meta_path.exists():  # the marker file first: from now on the folder is ours
            write_json(meta_path, {"tool": "instit-edge annotate", "status": "marking"})

    # 1. mark
    taken: set[str] = set()
    sources: list[Source] = []
    skipped: list[dict] = []
    for p in paths:
        src = mark_input(p, _record_id(p, taken), detector=detector, every=every, max_frames=max_frames, style=style)
        if src.frames:
            sources.append(src)
        else:
            skipped.append({"input": str(p), "record": src.rid, "reason": f"the {detector} detector marked no "
                            "instance in any kept frame (try another --detector)"})
            echo(f"skipped {p}: {skipped[-1]['reason']}")
        if on_marked is not None:
            on_marked(src)
    t_marked = time.perf_counter()
    n_frames = sum(len(s.frames) for s in sources)

    stats = Stats()
    tchr = Teacher(teacher, model, api_key, max_tokens=max_tokens, temperature=temperature, retries=retries,
                   backoff=backoff, timeout=timeout, fix_attempts=fix_attempts, stats=stats)
    cache = ReplyCache(out / CACHE_FILE)  # read here; appended to only when a reply comes (never in a dry run)
    if dry_run:
        return _dry_run(sources, tchr, cache, qa_pairs, echo, out)

    meta = {"tool": "instit-edge annotate", "status": "running", "teacher": tchr.base_url, "model": model,
            "inputs": [str(p) for p in paths], "detector": detector, "every": every, "max_frames": max_frames,
            "qa_pairs": qa_pairs, "settings": tchr.settings, "style": style}
    write_json(out / MARKER_FILE, meta)
    for src in sources:
        folder = out / ("images" if src.kind == "image" else Path("videos") / src.rid)
        for f in src.frames:
            target = folder / f.name
            if not target.is_file() or target.read_bytes() != f.jpeg:
                write_bytes(target, f.jpeg)
        marks = "".join(json.dumps(f.marks) + "\n" for f in src.frames)
        write_bytes(out / "marks" / f"{src.rid}.jsonl", marks.encode())

    tchr.preflight()
    run = Run(tchr, cache, concurrency, stats, progress)
    try:
        # 2. frames
        per_src = {s.rid: frame_requests(s) for s in sources}
        got = run.resolve([r for rs in per_src.values() for r in rs])
        frame_results: dict[str, dict[int, dict]] = {}
        for s in sources:
            res = {f.t: got[r.key]["result"] for f, r in zip(s.frames, per_src[s.rid]) if got[r.key]["status"] == "ok"}
            if len(res) == len(s.frames):
                frame_results[s.rid] = res
        videos = [s for s in sources if s.kind == "video" and s.rid in frame_results]
        # 3. summaries
        sreqs = {s.rid: summary_request(s, frame_results[s.rid]) for s in videos}
        got = run.resolve(list(sreqs.values()))
        summaries = {rid: got[r.key]["result"]["summary"] for rid, r in sreqs.items() if got[r.key]["status"] == "ok"}
        # 4. QA
        qreqs = {s.rid: qa_request(s, frame_results[s.rid], summaries[s.rid], qa_pairs) for s in videos
                 if s.rid in summaries and s.all_ids and qa_pairs > 0}
        got = run.resolve(list(qreqs.values()))
        qas = {rid: got[r.key]["result"]["qa"] for rid, r in qreqs.items() if got[r.key]["status"] == "ok"}
    finally:
        cache.close()

    # 5. the dataset: complete records only; what failed is listed in failed.json
    records = []
    for s in sources:
        if s.kind == "image" and s.rid in frame_results:
            r = frame_results[s.rid][0]
            records.append(ImageRecord(s.rid, out / "images" / s.frames[0].name, r["instance_level"],
                                       r["image_level"]))
        elif s.kind == "video" and s.rid in summaries:
            res = frame_results[s.rid]
            frames = [FrameCaption(f.t, f.name, res[f.t]["instance_level"], res[f.t]["image_level"],
                                   res[f.t]["temporal_change"] if f.t > 1 else None) for f in s.frames]
            records.append(VideoRecord(s.rid, out / "videos" / s.rid, frames,
                                       [tuple(p) for p in qas.get(s.rid, [])], summaries[s.rid]))
    written = write_instit_dataset(records, out) if records else []
    for stale in (IMAGE_FILE, VIDEO_FILE):  # a previous run's file this run no longer has records for
        if out / stale not in written and (out / stale).is_file():
            (out / stale).unlink()
    incomplete = sorted({f["record"] for f in run.failures if f["kind"] != "qa"})
    write_json(out / FAILED_FILE, run.failures)
    secs = time.perf_counter() - t0
    summary = {
        "out": str(out), "records": len(records), "images": sum(isinstance(r, ImageRecord) for r in records),
        "videos": sum(isinstance(r, VideoRecord) for r in records), "frames": n_frames,
        "qa_pairs": sum(len(r.question_answer_pairs) for r in records if isinstance(r, VideoRecord)),
        "failed_items": len(run.failures), "incomplete_records": incomplete, "skipped_inputs": skipped,
        "requests": stats.as_dict(), "seconds": round(secs, 2), "mark_seconds": round(t_marked - t0, 2),
        "frames_per_minute": round(n_frames / secs * 60, 1) if secs > 0 else None,
        "dataset_files": [p.name for p in written],
    }
    write_json(out / MARKER_FILE, {**meta, "status": "done", "summary": summary})
    return summary


def _dry_run(sources: list[Source], tchr: Teacher, cache: ReplyCache, qa_pairs: int, echo, out: Path) -> dict:
    """Print every prompt (images as sha256 placeholders) and count the requests; nothing is sent or written."""
    reqs = [r for s in sources for r in frame_requests(s)]
    frame_ids = {id(r) for r in reqs}
    later = []
    for s in sources:
        if s.kind != "video":
            continue
        res = {f.t: {"instance_level": {str(i): f"(the teacher's caption of [{i}])" for i in f.ids},
                     "image_level": "(the teacher's frame caption)",
                     "temporal_change": "(the teacher's temporal change)" if f.t > 1 else None} for f in s.frames}
        later.append(summary_request(s, res))
        if s.all_ids and qa_pairs > 0:
            later.append(qa_request(s, res, "(the teacher's summary)", qa_pairs))
    cached = 0
    for r in reqs + later:
        r.key = request_key(r, tchr.model, tchr.settings)
        hit = id(r) in frame_ids and cache.get(r.key) is not None
        cached += hit
        echo(f"----- {r.label} ({len(r.images)} image{'s' * (len(r.images) != 1)}"
             f"{', cached' if hit else ''})")
        for m in r.messages(shown=True)[1:]:
            for part in m["content"]:
                echo(f"[image {part['image_url']['url'][:19]}...]" if part["type"] == "image_url" else part["text"])
    echo(f"----- system prompt of every request:\n{P.SYSTEM_PROMPT}")
    n_frames = sum(len(s.frames) for s in sources)
    return {"dry_run": True, "out": str(out), "records": len(sources), "frames": n_frames,
            "requests": len(reqs) + len(later), "frame_requests": len(reqs), "video_requests": len(later),
            "cached_frame_requests": cached, "teacher": tchr.base_url, "model": tchr.model,
            "note": "summary and QA prompts depend on the frame answers; shown with placeholders, counted once each "
                    "(a malformed reply adds up to --fix-attempts more)"}
