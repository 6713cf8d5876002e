"""The bad-input corpus: every case is a real CLI run that must end with exit 2, one stderr line, nothing changed.

Most cases run in-process (``instit_edge.cli.main`` with a patched ``sys.argv``,
stdout/stderr captured at the file-descriptor level, so llama.cpp or ONNX
Runtime output would count too); a few run in a subprocess, the way a user
runs them (non-UTF-8 bytes in argv, torch's import-time warnings). Before and
after each case every file of the shared input tree is hashed (sha256, cached
by inode/size/mtime/ctime so unchanged big files are not re-read): no file may
change, appear or disappear.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

COMBO = "llava-next-llama-clip"


# --------------------------------------------------------------------------- inputs, built once
def _link_tree(src: Path, dst: Path) -> Path:
    """A copy of ``src`` whose files are hard links (cheap); mutate a file by replacing it, never in place."""
    shutil.copytree(src, dst, copy_function=os.link)
    return dst


def _replace(path: Path, data: bytes) -> None:
    path.unlink()
    path.write_bytes(data)


def _truncate(path: Path, frac: float = 0.5) -> None:
    _replace(path, path.read_bytes()[: int(path.stat().st_size * frac)])


@pytest.fixture(scope="session")
def corpus(tmp_path_factory, tiny_models, bundles):
    """Every input the cases use, under one tree ``T`` (paths by name)."""
    from instit_edge.data.synth import build_world

    t = tmp_path_factory.mktemp("badinput")
    p: dict[str, Path] = {"T": t}
    ckpt, bundle = tiny_models(COMBO), bundles(COMBO)
    p["ckpt"] = _link_tree(ckpt, t / "ckpt")
    p["bundle"] = _link_tree(bundle, t / "bundle")
    build_world(t / "world", seed=0, n_images=2, n_videos=1)
    bench = p["bench"] = t / "world" / "bench"
    p["image"] = sorted((bench / "images_vpt").iterdir())[0]
    p["video"] = sorted((bench / "videos_vpt").iterdir())[0]

    # checkpoints
    _truncate(_link_tree(ckpt, t / "ck_trunc") / "model.safetensors")
    p["ck_trunc"] = t / "ck_trunc"
    _replace(_link_tree(ckpt, t / "ck_garbage") / "model.safetensors", b"\x00" * 64)
    p["ck_garbage"] = t / "ck_garbage"
    (_link_tree(ckpt, t / "ck_noconfig") / "config.json").unlink()
    p["ck_noconfig"] = t / "ck_noconfig"
    for name, data in (("ck_badjson", b"{not json"), ("ck_list", b"[1, 2]"), ("ck_latin1", b'{"model_type": "\xe9"}'),
                       ("ck_arch", json.dumps({"model_type": "bert"}).encode())):
        _replace(_link_tree(ckpt, t / name) / "config.json", data)
        p[name] = t / name
    (_link_tree(ckpt, t / "ck_noweights") / "model.safetensors").unlink()
    p["ck_noweights"] = t / "ck_noweights"
    (t / "a_file.txt").write_text("not a checkpoint\n")
    p["a_file"] = t / "a_file.txt"
    photos = t / "photos"
    photos.mkdir()
    (photos / "holiday.jpg").write_bytes(b"precious")
    p["photos"] = photos

    # bundles
    _truncate(_link_tree(bundle, t / "b_gguf") / "llm.f16.gguf", 0.3)
    p["b_gguf"] = t / "b_gguf"
    _truncate(_link_tree(bundle, t / "b_onnx") / "vision.onnx", 0.3)
    p["b_onnx"] = t / "b_onnx"
    manifest = json.loads((bundle / "bundle.json").read_text())

    def mutated(name, fn=None, raw: bytes | None = None):
        d = _link_tree(bundle, t / name)
        if raw is None:
            m = json.loads(json.dumps(manifest))
            fn(m)
            raw = json.dumps(m).encode()
        _replace(d / "bundle.json", raw)
        p[name] = d

    mutated("bm_notjson", raw=b"{")
    mutated("bm_latin1", raw=b'{"format_version": 1, "x": "\xe9"}')
    mutated("bm_list", raw=b"[]")
    mutated("bm_version", lambda m: m.update(format_version=99))
    mutated("bm_nofiles", lambda m: m.pop("files"))
    mutated("bm_filesl", lambda m: m["files"].update(llm=[]))
    mutated("bm_escape", lambda m: m["files"]["llm"]["f16"].update(path="../../../etc/passwd"))
    mutated("bm_size", lambda m: m["preprocess"].update(image_size="big"))
    mutated("bm_template", lambda m: m["prompt"].update(template="alpaca"))
    mutated("bm_pins", lambda m: m["preprocess"].update(pinpoints=[[7, 9]]))
    mutated("bm_ctx", lambda m: m["architecture"].update(context_length=-1))
    (t / "b_empty").mkdir()
    p["b_empty"] = t / "b_empty"

    # images and videos
    imgs = t / "imgs"
    imgs.mkdir()
    (imgs / "text.jpg").write_text("hello")
    (imgs / "empty.png").write_bytes(b"")
    good = p["image"].read_bytes()
    (imgs / "trunc.jpg").write_bytes(good[: len(good) // 3])
    p.update(text_jpg=imgs / "text.jpg", empty_png=imgs / "empty.png", trunc_jpg=imgs / "trunc.jpg")
    (t / "frames_empty").mkdir()
    p["frames_empty"] = t / "frames_empty"
    (t / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100)
    p["bad_mp4"] = t / "clip.mp4"
    vid = t / "vid.mp4"
    import cv2

    w = cv2.VideoWriter(str(vid), cv2.VideoWriter_fourcc(*"mp4v"), 5, (64, 48))
    for i in range(4):
        w.write(np.full((48, 64, 3), 40 * i, np.uint8))
    w.release()
    p["mp4"] = vid
    (t / "marked.mp4").write_bytes(b"an earlier result")
    p["marked"] = t / "marked.mp4"

    # benches (JSON layout), each a folder beside the world's media
    rows = json.loads((bench / "image_multi_choices.json").read_text())

    def bench_case(name, fn=None, raw: bytes | None = None, file="image_multi_choices.json"):
        d = t / name
        d.mkdir()
        os.symlink(bench / "images_vpt", d / "images_vpt")
        if raw is None:
            r = json.loads(json.dumps(rows))
            new = fn(r)
            r = r if new is None else new
            raw = json.dumps(r).encode()
        (d / file).write_bytes(raw)
        p[name] = d

    bench_case("be_escape", lambda r: r[0].update(image_path="../../../../../etc/hostname"))
    bench_case("be_dotdot", lambda r: r[0].update(image_path="images_vpt/../../world/bench/images_vpt/001.jpg"))
    bench_case("be_abs", lambda r: r[0].update(image_path=str(p["image"])))
    bench_case("be_home", lambda r: r[0].update(image_path="~/x.jpg"))
    bench_case("be_nul", lambda r: r[0].update(image_path="images_vpt/\x00.jpg"))
    bench_case("be_empty", lambda r: [])
    bench_case("be_dup", lambda r: r + [r[0]])
    bench_case("be_noq", lambda r: r[0].pop("question"))
    bench_case("be_answer", lambda r: r[0].update(answer="Z"))
    bench_case("be_surrogate", raw=json.dumps(rows).replace('"question": "', '"question": "\\udcff', 1).encode())
    bench_case("be_latin1", raw=b'[{"question": "\xe9"}]')
    bench_case("be_notjson", raw=b"[{")
    bench_case("be_dict", raw=b'{"a": 1}')
    bench_case("be_deep", raw=b"[" * 100000 + b"]" * 100000)
    bench_case("be_missing_img", lambda r: r[0].update(image_path="images_vpt/nope.jpg"))
    (t / "be_none").mkdir()
    p["be_none"] = t / "be_none"

    # predictions
    pred = {"question_id": "001-01", "question": "q", "model_prediction": "A", "ground_truth": "A", "split": "image"}
    preds = t / "preds"
    preds.mkdir()
    for name, data in (
        ("dup.json", json.dumps([pred, dict(pred, model_prediction="B")])),
        ("empty.json", "[]"),
        ("empty.jsonl", ""),
        ("object.json", json.dumps({"a": pred})),
        ("notjson.json", "[{"),
        ("nosplit.json", json.dumps([{k: v for k, v in pred.items() if k != "split"}])),
        ("badsplit.json", json.dumps([dict(pred, split="audio")])),
        ("number.json", json.dumps([dict(pred, model_prediction=3)])),
        ("items.json", json.dumps([1, 2])),
        ("middle.jsonl", json.dumps(dict(pred, format="mc")) + "\n{torn\n" + json.dumps(dict(pred, format="oe"))
         + "\n"),
    ):
        (preds / name).write_text(data)
    (preds / "latin1.json").write_bytes(b"[\xe9]")
    (preds / "run_empty").mkdir()
    p["preds"] = preds
    return p


def _files(root: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            f = Path(dirpath) / name
            st = f.lstat()
            out[str(f.relative_to(root))] = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)
    return out


_HASHES: dict[tuple, str] = {}


def _digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (symlinks: their target path)."""
    out = {}
    for rel, key in _files(root).items():
        f = root / rel
        if f.is_symlink():
            out[rel] = "link:" + os.readlink(f)
            continue
        k = (str(f), *key)
        if k not in _HASHES:
            _HASHES[k] = hashlib.sha256(f.read_bytes()).hexdigest()
        out[rel] = _HASHES[k] + f":{oct(key[4])}"
    return out


