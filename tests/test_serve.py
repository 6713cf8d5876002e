"""`instit-edge serve` as a real process on a free localhost port, driven with the official `openai` client.

Two server processes: the main one (API key, 2 MB body limit) for answers, marks and error statuses, and a
small one (queue of 1, delayed load, --allow-urls) for 503 while loading, 429 and the load test. Answers
are compared with EdgeSession's own (greedy) answer for the same input.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

openai = pytest.importorskip("openai")

COMBO = "llava-next-llama-clip"
KEY = "test-key-123"


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 60):
    """(status, parsed JSON or text, headers) without raising on HTTP errors."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw, status, hdrs = r.read(), r.status, dict(r.headers)
    except urllib.error.HTTPError as e:
        raw, status, hdrs = e.read(), e.code, dict(e.headers)
    try:
        return status, json.loads(raw), hdrs
    except ValueError:
        return status, raw.decode(errors="replace"), hdrs


def post_json(url: str, obj, key: str | None = KEY):
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return http("POST", url, json.dumps(obj).encode(), headers)


def data_url(path_or_array) -> str:
    if isinstance(path_or_array, (str, Path)):
        raw = Path(path_or_array).read_bytes()
        mime = "image/jpeg" if str(path_or_array).lower().endswith((".jpg", ".jpeg")) else "image/png"
        return f"data:{mime};base64," + base64.b64encode(raw).decode()
    buf = io.BytesIO()
    Image.fromarray(path_or_array).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


class Server:
    def __init__(self, bundle: Path, *args: str, env: dict | None = None, key: str | None = KEY):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "instit_edge.cli", "serve", str(bundle), "--port", str(self.port),
               "--threads", "1", *args]
        if key:
            cmd += ["--api-key-env", "INSTIT_TEST_KEY"]
        self.log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"instit-serve-{self.port}.log", "w+")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "INSTIT_TEST_KEY": KEY, "COLUMNS": "200", **(env or {})})

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def wait(self, ready: bool = True, timeout: float = 120.0) -> None:
        """Until the port answers (``ready=False``) or /health says ok."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                status, _, _ = http("GET", self.url + "/health", timeout=5)
                if status == 200 or not ready:
                    return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"server not up after {timeout}s:\n{self.output()}")

    def client(self, key: str = KEY, **kw):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=120, **kw)

    def stop(self) -> int:
        """SIGTERM, as a service manager does; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.log.closed:
            self.final_output = self.output()
            self.log.close()
        return self.proc.returncode


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def bundle(bundles):
    return bundles(COMBO)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from instit_edge.data.synth import build_world

    out = tmp_path_factory.mktemp("serve") / "world"
    build_world(out, seed=5, n_images=1, n_videos=1, image_size=(160, 120), n_train_images=0, n_train_videos=0)
    gt = json.loads((out / "ground_truth.json").read_text())
    img = gt["bench"]["images"]["001"]
    vid = gt["bench"]["videos"]["001"]
    frames = sorted((out / vid["video_path"]).glob("*.jpg"))
    return {"image": out / img["image_path"], "instances": img["instances"], "frames": frames[:4]}


@pytest.fixture(scope="module")
def server(bundle):
    srv = Server(bundle, "--max-body-mb", "2")
    try:
        srv.wait()
        yield srv
    finally:
        code = srv.stop()
    assert code == 0, srv.final_output  # SIGTERM: a graceful stop, the model freed, exit 0
    assert "server stopped" in srv.final_output


@pytest.fixture(scope="module")
def direct(bundle):
    from instit_edge.runtime.session import EdgeSession

    return EdgeSession.load(bundle, n_threads=1)


@pytest.fixture(scope="module")
def client(server):
    return server.client()


def model_id(client) -> str:
    return client.models.list().data[0].id


# --------------------------------------------------------------------------- answers


