"""The wire format of ``instit-edge serve``: OpenAI chat requests in, OpenAI responses / errors out.

A request is parsed and checked here, before any model work, into a
:class:`ChatRequest`: turns (role, text, image sources), sampling settings
and the ``instit`` extension. Images travel as ``data:`` URLs (base64);
remote ``http(s)`` URLs are fetched only when the server allows it, and local
paths / ``file://`` URLs are never read. Every refusal is an :class:`ApiError`
that becomes ``{"error": {"message", "type", "code"}}`` with its status.
"""

from __future__ import annotations

import base64
import binascii
import io
import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from instit_edge import prompting as P

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MARK_STYLES_DEFAULT = "box+id"


class ApiError(Exception):
    """An HTTP error in the OpenAI shape."""

    TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
             413: "invalid_request_error", 429: "rate_limit_error", 503: "server_error", 500: "server_error"}

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = " ".join(str(message).split())
        self.code = code
        self.param = param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str = "invalid_request") -> ApiError:
    return ApiError(400, message, code=code, param=param)


# --------------------------------------------------------------------------- request


@dataclass
class Turn:
    role: str
    text: str
    images: list[str] = field(default_factory=list)  # image URLs, in order (several = video frames)


@dataclass
class MarkSpec:
    detector: str
    style: str = MARK_STYLES_DEFAULT
    return_images: bool = False


@dataclass
class ChatRequest:
    model: str
    turns: list[Turn]
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    mark: MarkSpec | None = None

    @property
    def n_images(self) -> int:
        return sum(len(t.images) for t in self.turns)


def _number(body: dict, name: str, kind, lo=None, hi=None, default=None):
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not float(v).is_integer()):
        raise bad(f"'{name}' must be {'an integer' if kind is int else 'a number'}, got {v!r}", name)
    v = kind(v)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise bad(f"'{name}' must be between {lo} and {hi}, got {v}", name)
    return v


def _content(msg: dict, k: int, role: str) -> tuple[str, list[str]]:
    content = msg.get("content")
    where = f"messages[{k}].content"
    if content is None:
        raise bad(f"{where} is missing", where)
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise bad(f"{where} must be a string or a list of content parts", where)
    texts, images = [], []
    for j, part in enumerate(content):
        pw = f"{where}[{j}]"
        if not isinstance(part, dict):
            raise bad(f"{pw} must be an object with a 'type'", pw)
        kind = part.get("type")
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise bad(f"{pw}.text must be a string", pw)
            texts.append(part["text"])
        elif kind == "image_url":
            if role != "user":
                raise bad(f"{pw}: images are accepted in user messages only", pw)
            iu = part.get("image_url")
            url = iu.get("url") if isinstance(iu, dict) else iu
            if not isinstance(url, str) or not url:
                raise bad(f"{pw}.image_url.url must be a non-empty string", pw)
            images.append(url)
        else:
            raise bad(f"{pw}: content part type {kind!r} is not supported (use 'text' and 'image_url')", pw)
    return "\n".join(texts), images


def parse_mark(spec, param: str = "instit") -> MarkSpec | None:
    """The ``instit`` extension: ``{"mark": "static", "style": "box+id", "return_images": false}``."""
    from instit_edge.marker.render import STYLES

    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise bad(f"'{param}' must be an object like {{\"mark\": \"static\", \"style\": \"box+id\"}}", param)
    unknown = set(spec) - {"mark", "style", "return_images"}
    if unknown:
        raise bad(f"'{param}' has unknown fields {sorted(unknown)} (known: mark, style, return_images)", param)
    det = spec.get("mark")
    if det is None:
        return None
    if not isinstance(det, str) or not det.strip():
        raise bad(f"'{param}.mark' must be a detector name: motion | static | face | person | onnx:PATH | ...",
                  param)
    if det.split(":", 1)[0].strip().lower() in ("onnx", "tflite") and ":" in det:
        # a client must not make the server open files by path
        raise bad(f"'{param}.mark' {det!r}: detectors loaded from a path are not accepted over HTTP", param)
    style = spec.get("style", MARK_STYLES_DEFAULT)
    if style not in STYLES:
        raise bad(f"'{param}.style' must be one of {', '.join(STYLES)} (got {style!r})", param)
    return MarkSpec(det.strip(), style, bool(spec.get("return_images", False)))


def parse_chat(body, image_token: str, max_images: int) -> ChatRequest:
    """Check an OpenAI chat-completions body; :class:`ApiError` 400 on anything we cannot honour."""
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("'messages' must be a non-empty list", "messages")
    turns: list[Turn] = []
    for k, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise bad(f"messages[{k}] must be an object with 'role' and 'content'", f"messages[{k}]")
        role = ROLES.get(msg.get("role"))
        if role is None:
            raise bad(f"messages[{k}].role {msg.get('role')!r} is not supported (system, user, assistant)",
                      f"messages[{k}].role")
        text, images = _content(msg, k, role)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise bad(f"messages[{k}].content is not valid UTF-8 text (a lone surrogate escape?)",
                      f"messages[{k}].content") from None
        if role == "system" and turns:
            raise bad("a system message may only come first", f"messages[{k}]")
        turns.append(Turn(role, text, images))
    if turns[-1].role != "user":
        raise bad("the last message must come from the user", "messages")
    if not (turns[-1].text.strip() or turns[-1].images):
        raise bad("the last user message is empty", "messages")
    convo = [t.role for t in turns if t.role != "system"]
    if any(a == b for a, b in zip(convo, convo[1:])) or convo[0] != "user":
        raise bad("user and assistant messages must alternate, starting with the user", "messages")
    n = body.get("n")
    if n not in (None, 1):
        raise bad("only n=1 is supported", "n")
    for unsupported in ("tools", "functions", "logprobs", "response_format"):
        if body.get(unsupported) not in (None, False, [], {"type": "text"}):
            raise bad(f"'{unsupported}' is not supported by this server", unsupported)
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > 8:
        raise bad("'stop' must be a string or a list of at most 8 non-empty strings", "stop")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    so = body.get("stream_options") or {}
    req = ChatRequest(
        model=str(body.get("model") or ""),
        turns=turns,
        stream=bool(body.get("stream", False)),
        include_usage=bool(isinstance(so, dict) and so.get("include_usage")),
        max_tokens=_number({"max_tokens": max_tokens}, "max_tokens", int, 1, 1 << 20),
        temperature=_number(body, "temperature", float, 0.0, 2.0, 0.0),
        top_p=_number(body, "top_p", float, 0.0, 1.0, 1.0),
        seed=_number(body, "seed", int, -(1 << 63), (1 << 64) - 1),
        stop=stop,
        mark=parse_mark(body.get("instit")),
    )
    if req.top_p <= 0:
        raise bad("'top_p' must be greater than 0", "top_p")
    if req.seed is not None:
        req.seed = req.seed % (1 << 32)
    if req.n_images > max_images:
        raise bad(f"the request has {req.n_images} images; at most {max_images} are accepted", "messages")
    return req