# --------------------------------------------------------------------------- the table
# (id, command line with {name} placeholders, where it runs: "in" (in-process) or "sub" (subprocess))
Q = ["-q", "What is [1] doing?"]
ASK = ["ask", "{bundle}", "--image", "{image}"]
EVAL = ["eval", "{bundle}", "--out", "{out}/run", "--max-new-tokens", "2", "--limit", "1", "--bench"]
CASES = [
    # ---- ask: the question
    ("ask-nonutf8-q", ASK + ["-q", "\udcff what?"], "in"),
    ("ask-nonutf8-q-argv", ASK + ["-q", b"\xff\xfe what?"], "sub"),
    ("ask-empty-q", ASK + ["-q", "   "], "in"),
    ("ask-no-q", ASK, "in"),
    ("ask-frame-zero", ["ask", "{bundle}", "--video", "{video}", "-q", "What happens at <0>?"], "in"),
    ("ask-interval-backwards", ["ask", "{bundle}", "--video", "{video}", "-q", "What changes in <3>-<1>?"], "in"),
    ("ask-frame-past-end", ["ask", "{bundle}", "--video", "{video}", "-q", "What is at <99>?"], "in"),
    ("ask-long-q", ASK + ["-q", "What is [1]? " * 3000], "in"),
    # ---- ask: media
    ("ask-no-media", ["ask", "{bundle}"] + Q, "in"),
    ("ask-image-and-video", ASK + ["--video", "{video}"] + Q, "in"),
    ("ask-image-missing", ["ask", "{bundle}", "--image", "{T}/nope.png"] + Q, "in"),
    ("ask-image-text", ["ask", "{bundle}", "--image", "{text_jpg}"] + Q, "in"),
    ("ask-image-empty", ["ask", "{bundle}", "--image", "{empty_png}"] + Q, "in"),
    ("ask-image-truncated", ["ask", "{bundle}", "--image", "{trunc_jpg}"] + Q, "in"),
    ("ask-image-is-folder", ["ask", "{bundle}", "--image", "{T}/imgs"] + Q, "in"),
    ("ask-video-missing", ["ask", "{bundle}", "--video", "{T}/nope.mp4"] + Q, "in"),
    ("ask-video-no-frames", ["ask", "{bundle}", "--video", "{frames_empty}"] + Q, "in"),
    ("ask-video-corrupt", ["ask", "{bundle}", "--video", "{bad_mp4}"] + Q, "in"),
    # ---- ask: numbers
    ("ask-max-new-tokens-0", ASK + Q + ["--max-new-tokens", "0"], "in"),
    ("ask-max-new-tokens-neg", ASK + Q + ["--max-new-tokens", "-5"], "sub"),
    ("ask-temperature-neg", ASK + Q + ["--temperature", "-1"], "in"),
    ("ask-temperature-text", ASK + Q + ["--temperature", "hot"], "in"),
    ("ask-threads-0", ASK + Q + ["--threads", "0"], "in"),
    ("ask-gpu-layers-neg", ASK + Q + ["--gpu-layers", "-2"], "in"),
    ("ask-unknown-option", ASK + Q + ["--bogus"], "in"),
    # ---- ask: bundle
    ("ask-bundle-missing", ["ask", "{T}/nope"] + Q + ["--image", "{image}"], "in"),
    ("ask-bundle-empty-folder", ["ask", "{b_empty}", "--image", "{image}"] + Q, "in"),
    ("ask-llm-variant", ASK + Q + ["--llm", "q9_x"], "in"),
    ("ask-vision-variant", ASK + Q + ["--vision", "int3"], "in"),
    ("ask-gguf-truncated", ["ask", "{b_gguf}", "--image", "{image}"] + Q, "in"),
    ("ask-gguf-truncated-noverify", ["ask", "{b_gguf}", "--image", "{image}", "--no-verify"] + Q, "in"),
    ("ask-onnx-corrupt-noverify", ["ask", "{b_onnx}", "--image", "{image}", "--no-verify"] + Q, "in"),
    ("ask-manifest-notjson", ["ask", "{bm_notjson}", "--image", "{image}"] + Q, "in"),
    ("ask-manifest-latin1", ["ask", "{bm_latin1}", "--image", "{image}"] + Q, "in"),
    ("ask-manifest-list", ["ask", "{bm_list}", "--image", "{image}"] + Q, "in"),
    ("ask-manifest-version", ["ask", "{bm_version}", "--image", "{image}"] + Q, "in"),
    ("ask-manifest-nofiles", ["ask", "{bm_nofiles}", "--image", "{image}"] + Q, "in"),
    ("ask-manifest-files-list", ["ask", "{bm_filesl}", "--image", "{image}"] + Q, "in"),
    ("ask-manifest-path-escape", ["ask", "{bm_escape}", "--image", "{image}"] + Q, "in"),
    ("ask-manifest-image-size", ["ask", "{bm_size}", "--image", "{image}"] + Q, "in"),
    ("ask-manifest-template", ["ask", "{bm_template}", "--image", "{image}"] + Q, "in"),
    ("ask-manifest-pinpoints", ["ask", "{bm_pins}", "--image", "{image}"] + Q, "in"),
    ("ask-manifest-context", ["ask", "{bm_ctx}", "--image", "{image}"] + Q, "in"),
    # ---- export
    ("export-safetensors-truncated", ["export", "{ck_trunc}", "--out", "{out}/b"], "sub"),
    ("export-safetensors-garbage", ["export", "{ck_garbage}", "--out", "{out}/b"], "in"),
    ("export-no-config", ["export", "{ck_noconfig}", "--out", "{out}/b"], "in"),
    ("export-config-notjson", ["export", "{ck_badjson}", "--out", "{out}/b"], "in"),
    ("export-config-list", ["export", "{ck_list}", "--out", "{out}/b"], "in"),
    ("export-config-latin1", ["export", "{ck_latin1}", "--out", "{out}/b"], "in"),
    ("export-unsupported-arch", ["export", "{ck_arch}", "--out", "{out}/b"], "in"),
    ("export-no-weights", ["export", "{ck_noweights}", "--out", "{out}/b"], "in"),
    ("export-missing", ["export", "{T}/nope", "--out", "{out}/b"], "in"),
    ("export-file", ["export", "{a_file}", "--out", "{out}/b"], "in"),
    ("export-out-is-input", ["export", "{ckpt}", "--out", "{ckpt}", "--force"], "in"),
    ("export-out-inside-input", ["export", "{ckpt}", "--out", "{ckpt}/bundle"], "in"),
    ("export-force-foreign-folder", ["export", "{ckpt}", "--out", "{photos}", "--force"], "in"),
    ("export-out-exists", ["export", "{ckpt}", "--out", "{bundle}"], "in"),
    ("export-out-is-file", ["export", "{ckpt}", "--out", "{a_file}", "--force"], "in"),
    # ---- quantize
    ("quantize-unknown-llm-type", ["quantize", "{bundle}", "--llm", "q9_x"], "in"),
    ("quantize-unknown-vision-type", ["quantize", "{bundle}", "--vision", "int3"], "in"),
    ("quantize-nothing", ["quantize", "{bundle}"], "in"),
    ("quantize-threads-0", ["quantize", "{bundle}", "--llm", "q8_0", "--threads", "0"], "in"),
    ("quantize-imatrix", ["quantize", "{bundle}", "--llm", "q8_0", "--imatrix", "maybe"], "in"),
    ("quantize-gguf-truncated", ["quantize", "{b_gguf}", "--llm", "q8_0", "--imatrix", "off"], "in"),
    ("quantize-bundle-missing", ["quantize", "{T}/nope", "--llm", "q8_0"], "in"),
    ("quantize-manifest-list", ["quantize", "{bm_list}", "--llm", "q8_0"], "in"),
    # ---- eval
    ("eval-path-escape", EVAL + ["{be_escape}"], "in"),
    ("eval-path-dotdot", EVAL + ["{be_dotdot}"], "in"),
    ("eval-path-absolute", EVAL + ["{be_abs}"], "in"),
    ("eval-path-home", EVAL + ["{be_home}"], "in"),
    ("eval-path-nul", EVAL + ["{be_nul}"], "in"),
    ("eval-empty-bench", EVAL + ["{be_empty}"], "in"),
    ("eval-empty-folder", EVAL + ["{be_none}"], "in"),
    ("eval-bench-missing", EVAL + ["{T}/nope"], "in"),
    ("eval-duplicate-qid", EVAL + ["{be_dup}"], "in"),
    ("eval-missing-field", EVAL + ["{be_noq}"], "in"),
    ("eval-answer-not-option", EVAL + ["{be_answer}"], "in"),
    ("eval-surrogate", EVAL + ["{be_surrogate}"], "in"),
    ("eval-latin1", EVAL + ["{be_latin1}"], "in"),
    ("eval-notjson", EVAL + ["{be_notjson}"], "in"),
    ("eval-not-list", EVAL + ["{be_dict}"], "in"),
    ("eval-deep-json", EVAL + ["{be_deep}"], "in"),
    ("eval-image-missing", EVAL + ["{be_missing_img}"], "in"),
    ("eval-limit-0", ["eval", "{bundle}", "--bench", "{bench}", "--out", "{out}/r", "--limit", "0"], "in"),
    ("eval-limit-neg", ["eval", "{bundle}", "--bench", "{bench}", "--out", "{out}/r", "--limit", "-1"], "in"),
    ("eval-max-new-tokens-0", ["eval", "{bundle}", "--bench", "{bench}", "--out", "{out}/r", "--max-new-tokens", "0"],
     "in"),
    ("eval-threads-0", ["eval", "{bundle}", "--bench", "{bench}", "--out", "{out}/r", "--threads", "0"], "in"),
    ("eval-split", ["eval", "{bundle}", "--bench", "{bench}", "--out", "{out}/r", "--split", "audio"], "in"),
    ("eval-format", ["eval", "{bundle}", "--bench", "{bench}", "--out", "{out}/r", "--format", "essay"], "in"),
    ("eval-backend", ["eval", "{bundle}", "--bench", "{bench}", "--out", "{out}/r", "--backend", "tpu"], "in"),
    ("eval-shard", ["eval", "{bundle}", "--bench", "{bench}", "--out", "{out}/r", "--shard", "3/2"], "in"),
    ("eval-out-is-file", ["eval", "{bundle}", "--bench", "{bench}", "--out", "{a_file}"], "in"),
    # ---- score
    ("score-duplicate-qid", ["score", "{preds}/dup.json"], "sub"),
    ("score-empty-list", ["score", "{preds}/empty.json"], "in"),
    ("score-empty-jsonl", ["score", "{preds}/empty.jsonl"], "in"),
    ("score-empty-run", ["score", "{preds}/run_empty"], "in"),
    ("score-object", ["score", "{preds}/object.json"], "in"),
    ("score-notjson", ["score", "{preds}/notjson.json"], "in"),
    ("score-latin1", ["score", "{preds}/latin1.json"], "in"),
    ("score-no-split", ["score", "{preds}/nosplit.json"], "in"),
    ("score-bad-split", ["score", "{preds}/badsplit.json"], "in"),
    ("score-number-prediction", ["score", "{preds}/number.json"], "in"),
    ("score-items-not-objects", ["score", "{preds}/items.json"], "in"),
    ("score-torn-middle-line", ["score", "{preds}/middle.jsonl"], "in"),
    ("score-missing", ["score", "{T}/nope.json"], "in"),
    ("score-format", ["score", "{preds}/dup.json", "--format", "essay"], "in"),
    ("score-judge", ["score", "{preds}/dup.json", "--judge", "oracle"], "in"),
    # ---- mark
    ("mark-no-outputs", ["mark", "{mp4}"], "in"),
    ("mark-out-is-input", ["mark", "{mp4}", "--out", "{mp4}"], "in"),
    ("mark-out-is-input-force", ["mark", "{mp4}", "--out", "{mp4}", "--force"], "sub"),
    ("mark-out-exists", ["mark", "{mp4}", "--out", "{marked}"], "in"),
    ("mark-out-avi", ["mark", "{mp4}", "--out", "{out}/m.avi"], "in"),
    ("mark-input-missing", ["mark", "{T}/nope.mp4", "--out", "{out}/m.mp4"], "in"),
    ("mark-input-corrupt", ["mark", "{bad_mp4}", "--out", "{out}/m.mp4"], "in"),
    ("mark-detector", ["mark", "{mp4}", "--out", "{out}/m.mp4", "--detector", "magic"], "in"),
    ("mark-style", ["mark", "{mp4}", "--out", "{out}/m.mp4", "--style", "glitter"], "in"),
    ("mark-max-frames-0", ["mark", "{mp4}", "--out", "{out}/m.mp4", "--max-frames", "0"], "in"),
    ("mark-fps-neg", ["mark", "{frames_empty}", "--out", "{out}/m.mp4", "--fps", "-1"], "in"),
    ("mark-json-is-input", ["mark", "{mp4}", "--json", "{mp4}"], "in"),
    # ---- demo (argument checks that fail before a server starts)
    ("demo-port-0", ["demo", "{bundle}", "--port", "0"], "sub"),
    ("demo-port-high", ["demo", "{bundle}", "--port", "70000"], "in"),
    ("demo-keyframes-0", ["demo", "{bundle}", "--keyframes", "0"], "in"),
    ("demo-keyframes-40", ["demo", "{bundle}", "--keyframes", "40"], "in"),
    ("demo-keyframe-interval", ["demo", "{bundle}", "--keyframe-interval", "0"], "in"),
    ("demo-queue-size", ["demo", "{bundle}", "--queue-size", "0"], "in"),
    ("demo-threads-0", ["demo", "{bundle}", "--threads", "0"], "in"),
    ("demo-max-side", ["demo", "{bundle}", "--max-side", "0"], "in"),
    ("demo-auth", ["demo", "{bundle}", "--auth", "nopassword"], "in"),
    ("demo-bundle-missing", ["demo", "{T}/nope"], "in"),
    ("demo-gguf-truncated", ["demo", "{b_gguf}"], "in"),
    ("demo-detector", ["demo", "{bundle}", "--detector", "magic"], "in"),
]