def test_health_and_models(server, client, bundle):
    status, body, _ = http("GET", server.url + "/health")  # no key needed
    assert status == 200 and body["status"] == "ok"
    models = client.models.list().data
    assert [m.id for m in models] == [bundle.name]
    assert models[0].model_extra["instit"]["llm"] == "f16"


def test_plain_answer_equals_session(client, direct):
    q = "Describe the scene in one sentence."
    r = client.chat.completions.create(model=model_id(client), messages=[{"role": "user", "content": q}],
                                       max_tokens=12)
    ref = direct.ask(q, max_new_tokens=12)
    assert r.choices[0].message.content.strip() == ref.text
    assert r.choices[0].message.role == "assistant"
    assert r.usage.prompt_tokens == ref.stats["prompt_tokens"]
    assert r.usage.completion_tokens == ref.stats["generated_tokens"]
    assert r.choices[0].finish_reason in ("stop", "length")


def test_streamed_answer_equals_plain(client):
    q = "What colours do you see?"
    kw = dict(model=model_id(client), messages=[{"role": "user", "content": q}], max_tokens=16, seed=1)
    plain = client.chat.completions.create(**kw).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain
    assert chunks[0].choices[0].delta.role == "assistant"
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 2  # really streamed
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")


def test_sampling_with_seed_is_reproducible(client):
    kw = dict(model=model_id(client), messages=[{"role": "user", "content": "Say something."}], max_tokens=12,
              temperature=1.0, top_p=0.9, seed=42)
    a = client.chat.completions.create(**kw).choices[0].message.content
    b = client.chat.completions.create(**kw).choices[0].message.content
    assert a == b


def test_stop_string(client):
    kw = dict(model=model_id(client), messages=[{"role": "user", "content": "Count to ten."}], max_tokens=24)
    full = client.chat.completions.create(**kw).choices[0].message.content
    cut = full.strip()[3:5]
    assert len(full.strip()) > 6 and cut.strip(), f"the greedy answer is too short to cut: {full!r}"
    r = client.chat.completions.create(stop=[cut], **kw).choices[0]
    assert cut not in r.message.content and full.startswith(r.message.content)
    assert r.finish_reason == "stop"


def test_image_question_equals_session(client, direct, world):
    q = "What is [1] next to?"
    r = client.chat.completions.create(
        model=model_id(client), max_tokens=12,
        messages=[{"role": "user", "content": [image_part(data_url(world["image"])), {"type": "text", "text": q}]}])
    ref = direct.ask(q, image=world["image"], max_new_tokens=12)
    assert r.choices[0].message.content.strip() == ref.text
    assert r.usage.prompt_tokens == ref.stats["prompt_tokens"] and ref.stats["image_rows"] > 0
    # the same image again: vision from the cache and the prompt prefix (with the image rows) from the KV
    r2 = client.chat.completions.create(
        model=model_id(client), max_tokens=4,
        messages=[{"role": "user", "content": [image_part(data_url(world["image"])),
                                               {"type": "text", "text": "And [2]?"}]}])
    assert r2.usage.prompt_tokens_details.cached_tokens > ref.stats["image_rows"]


def test_video_question_with_frames(client, direct, world):
    frames = world["frames"]
    assert len(frames) == 4
    q = "What does [1] do between <1> and <4>?"
    content = [image_part(data_url(f)) for f in frames] + [{"type": "text", "text": q}]
    r = client.chat.completions.create(model=model_id(client), max_tokens=12,
                                       messages=[{"role": "user", "content": content}])
    ref = direct.ask(q, video=frames, max_new_tokens=12)
    assert ref.stats["frames"] == 4
    assert r.choices[0].message.content.strip() == ref.text
    assert r.model_extra["timings"]["frames"] == 4
    with pytest.raises(openai.BadRequestError) as e:  # a <t> past the last frame
        client.chat.completions.create(model=model_id(client), max_tokens=4, messages=[{
            "role": "user", "content": content[:-1] + [{"type": "text", "text": "What happens at <5>?"}]}])
    assert e.value.status_code == 400 and "<5>" in e.value.body["message"] and "4 frames" in e.value.body["message"]


