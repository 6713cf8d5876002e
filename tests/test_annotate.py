"""`instit-edge annotate`: reply validation, a scripted teacher (malformed JSON, a wrong ID, a 429), the cache,
an end-to-end run into `load_instit_dataset` and `train`, and the real served tiny bundle as a teacher.

The scripted teacher is a FastAPI app served by uvicorn in a thread on a free localhost port; it reads the
prompt it gets and answers valid JSON built from the IDs the prompt lists, except for the faults it is told
to inject. The served bundle is `instit-edge serve` as a real subprocess: its tiny model answers noise, so
every item must end in failed.json with its error, and the command must not crash.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

pytest.importorskip("openai")
pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from fastapi import Request  # noqa: E402  (module level: the endpoint's annotation is resolved here)

from instit_edge.annotate import prompts as P  # noqa: E402
from instit_edge.annotate.pipeline import (  # noqa: E402
    ReplyError,
    annotate,
    parse_json_object,
    validate_frame,
    validate_qa,
    validate_summary,
)
from instit_edge.errors import InstitError  # noqa: E402
from instit_edge.prompting import find_ids  # noqa: E402

COMBO = "llava-next-llama-clip"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "instit_edge.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200"})


# --------------------------------------------------------------------------- the scripted teacher


class FakeTeacher:
    """An OpenAI-compatible chat endpoint that answers valid Inst-IT JSON, with scripted faults first."""

    def __init__(self, faults=()):
        from fastapi import FastAPI
        from fastapi.responses import JSONResponse

        self.faults = list(faults)
        self.posts = 0  # every chat-completions POST, refused ones included
        self.kinds: list[str] = []
        self.lock = threading.Lock()
        app = FastAPI()

        @app.get("/v1/models")
        def models():
            return {"object": "list", "data": [{"id": "fake", "object": "model", "owned_by": "test"}]}

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            with self.lock:
                self.posts += 1
                fault = self.faults.pop(0) if self.faults else None
            if fault == "429":
                return JSONResponse({"error": {"message": "slow down", "type": "rate_limit"}}, status_code=429,
                                    headers={"Retry-After": "0"})
            if fault == "503":
                return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)
            obj, kind = self.answer(body["messages"])
            if fault == "bad_id":  # a reference to an instance that is not there
                if kind == "frame":
                    obj["instance_level"]["99"] = "a ghost"
                else:
                    obj["summary" if kind == "summary" else "qa"] = (
                        obj["summary"] + " [99]" if kind == "summary" else [{"question": "Is [99] here?",
                                                                             "answer": "yes"}])
            text = "```json\n" + json.dumps(obj) + "\n```" if kind == "frame" else json.dumps(obj)
            if fault == "bad_json":
                text = "Sure! Here are the captions: {instance_level: oops"
            with self.lock:
                self.kinds.append(kind if fault is None else f"{kind}+{fault}")
            return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}}

        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @staticmethod
    def answer(messages) -> tuple[dict, str]:
        first = messages[1]["content"]
        text = first if isinstance(first, str) else next(p["text"] for p in first if p["type"] == "text")
        if '"qa"' in text:
            ids = find_ids(text.split("Use only the IDs")[1].split("and timestamps")[0])
            n = int(text.split("video with ")[1].split(" frames")[0])
            qa = [{"question": f"What does [{ids[0]}] do during <1>-<{n}>?",
                   "answer": f"[{ids[0]}] moves across the frame from <1> to <{n}>."}]
            return {"qa": qa}, "qa"
        if '"summary"' in text:
            ids = find_ids(text.split("Use only the IDs")[1].split("and timestamps")[0])
            n = int(text.split("video with ")[1].split(" frames")[0])
            who = " ".join(f"[{i}]" for i in ids) or "nothing"
            return {"summary": f"From <1> to <{n}>, {who} move steadily across a plain backdrop."}, "summary"
        example = json.loads(text[text.rindex("{\"instance_level\""):].split("\n")[0])
        reply = {"instance_level": {k: f"a coloured shape, object [{k}], on a grey backdrop"
                                    for k in example["instance_level"]},
                 "image_level": "A grey backdrop with " + (" ".join(f"[{k}]" for k in example["instance_level"])
                                                          or "no marked objects") + "."}
        if "temporal_change" in example:
            reply["temporal_change"] = "The marked shapes moved a little to the right."
        return reply, "frame"

    def __enter__(self):
        self.thread.start()
        end = time.monotonic() + 20
        while not self.server.started and time.monotonic() < end:
            time.sleep(0.02)
        assert self.server.started
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


# --------------------------------------------------------------------------- inputs


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """An unmarked synthetic video (mp4), the same clip as a frame folder, and one still image."""
    import cv2

    from instit_edge.marker.synthvideo import moving_shapes

    root = tmp_path_factory.mktemp("annotate-inputs")
    clip = moving_shapes(seed=3, n_objects=3, n_frames=20, size=(160, 120), warmup=2)
    video = clip.write_video(root / "street.mp4")
    frames = moving_shapes(seed=4, n_objects=2, n_frames=8, size=(160, 120), warmup=2).write_frames(root / "yard")
    image = root / "still.png"
    cv2.imwrite(str(image), cv2.cvtColor(clip.frames[-1], cv2.COLOR_RGB2BGR))
    return {"video": video, "frames": frames, "image": image}


# --------------------------------------------------------------------------- validation


def test_reply_validation():
    ok = validate_frame('```json\n{"instance_level": {"1": "a red [1]", "[2]": "blue"}, "image_level": "[1] and [2]",'
                        ' "temporal_change": "[3] left; [1] moved"}\n```', [1, 2], n_frames=4, prev_ids=[1, 3],
                        change=True)
    assert ok["instance_level"] == {"1": "a red [1]", "2": "blue"} and ok["temporal_change"].startswith("[3]")
    cases = [
        ('{"instance_level": {"1": "x"}, "image_level": "y"}', "no caption for [2]"),
        ('{"instance_level": {"1": "x", "2": "y", "7": "z"}, "image_level": "y"}', "has [7]"),
        ('{"instance_level": {"1": "x", "2": "next to [5]"}, "image_level": "y"}', "instance [5]"),
        ('{"instance_level": {"1": "x", "2": "y"}, "image_level": "at <9>"}', "<9>"),
        ('{"instance_level": {"1": "x", "2": "y"}, "image_level": ""}', "non-empty"),
        ('{"instance_level": {"one": "x"}, "image_level": "y"}', "numeric IDs"),
        ("I cannot see any objects.", "not a JSON object"),
        ('{"instance_level": {"1": "x",}', "not valid JSON"),
    ]
    for text, msg in cases:
        with pytest.raises(ReplyError, match=msg.replace("[", r"\[").replace("]", r"\]")):
            validate_frame(text, [1, 2], n_frames=4)
    with pytest.raises(ReplyError, match="temporal_change"):  # [4] is in neither this frame nor the previous one
        validate_frame('{"instance_level": {"1": "x"}, "image_level": "y", "temporal_change": "[4] left"}', [1],
                       n_frames=3, prev_ids=[1, 2], change=True)
    with pytest.raises(ReplyError, match="image has no frames"):
        validate_frame('{"instance_level": {"1": "x at <1>"}, "image_level": "y"}', [1], n_frames=0)
    assert validate_summary('{"summary": "[1] enters at <1> and leaves during <2>-<3>."}', [1], 3)
    with pytest.raises(ReplyError, match="<4>"):
        validate_summary('{"summary": "[1] leaves at <4>."}', [1], 3)
    with pytest.raises(ReplyError, match="refers to no object"):
        validate_qa('{"qa": [{"question": "What happens?", "answer": "[1] moves"}]}', [1], 3)
    assert validate_qa('{"qa": [{"question": "Where is [1] at <2>?", "answer": "left"}]}', [1], 3)["qa"] == \
        [["Where is [1] at <2>?", "left"]]
    assert parse_json_object('noise {"a": 1} noise') == {"a": 1}
    # the fix-up turn never carries a <t> into a request with images (an Inst-IT server reads those as frames)
    assert "<" not in P.fix_prompt("refers to frame <5>, but the video has 3 frames (<1>-<3>)", with_images=True)


# --------------------------------------------------------------------------- the scripted teacher end to end


def test_annotate_end_to_end_cache_and_train(inputs, tmp_path, tiny_models):
    from instit_edge.data.dataset import load_instit_dataset
    from instit_edge.data.records import ImageRecord, VideoRecord

    out = tmp_path / "ds"
    ins = [inputs["video"], inputs["frames"], inputs["image"]]
    with FakeTeacher(faults=["429", "bad_json", "bad_id", "503"]) as t:
        s1 = annotate(ins, out, teacher=t.url, model="fake", every=2, max_frames=5, concurrency=3, qa_pairs=2,
                      backoff=0.01)
        assert s1["failed_items"] == 0, json.loads((out / "failed.json").read_text())
        r, n = s1["requests"], s1["frames"] + 4  # frames + the image, 2 summaries, 2 QA
        assert s1["frames"] >= 8 and r["planned"] == r["ok"] == n and r["cached"] == 0
        # one 429 and one 503 retried, two malformed replies sent back and fixed
        assert r["http_retries"] == 2 and r["fix_retries"] == 2
        assert t.posts == n + 4 and r["tokens"] == (n + 2) * 120
        assert any(k.endswith("+bad_json") for k in t.kinds) and any(k.endswith("+bad_id") for k in t.kinds)

        records = load_instit_dataset(out)  # our own reader: every [ID] and <t> checked again
        videos = [x for x in records if isinstance(x, VideoRecord)]
        images = [x for x in records if isinstance(x, ImageRecord)]
        assert len(videos) == 2 and len(images) == 1
        street = next(v for v in videos if v.video_id == "street")
        assert [f.timestamp for f in street.frames] == [1, 2, 3, 4, 5]
        assert all((int(f.frame_name[6:11]) - 1) % 2 == 0 for f in street.frames)  # every 2nd input frame
        assert street.frames[0].temporal_change is None and street.frames[1].temporal_change
        assert street.question_answer_pairs and street.video_level_caption.startswith("From <1> to <5>")
        assert all(p.is_file() for p in street.frame_paths)
        assert set(images[0].instance_level_caption) == {"1", "2", "3"}  # the static detector on the still
        meta = json.loads((out / "annotate.json").read_text())
        assert meta["status"] == "done" and meta["summary"]["frames"] == s1["frames"]

        # a second run (the real CLI) asks nothing: every request is a cache hit (a torn line, as a kill
        # mid-write leaves, is skipped)
        posts = t.posts
        with open(out / "cache.jsonl", "a") as f:
            f.write('{"key": "abc", "resu')
        cmd = ["annotate", *map(str, ins), "--teacher", t.url, "--model", "fake", "--every", "2", "--max-frames",
               "5", "--qa-pairs", "2", "--out", str(out)]
        p = _cli(*cmd)
        assert p.returncode == 0, p.stderr
        s2 = json.loads(p.stdout)
        assert t.posts == posts and s2["requests"]["cached"] == s2["requests"]["planned"] == n
        assert s2["requests"]["tokens"] == 0

        # one prompt changes (3 QA pairs instead of 2): only the two QA requests are asked again
        s3 = annotate(ins, out, teacher=t.url, model="fake", every=2, max_frames=5, qa_pairs=3, backoff=0.01)
        assert t.posts == posts + 2 and s3["requests"]["cached"] == n - 2
        assert annotate(ins, out, teacher=t.url, model="fake", every=2, max_frames=5, qa_pairs=3)["requests"][
            "cached"] == n and t.posts == posts + 2  # the new QA replies landed on their own line after the torn one

        # --dry-run: the prompts and the count, no request, nothing written
        before = sorted(p.name for p in out.rglob("*"))
        p = _cli(*cmd, "--dry-run")
        assert p.returncode == 0, p.stderr
        assert '"instance_level"' in p.stdout and "chronological summary" in p.stdout and "sha256:" in p.stdout
        dry = json.loads(p.stdout[p.stdout.rindex("{\n"):])
        assert dry["requests"] == n and dry["cached_frame_requests"] == n - 4
        assert t.posts == posts + 2 and sorted(p.name for p in out.rglob("*")) == before

    # the result trains as it is
    from instit_edge.train.trainer import TrainConfig, train

    res = train(TrainConfig(base=str(tiny_models(COMBO)), instit=str(out), out=str(tmp_path / "run"), lora=4,
                            freeze_vision_layers=1, max_steps=2, save_every=100), progress=False)
    assert res["steps"] == 2 and all(x == x for x in res["losses"])


def test_bad_teacher_and_output(inputs, tmp_path):
    port = free_port()  # nothing listens there
    with pytest.raises(InstitError, match="cannot be reached"):
        annotate([inputs["image"]], tmp_path / "a", teacher=f"http://127.0.0.1:{port}/v1", model="m", retries=0)
    busy = tmp_path / "mine"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    with pytest.raises(InstitError, match="not an annotate output"):
        annotate([inputs["image"]], busy, teacher=f"http://127.0.0.1:{port}/v1", model="m")
    with pytest.raises(InstitError, match="overlaps the input"):
        annotate([inputs["frames"]], inputs["frames"] / "out", teacher=f"http://127.0.0.1:{port}/v1", model="m")
    p = _cli("annotate", str(tmp_path / "missing.mp4"), "--teacher", "http://127.0.0.1:1/v1", "--model", "m",
             "--out", str(tmp_path / "b"))
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "input not found" in p.stderr
    assert (busy / "notes.txt").read_text() == "keep me"


# --------------------------------------------------------------------------- the real served tiny bundle


def test_served_bundle_as_teacher_garbage_ends_as_failed_items(inputs, tmp_path, bundles):
    """The tiny model's noise never crashes the run: each item retried with its error, then listed as failed."""
    port = free_port()
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "instit_edge.cli", "serve", str(bundles(COMBO)), "--port",
                             str(port), "--threads", "1", "--no-verify"], stdout=log, stderr=subprocess.STDOUT)
    try:
        end = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.seek(0) or log.read()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < end, "server not up"
            time.sleep(0.2)
        out = tmp_path / "ds"
        t0 = time.perf_counter()
        p = _cli("annotate", str(inputs["video"]), str(inputs["image"]), "--teacher", f"http://127.0.0.1:{port}/v1",
                 "--model", COMBO, "--max-frames", "3", "--every", "3", "--max-tokens", "48", "--fix-attempts", "1",
                 "--concurrency", "2", "--out", str(out))
        secs = time.perf_counter() - t0
        assert p.returncode == 1, p.stderr  # items failed: exit 1, after writing everything
        summary = json.loads(p.stdout)
        failed = json.loads((out / "failed.json").read_text())
        assert summary["failed_items"] == len(failed) == 4  # 3 frames + 1 image; no summary asked without frames
        assert all(f["error"] and f["attempts"] >= 1 and f["item"] for f in failed)
        assert {f["record"] for f in failed} == {"street", "still"} and "failed" in p.stderr
        assert summary["records"] == 0 and not (out / "inst_it_dataset_video.json").exists()
        assert not (out / "cache.jsonl").exists()  # nothing valid, nothing cached: a rerun asks them again
        req = summary["requests"]
        print(f"annotate against the served tiny bundle: {secs:.1f} s, requests {req}")
        # bounded work, counted rather than timed (--fix-attempts 1): at most one fix retry per item
        assert req["tokens"] > 0 and req["fix_retries"] <= req["planned"]
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