def question_text(text: str) -> str:
    """The user's own words: the official pre-prompts quote example references ("[8]", "<7>-<8>")."""
    for pre in (P.IMAGE_MC_PRE_PROMPT, P.IMAGE_OE_PRE_PROMPT, P.VIDEO_MC_PRE_PROMPT, P.VIDEO_OE_PRE_PROMPT):
        text = text.replace(pre, "")
    return text


# --------------------------------------------------------------------------- images


@dataclass
class ImageLimits:
    max_bytes: int = 16 << 20
    max_pixels: int = 4096 * 4096
    allow_urls: bool = False
    url_timeout: float = 10.0


def _fetch(url: str, limits: ImageLimits) -> bytes:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, headers={"User-Agent": "instit-edge-serve"})
    try:
        with urllib.request.urlopen(req, timeout=limits.url_timeout) as r:  # noqa: S310 (scheme checked by caller)
            data = r.read(limits.max_bytes + 1)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise bad(f"cannot fetch image {url[:200]}: {e}", code="image_fetch_failed") from None
    if len(data) > limits.max_bytes:
        raise ApiError(413, f"image at {url[:200]} is larger than {limits.max_bytes >> 20} MB", "image_too_large")
    return data


def image_bytes(url: str, limits: ImageLimits) -> bytes:
    """The encoded image behind ``url`` (``data:`` always; ``http(s)`` only when allowed; never a local path)."""
    head = url[:16].lower()
    if head.startswith("data:"):
        meta, sep, payload = url.partition(",")
        if not sep or ";base64" not in meta.lower():
            raise bad("a data: image URL must be base64 (data:image/png;base64,...)", code="invalid_image_url")
        mime = meta[5:].split(";", 1)[0].strip().lower()
        if mime and not mime.startswith("image/"):
            raise bad(f"data: URL has type {mime!r}; send an image (image/png, image/jpeg, ...)",
                      code="invalid_image_url")
        if len(payload) * 3 // 4 > limits.max_bytes + 3:
            raise ApiError(413, f"an image is larger than {limits.max_bytes >> 20} MB", "image_too_large")
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise bad("a data: image URL has invalid base64", code="invalid_image_url") from None
    if head.startswith(("http://", "https://")):
        if not limits.allow_urls:
            raise bad("remote image URLs are refused by this server; send the image as a data: URL "
                      "(or start the server with --allow-urls)", code="remote_url_refused")
        return _fetch(url, limits)
    raise bad("image URLs must be data: URLs (base64); local files and file:// URLs are never read",
              code="invalid_image_url")


def decode_image(data: bytes, limits: ImageLimits) -> np.ndarray:
    """Encoded bytes -> HxWx3 uint8 RGB; 413 past the pixel limit (checked before decoding), 400 when unreadable."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > limits.max_pixels:
                raise ApiError(413, f"an image has {w}x{h} pixels; at most {limits.max_pixels} pixels are accepted",
                               "image_too_large")
            im.load()
            rgb = im.convert("RGB")
    except ApiError:
        raise
    except Image.DecompressionBombError:
        raise ApiError(413, "an image has too many pixels", "image_too_large") from None
    except Exception as e:  # PIL raises many types for corrupt data
        raise bad(f"cannot decode an image: {type(e).__name__} (send PNG, JPEG or WebP)",
                  code="invalid_image") from None
    if min(rgb.size) < 2:
        raise bad(f"an image of {rgb.size[0]}x{rgb.size[1]} pixels is too small", code="invalid_image")
    return np.ascontiguousarray(np.asarray(rgb))


def load_images(urls: list[str], limits: ImageLimits) -> list[np.ndarray]:
    return [decode_image(image_bytes(u, limits), limits) for u in urls]


def png_data_url(rgb: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# --------------------------------------------------------------------------- responses


def new_id(prefix: str = "chatcmpl") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(stats: dict) -> dict:
    pt, ct = int(stats.get("prompt_tokens", 0)), int(stats.get("generated_tokens", 0))
    return {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct,
            "prompt_tokens_details": {"cached_tokens": int(stats.get("reused_tokens", 0))}}


def completion(cid: str, model: str, text: str, finish: str, stats: dict, instit: dict | None) -> dict:
    out = {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
           "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                        "finish_reason": finish}],
           "usage": usage(stats), "timings": stats}
    if instit is not None:
        out["instit"] = instit
    return out


def chunk(cid: str, model: str, created: int, delta: dict | None, finish: str | None = None, **extra) -> dict:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices,
            **extra}