def _fill(args, corpus, out: Path) -> list:
    names = {**{k: str(v) for k, v in corpus.items()}, "out": str(out)}
    return [a.format(**names) if isinstance(a, str) else a for a in args]


def _run_in_process(args, capfd, monkeypatch) -> int:
    from instit_edge.cli import main

    monkeypatch.setattr(sys, "argv", ["instit-edge", *args])
    try:
        main()
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


def _run_subprocess(args) -> tuple[int, str]:
    env = dict(os.environ, COLUMNS="200", PYTHONIOENCODING="utf-8")
    argv = [a.encode() if isinstance(a, str) else a for a in args]
    r = subprocess.run([sys.executable, "-m", "instit_edge.cli", *argv], capture_output=True, env=env, timeout=300)
    return r.returncode, r.stderr.decode("utf-8", "replace")


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case, corpus, tmp_path, capfd, monkeypatch):
    name, args, where = case
    args = _fill(args, corpus, tmp_path)
    before = _digest(corpus["T"])
    if where == "sub":
        rc, err = _run_subprocess(args)
    else:
        capfd.readouterr()
        rc = _run_in_process(args, capfd, monkeypatch)
        err = capfd.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, f"{name}: exit {rc}\n{err[-3000:]}"
    assert len(lines) == 1, f"{name}: {len(lines)} stderr lines\n{err[-3000:]}"
    assert lines[0].startswith("error: "), lines[0]
    after = _digest(corpus["T"])
    assert after == before, f"{name}: changed {sorted(set(before.items()) ^ set(after.items()))[:5]}"


