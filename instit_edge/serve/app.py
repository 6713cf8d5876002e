"""The FastAPI app of ``instit-edge serve``: OpenAI chat completions over a bundle, plus instance marks.

Routes:

* ``POST /v1/chat/completions``: OpenAI chat format (``messages`` with ``text``
  and ``image_url`` parts; several images in one message are the frames of a
  video, ``<1>``..``<N>`` in order), ``stream`` (server-sent events ending
  with ``data: [DONE]``), ``max_tokens``, ``temperature``, ``top_p``,
  ``seed``, ``stop``, ``stream_options.include_usage``. Extension:
  ``"instit": {"mark": "static", "style": "box+id"}`` marks the images on the
  server first and returns ``response["instit"]`` (``ids``, ``instances``
  with boxes, per-frame marks); a question naming an ``[ID]`` that the marker
  did not find, or a ``<t>`` past the last frame, is a 400.
* ``POST /v1/instances``: the marks alone, ``{"image" | "images", "mark", "style", "return_images"}``.
* ``GET /v1/models``, ``GET /health`` (200 when ready, 503 while loading; no key needed).

Errors are ``{"error": {"message", "type", "param", "code"}}``: 400 bad request,
401 missing / wrong key, 413 body or image too large, 429 queue full, 503
loading or shutting down.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from instit_edge.errors import InstitError
from instit_edge.serve.engine import ServeEngine
from instit_edge.serve.protocol import (
    ApiError,
    ImageLimits,
    bad,
    chunk,
    completion,
    load_images,
    new_id,
    parse_chat,
    parse_mark,
    usage,
)

DRAIN_BYTES = 64 << 20  # an oversized body is read (and dropped) up to this much more, so the client sees the 413


def _error_response(e: ApiError) -> JSONResponse:
    headers = {"Retry-After": "1"} if e.status in (429, 503) else None
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


async def read_json(request: Request, limit: int):
    """The JSON body, read with a size limit (413 beyond it), 400 when it is not JSON."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + DRAIN_BYTES:
        raise ApiError(413, f"the request body is {int(declared) >> 20} MB; at most {limit >> 20} MB are accepted",
                       "request_too_large")
    parts, n = [], 0
    async for piece in request.stream():
        n += len(piece)
        if n <= limit:
            parts.append(piece)
        elif n > limit + DRAIN_BYTES:
            break
    if n > limit:
        raise ApiError(413, f"the request body is larger than {limit >> 20} MB", "request_too_large")
    try:
        return json.loads(b"".join(parts))
    except (ValueError, UnicodeDecodeError):
        raise bad("the request body is not valid JSON") from None


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