def test_multi_turn_conversation_reuses_kv(client, world):
    img = image_part(data_url(world["image"]))
    first = [{"role": "user", "content": [img, {"type": "text", "text": "What is [1]?"}]}]
    a = client.chat.completions.create(model=model_id(client), max_tokens=8, messages=first)
    follow = first + [{"role": "assistant", "content": a.choices[0].message.content},
                      {"role": "user", "content": "And where is it?"}]
    b = client.chat.completions.create(model=model_id(client), max_tokens=8, messages=follow)
    assert b.usage.prompt_tokens > a.usage.prompt_tokens
    assert b.usage.prompt_tokens_details.cached_tokens > a.usage.prompt_tokens // 2


def _iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_server_side_marking(server, client, direct, world):
    raw = np.asarray(Image.open(world["image"]).convert("RGB"))
    q = "What is [2] next to?"
    r = client.chat.completions.create(
        model=model_id(client), max_tokens=10,
        messages=[{"role": "user", "content": [image_part(data_url(raw)), {"type": "text", "text": q}]}],
        extra_body={"instit": {"mark": "static", "style": "box+id", "return_images": True}})
    inst = r.model_extra["instit"]
    gt_boxes = [v["box"] for v in world["instances"].values()]
    assert len(inst["instances"]) == len(gt_boxes) and inst["ids"] == list(range(1, len(gt_boxes) + 1))
    for d in inst["instances"]:  # each found box matches a ground-truth instance
        assert max(_iou(d["box"], g) for g in gt_boxes) > 0.5, (d, gt_boxes)
    # the answer is about the marked image the server made
    marked = np.asarray(Image.open(io.BytesIO(base64.b64decode(inst["frames"][0]["image"].split(",", 1)[1]))))
    assert marked.shape == raw.shape and not np.array_equal(marked, raw)
    assert r.choices[0].message.content.strip() == direct.ask(q, image=marked, max_new_tokens=10).text

    # streamed: the instances come in the first chunk
    chunks = list(client.chat.completions.create(
        model=model_id(client), max_tokens=4, stream=True,
        messages=[{"role": "user", "content": [image_part(data_url(raw)), {"type": "text", "text": q}]}],
        extra_body={"instit": {"mark": "static"}}))
    assert chunks[0].model_extra["instit"]["ids"] == inst["ids"]

    # an ID the marker did not find: 400, no model call
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=model_id(client), max_tokens=4,
            messages=[{"role": "user", "content": [image_part(data_url(raw)), {"type": "text", "text": "Is [9] red?"}]}],
            extra_body={"instit": {"mark": "static"}})
    assert "[9]" in e.value.body["message"] and "[1]" in e.value.body["message"]

    # the marks alone
    status, body, _ = post_json(server.url + "/v1/instances", {"image": data_url(raw), "mark": "static"})
    assert status == 200, body
    assert body["ids"] == inst["ids"] and [d["box"] for d in body["instances"]] == [
        d["box"] for d in inst["instances"]]
    # frames of a video: one tracker, IDs persist
    frames = [data_url(f) for f in world["frames"]]
    status, body, _ = post_json(server.url + "/v1/instances", {"images": frames, "mark": "static"})
    assert status == 200 and len(body["frames"]) == 4 and body["ids"]
    assert all(set(f["ids"]) <= set(body["ids"]) for f in body["frames"])


# --------------------------------------------------------------------------- errors


def _error(status, body, code_status):
    assert status == code_status, body
    assert set(body["error"]) >= {"message", "type", "code"}, body
    return body["error"]