def test_corpus_size():
    per = {}
    for name, _, _ in CASES:
        per[name.split("-")[0]] = per.get(name.split("-")[0], 0) + 1
    assert len(CASES) >= 60 and set(per) >= {"ask", "export", "quantize", "eval", "mark", "score", "demo"}, per


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
@pytest.mark.parametrize("cmd", ["export", "eval", "quantize", "mark"])
def test_read_only_output_is_refused_before_work(cmd, corpus, tmp_path, capfd, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    if cmd == "quantize":
        target = _link_tree(corpus["bundle"], ro / "b")
    ro.chmod(0o555)
    try:
        if cmd == "quantize":
            target.chmod(0o555)
        args = {"export": ["export", str(corpus["ckpt"]), "--out", str(ro / "b")],
                "eval": ["eval", str(corpus["bundle"]), "--bench", str(corpus["bench"]), "--out", str(ro / "r")],
                "quantize": ["quantize", str(ro / "b"), "--llm", "q8_0", "--imatrix", "off"],
                "mark": ["mark", str(corpus["mp4"]), "--out", str(ro / "m.mp4")]}[cmd]
        capfd.readouterr()
        rc = _run_in_process(args, capfd, monkeypatch)
        err = capfd.readouterr().err
        assert rc == 2 and len(err.strip().splitlines()) == 1 and "permission denied" in err, err
    finally:
        for d in (ro / "b", ro):
            if d.exists():
                d.chmod(0o755)


# --------------------------------------------------------------------------- what used to go wrong silently
def test_image_modes_convert_like_hf(tmp_path):
    """16-bit greyscale is scaled (not clipped white), palette / CMYK / alpha go through PIL's RGB convert
    (HF's convert_rgb: alpha dropped), and the EXIF orientation is applied."""
    from instit_edge.runtime.anyres import load_image

    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    got = np.asarray(load_image(tmp_path / "g16.png"))
    assert got.shape == (64, 64, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got[..., 0], np.rint(ramp * (255 / 65535)).astype(np.uint8))
    assert 0 < got.mean() < 255

    Image.new("RGBA", (8, 8), (10, 20, 30, 0)).save(tmp_path / "a.png")
    assert tuple(np.asarray(load_image(tmp_path / "a.png"))[0, 0]) == (10, 20, 30)
    Image.new("LA", (8, 8), (100, 0)).save(tmp_path / "la.png")
    assert tuple(np.asarray(load_image(tmp_path / "la.png"))[0, 0]) == (100, 100, 100)
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    assert tuple(np.asarray(load_image(tmp_path / "c.jpg"))[0, 0]) == (255, 0, 0)
    pal = Image.new("P", (8, 8))
    pal.putpalette([0, 0, 255] * 256)
    pal.save(tmp_path / "p.png", transparency=0)
    assert tuple(np.asarray(load_image(tmp_path / "p.png"))[0, 0]) == (0, 0, 255)

    x = np.zeros((10, 20, 3), np.uint8)
    x[:, :10] = 255
    im = Image.fromarray(x)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    im.save(tmp_path / "rot.jpg", exif=exif.tobytes())
    assert load_image(tmp_path / "rot.jpg").size == (10, 20)


def test_outputs_follow_the_umask(tmp_path):
    from instit_edge.atomic import atomic_dir, write_text

    old = os.umask(0o022)
    try:
        write_text(tmp_path / "f.txt", "x")
        with atomic_dir(tmp_path / "d") as d:
            (d / "g").write_text("y")
    finally:
        os.umask(old)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


def test_control_tokens_in_a_question_are_text(bundles):
    """``</s>`` / ``<image>`` typed by a user are tokenized as characters; the template's own tokens still work."""
    from instit_edge.runtime.session import EdgeSession, build_user_prompt

    s = EdgeSession.load(bundles(COMBO), verify=False)
    p = s.prompt_cfg
    plain = "What is [1] holding?"
    whole = s.llm.tokenize(build_user_prompt(plain, p["template"], None), add_bos=p["add_bos"])
    assert s.segments(plain, None)[0].tokens == whole  # no change for ordinary questions
    eos, img = s.llm.special_token("</s>"), s.llm.special_token("<image>")
    assert eos is not None and img is not None
    tricky = s.segments("say </s> and <image> and <s>", None)[0].tokens
    assert eos not in tricky and img not in tricky and tricky.count(s.llm.tokenize("", True, False)[0]) == 1
    rows = np.zeros((3, s.llm.n_embd), np.float32)
    segs = s.segments("<image></s>", rows)
    assert len(segs) == 3 and img not in segs[0].tokens + segs[2].tokens and eos not in segs[2].tokens