def create_app(engine: ServeEngine, *, api_key: str | None = None, limits: ImageLimits | None = None,
               max_body_bytes: int = 32 << 20) -> FastAPI:
    """The app; ``engine`` is started here when the caller has not started it, and closed on shutdown."""
    limits = limits or ImageLimits()

    @asynccontextmanager
    async def lifespan(_app):
        engine.start()
        try:
            yield
        finally:
            await run_in_threadpool(engine.close)

    app = FastAPI(title="instit-edge", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)

    @app.exception_handler(ApiError)
    async def _api_error(_request, e: ApiError):
        return _error_response(e)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request, e: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return _error_response(ApiError(e.status_code, str(e.detail), code))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request, e: RequestValidationError):
        return _error_response(bad(f"invalid request: {e.errors()[:1]}"))

    @app.exception_handler(Exception)
    async def _internal(_request, e: Exception):
        return _error_response(ApiError(500, f"internal error: {type(e).__name__}", "internal_error"))

    async def auth(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if not header:
            raise ApiError(401, "missing API key: send 'Authorization: Bearer KEY'", "missing_api_key")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(401, "invalid API key", "invalid_api_key")

    # ------------------------------------------------------------------ info
    @app.get("/health")
    async def health():
        h = engine.health()
        if h["status"] != "ok" and engine.error:
            h["error"] = engine.error
        return JSONResponse(h, status_code=200 if h["status"] == "ok" else 503,
                            headers=None if h["status"] == "ok" else {"Retry-After": "1"})

    @app.get("/v1/models", dependencies=[Depends(auth)])
    async def models():
        return {"object": "list", "data": [{
            "id": engine.model_name, "object": "model", "created": engine.created, "owned_by": "instit-edge",
            "instit": {"llm": engine.llm_variant, "vision": engine.vision_variant, "state": engine.state,
                       "variants": engine.variants()}}]}

    # ------------------------------------------------------------------ chat
    @app.post("/v1/chat/completions", dependencies=[Depends(auth)])
    async def chat_completions(request: Request):
        engine.check_ready()
        body = await read_json(request, max_body_bytes)
        req = parse_chat(body, engine.image_token, engine.max_frames)
        engine.admit()
        try:
            media = await run_in_threadpool(lambda: [load_images(t.images, limits) for t in req.turns])
        except BaseException:
            engine.admission.leave()
            raise
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()

        def emit(ev) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, ev)
            except RuntimeError:  # the event loop is gone (shutdown): nobody is listening
                cancel.set()

        fut = engine.submit(engine.chat_job(req, media, emit, cancel))
        fut.add_done_callback(lambda f: emit(("done", f)))
        model = req.model or engine.model_name
        try:
            first = await events.get()
            _raise_if_failed(first)
        except BaseException:
            cancel.set()
            raise
        instit = first[1]
        cid, created = new_id(), int(time.time())

        if not req.stream:
            try:
                pieces, finish, stats = [], "stop", {}
                while True:
                    ev = await events.get()
                    if ev[0] == "piece":
                        pieces.append(ev[1])
                    elif ev[0] == "end":
                        finish, stats = ev[1], ev[2]
                    elif ev[0] == "error":
                        raise ev[1]
                    elif ev[0] == "done":
                        break
            finally:
                cancel.set()
            return completion(cid, model, "".join(pieces), finish, stats, instit)

        async def sse():
            try:
                extra = {"instit": instit} if instit is not None else {}
                yield _sse(chunk(cid, model, created, {"role": "assistant", "content": ""}, **extra))
                while True:
                    ev = await events.get()
                    if ev[0] == "piece":
                        yield _sse(chunk(cid, model, created, {"content": ev[1]}))
                    elif ev[0] == "end":
                        yield _sse(chunk(cid, model, created, {}, ev[1], timings=ev[2]))
                        if req.include_usage:
                            yield _sse(chunk(cid, model, created, None, usage=usage(ev[2])))
                    elif ev[0] == "error":
                        yield _sse(ev[1].body())
                    elif ev[0] == "done":
                        break
                yield "data: [DONE]\n\n"
            finally:
                cancel.set()  # the client went away (or we are done): stop generating at the next token

        return StreamingResponse(sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # ------------------------------------------------------------------ instances
    @app.post("/v1/instances", dependencies=[Depends(auth)])
    async def instances(request: Request):
        engine.check_ready()
        body = await read_json(request, max_body_bytes)
        if not isinstance(body, dict):
            raise bad("the request body must be a JSON object")
        urls = body.get("images", [body["image"]] if "image" in body else None)
        if not isinstance(urls, list) or not urls or not all(isinstance(u, str) and u for u in urls):
            raise bad("give 'image' (a data: URL) or 'images' (a list of them, the frames of a video in order)",
                      "images")
        if len(urls) > engine.max_frames:
            raise bad(f"{len(urls)} images; at most {engine.max_frames} are accepted", "images")
        if body.get("mark") is None:
            raise bad("give 'mark': the detector (static | motion | face | person)", "mark")
        spec = parse_mark({k: body[k] for k in ("mark", "style", "return_images") if k in body}, param="body")
        engine.admit()
        try:
            frames = await run_in_threadpool(load_images, urls, limits)
        except BaseException:
            engine.admission.leave()
            raise
        try:
            info = await asyncio.wrap_future(engine.submit(engine.instances_job(spec, frames)))
        except InstitError as e:
            raise ApiError(400, e.message, "invalid_detector") from None
        return {"object": "instit.instances", "model": engine.model_name, **info}

    return app


def _raise_if_failed(ev) -> None:
    """The first event of a chat job: ``start`` goes on; an error or an early end becomes the HTTP error."""
    if ev[0] == "error":
        raise ev[1]
    if ev[0] == "done":
        exc = ev[1].exception()
        if isinstance(exc, ApiError):
            raise exc
        raise ApiError(500, f"the request ended without an answer ({type(exc).__name__ if exc else 'no output'})",
                       "internal_error")