def test_auth_errors(server):
    ok = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    err = _error(*post_json(server.url + "/v1/chat/completions", ok, key=None)[:2], 401)
    assert err["code"] == "missing_api_key"
    with pytest.raises(openai.AuthenticationError) as e:
        server.client(key="wrong").chat.completions.create(**ok)
    assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
    assert _error(*http("GET", server.url + "/v1/models")[:2], 401)


@pytest.mark.parametrize("messages,needle", [
    ([], "non-empty"),
    ([{"role": "tool", "content": "x"}], "role"),
    ([{"role": "assistant", "content": "x"}], "last message"),
    ([{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}], "not supported"),
    ([{"role": "user", "content": [image_part("https://example.com/a.png"), {"type": "text", "text": "?"}]}],
     "--allow-urls"),
    ([{"role": "user", "content": [image_part("file:///etc/passwd")]}], "never read"),
    ([{"role": "user", "content": [image_part("/etc/passwd")]}], "never read"),
    ([{"role": "user", "content": [image_part("data:image/png;base64,@@@@")]}], "base64"),
    ([{"role": "user", "content": [image_part("data:image/png;base64," + base64.b64encode(b"nope").decode())]}],
     "cannot decode"),
    ([{"role": "user", "content": "What happens in <3>-<2>?"}], "ends before"),
])
def test_bad_requests(client, messages, needle):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="m", messages=messages, max_tokens=2)
    assert e.value.status_code == 400
    assert needle in e.value.body["message"], e.value.body
    assert e.value.body["type"] == "invalid_request_error"


def test_bad_parameters(server):
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    for extra, needle in (({"max_tokens": 0}, "max_tokens"), ({"temperature": 5}, "temperature"),
                          ({"n": 3}, "n=1"), ({"instit": {"mark": "static", "style": "neon"}}, "style"),
                          ({"instit": {"mark": "static"}}, "at least one image"),
                          ({"instit": {"mark": "onnx:/etc/model.onnx"}}, "path")):
        err = _error(*post_json(server.url + "/v1/chat/completions", {**base, **extra})[:2], 400)
        assert needle in err["message"], (extra, err)
    status, body, _ = http("POST", server.url + "/v1/chat/completions", b"{not json",
                           {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert "JSON" in _error(status, body, 400)["message"]
    assert _error(*post_json(server.url + "/v1/instances", {"image": "data:,", "mark": "nope"})[:2], 400)


def test_too_large(server, client):
    big = {"model": "m", "messages": [{"role": "user", "content": "x" * (3 << 20)}]}  # server limit: 2 MB
    err = _error(*post_json(server.url + "/v1/chat/completions", big)[:2], 413)
    assert err["code"] == "request_too_large"
    huge = np.zeros((4200, 4200, 3), np.uint8)  # 17.6 Mpx > 16.7 Mpx, a few KB as PNG
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="m", max_tokens=2, messages=[{
            "role": "user", "content": [image_part(data_url(huge)), {"type": "text", "text": "?"}]}])
    assert e.value.status_code == 413 and e.value.body["code"] == "image_too_large"
    status, body, _ = http("GET", server.url + "/health")
    assert status == 200  # still serving


# --------------------------------------------------------------------------- a second server: 503, 429, load


@pytest.fixture(scope="module")
def small_server(bundle):
    srv = Server(bundle, "--queue", "1", "--allow-urls", env={"INSTIT_SERVE_TEST_LOAD_DELAY": "4"})
    try:
        srv.wait(ready=False)
        yield srv
    finally:
        code = srv.stop()
    assert code == 0, srv.final_output


def test_503_while_loading(small_server):
    status, body, headers = http("GET", small_server.url + "/health")
    assert status == 503 and body["status"] == "loading" and headers.get("retry-after") == "1"
    with pytest.raises(openai.InternalServerError) as e:
        small_server.client().chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 503 and e.value.body["code"] == "model_loading"
    small_server.wait(ready=True)


def test_remote_url_when_allowed(small_server, world):
    import http.server

    small_server.wait()
    payload = Path(world["image"]).read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/scene.jpg"
        c = small_server.client()
        by_url = c.chat.completions.create(model="m", max_tokens=8, messages=[{
            "role": "user", "content": [image_part(url), {"type": "text", "text": "What is [1]?"}]}])
        by_data = c.chat.completions.create(model="m", max_tokens=8, messages=[{
            "role": "user", "content": [image_part(data_url(world["image"])), {"type": "text", "text": "What is [1]?"}]}])
        assert by_url.choices[0].message.content == by_data.choices[0].message.content
    finally:
        httpd.shutdown()
    with pytest.raises(openai.BadRequestError):  # file:// stays refused with --allow-urls
        c.chat.completions.create(model="m", messages=[{"role": "user", "content": [image_part("file:///etc/hosts")]}])


def test_429_when_queue_full(small_server):
    small_server.wait()
    rng = np.random.default_rng(0)
    barrier = threading.Barrier(8)

    def one(k):
        frames = [image_part(data_url(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8))) for _ in range(4)]
        c = small_server.client()
        barrier.wait()
        try:
            c.chat.completions.create(model="m", max_tokens=4, messages=[{
                "role": "user", "content": frames + [{"type": "text", "text": "What changes between <1> and <4>?"}]}])
            return 200, None
        except openai.RateLimitError as e:
            return 429, e

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    codes = [c for c, _ in results]
    assert set(codes) <= {200, 429} and 200 in codes and 429 in codes, codes
    e = next(e for c, e in results if c == 429)
    assert e.body["code"] == "queue_full" and e.response.headers.get("retry-after") == "1"


def test_load_8_clients_x_10_requests(small_server):
    small_server.wait()
    _, before, _ = http("GET", small_server.url + "/health")

    def client_run(k):
        c = small_server.client()
        out = []
        for i in range(10):
            try:
                r = c.chat.completions.create(model="m", max_tokens=4, messages=[
                    {"role": "user", "content": f"Client {k} question {i}: what is [1]?"}])
                assert r.choices[0].message.content is not None and r.usage.completion_tokens >= 1
                out.append(200)
            except openai.RateLimitError:
                out.append(429)
        return out

    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        results = [c for run in pool.map(client_run, range(8)) for c in run]
    dt = time.perf_counter() - t0
    assert len(results) == 80 and set(results) <= {200, 429}
    ok = results.count(200)
    assert ok >= 8, results
    status, after, _ = http("GET", small_server.url + "/health")
    assert status == 200 and after["queue"]["admitted"] == 0  # alive, nothing stuck
    assert after["served"] - before["served"] == ok and after["refused"] - before["refused"] == 80 - ok
    print(f"load: {ok}/80 answered, {80 - ok} refused (429), {ok / dt:.1f} answers/s with 8 clients")


# --------------------------------------------------------------------------- CLI refusals


def test_cli_refusals(bundle, tmp_path):
    def run(*args, env=None):
        return subprocess.run([sys.executable, "-m", "instit_edge.cli", "serve", *map(str, args)], capture_output=True,
                              text=True, timeout=120, env={**os.environ, "COLUMNS": "200", **(env or {})})

    r = run(tmp_path / "nope")
    assert r.returncode == 2 and "not found" in r.stderr
    r = run(bundle, "--llm", "q9_9")
    assert r.returncode == 2 and "q9_9" in r.stderr
    r = run(bundle, "--api-key", "a", "--api-key-env", "B")
    assert r.returncode == 2 and "not both" in r.stderr
    r = run(bundle, "--api-key-env", "INSTIT_NO_SUCH_VAR_X")
    assert r.returncode == 2 and "INSTIT_NO_SUCH_VAR_X" in r.stderr
    with socket.socket() as s:  # a port in use
        s.bind(("127.0.0.1", 0))
        s.listen()
        r = run(bundle, "--port", s.getsockname()[1])
    assert r.returncode == 2 and "--port" in r.stderr, r.stderr
