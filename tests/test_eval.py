"""Evaluation: bench runner (resume, shards, merge), MC scoring, OE judges, the quantization report and its gate."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from instit_edge.errors import InstitError

COMBO = "llava-next-llama-clip"
THREADS = 1  # one llama.cpp thread: no spin-barrier slowdowns when the CI box is busy


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from instit_edge.data.synth import build_world

    root = tmp_path_factory.mktemp("evalworld") / "world"
    build_world(root, seed=5, n_images=6, n_videos=2, n_train_images=1, n_train_videos=1)
    return root / "bench"


@pytest.fixture(scope="module")
def qbundle(bundles, tmp_path_factory):
    from instit_edge.quant.recipe import quantize_bundle

    dst = tmp_path_factory.mktemp("evalq") / "bundle"
    shutil.copytree(bundles(COMBO), dst)
    quantize_bundle(dst, ["q4_k_m"], [], imatrix="off", n_threads=THREADS)
    return dst


@pytest.fixture(scope="module")
def runs(qbundle, bench, tmp_path_factory):
    from instit_edge.eval.runner import run_eval

    root = tmp_path_factory.mktemp("evalruns")
    for v in ("f16", "q4_k_m"):
        run_eval(qbundle, bench, root / v, llm=v, n_threads=THREADS)
    return {"f16": root / "f16", "q4_k_m": root / "q4_k_m"}


def _preds(run_dir):
    from instit_edge.eval.store import read_predictions, uid

    return [(uid(r), r["model_prediction"]) for r in read_predictions(run_dir / "predictions.jsonl")]


def _submissions(run_dir):
    return {p.name: p.read_bytes() for p in sorted(run_dir.glob("*_inference.json"))}


# --------------------------------------------------------------------------- runner
def test_eval_writes_predictions_submissions_and_run_json(runs, bench, qbundle):
    from instit_edge.data.bench import load_bench

    items = load_bench(bench)
    meta = json.loads((runs["q4_k_m"] / "run.json").read_text())
    assert meta["complete"] and meta["done"] == len(items) == meta["selected"]
    assert meta["backend"] == "bundle" and meta["llm"] == "q4_k_m" and meta["vision"] == "fp32"
    assert meta["files"]["llm"]["size"] == (qbundle / "llm.q4_k_m.gguf").stat().st_size
    assert meta["timings"]["generated_tokens"] > 0 and meta["timings"]["total_s"] > 0
    assert set(meta["counts"]) == {"image/mc", "image/oe", "video/mc", "video/oe"}
    lines = (runs["q4_k_m"] / "predictions.jsonl").read_text().splitlines()
    rec = json.loads(lines[0])
    assert {"question_id", "split", "format", "category", "question", "model_prediction", "ground_truth",
            "timings"} <= set(rec)
    subs = json.loads((runs["q4_k_m"] / "image_mc_inference.json").read_text())
    keys = {"question_id", "question", "model_prediction", "ground_truth", "split"}
    assert all(set(s) == keys for s in subs)
    assert [s["question_id"] for s in subs] == sorted(s["question_id"] for s in subs)
    assert sorted(meta["submissions"]) == sorted(p for p in _submissions(runs["q4_k_m"]))


def test_rerun_skips_done_and_refuses_another_variant(runs, bench, qbundle, tmp_path):
    from instit_edge.eval.runner import run_eval

    d = tmp_path / "copy"
    shutil.copytree(runs["f16"], d)
    before = (d / "predictions.jsonl").read_bytes()
    run_eval(qbundle, bench, d, llm="f16", n_threads=THREADS)  # everything done: nothing appended
    assert (d / "predictions.jsonl").read_bytes() == before
    with pytest.raises(InstitError, match="another --out"):
        run_eval(qbundle, bench, d, llm="q4_k_m", n_threads=THREADS)
    # the same variant name with other weights (a re-export into the same folder): refused too
    meta = json.loads((d / "run.json").read_text())
    meta["files"]["llm"]["sha256"] = "0" * 64
    (d / "run.json").write_text(json.dumps(meta))
    with pytest.raises(InstitError, match="another --out"):
        run_eval(qbundle, bench, d, llm="f16", n_threads=THREADS)


def test_kill_and_resume_equals_uninterrupted(runs, bench, qbundle, tmp_path):
    from instit_edge.eval.runner import run_eval

    run = tmp_path / "killed"
    preds = run / "predictions.jsonl"
    cmd = [sys.executable, "-m", "instit_edge.cli", "eval", str(qbundle), "--bench", str(bench), "--out", str(run),
           "--threads", str(THREADS)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if preds.is_file() and preds.read_bytes().count(b"\n") >= 3:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    assert proc.wait(30) == -signal.SIGKILL, "eval finished before it could be killed"
    n_done = preds.read_bytes().count(b"\n")
    assert 3 <= n_done < len(_preds(runs["f16"]))
    with open(preds, "ab") as f:  # as if the kill had landed in the middle of a write
        f.write(b'{"question_id": "00')
    run_eval(qbundle, bench, run, llm="f16", n_threads=THREADS)
    assert _preds(run) == _preds(runs["f16"])
    assert _submissions(run) == _submissions(runs["f16"])
    assert json.loads((run / "run.json").read_text())["complete"]


def test_shards_merge_to_the_full_run(runs, bench, qbundle, tmp_path):
    from instit_edge.eval.merge import merge_runs
    from instit_edge.eval.runner import run_eval

    parts = [tmp_path / f"s{i}" for i in range(2)]
    metas = [run_eval(qbundle, bench, p, llm="f16", shard=f"{i}/2", n_threads=THREADS) for i, p in enumerate(parts)]
    a, b = (set(u for u, _ in _preds(p)) for p in parts)
    assert a and b and not a & b
    merged = merge_runs(parts, tmp_path / "merged")
    assert merged["done"] == sum(m["done"] for m in metas) and merged["complete"]
    assert sorted(_preds(tmp_path / "merged")) == sorted(_preds(runs["f16"]))
    assert _submissions(tmp_path / "merged") == _submissions(runs["f16"])
    with pytest.raises(InstitError, match="same model"):
        merge_runs([parts[0], runs["q4_k_m"]], tmp_path / "bad")


def test_eval_under_torchrun_shards_by_rank_and_rank0_merges(runs, bench, qbundle, tmp_path):
    """`torchrun --nproc_per_node 2 -m instit_edge.cli eval ...`: one command, two shards, one merged run that
    equals the single-process run (predictions and submission files byte for byte)."""
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    if torchrun is None:
        pytest.skip("torchrun not installed")
    out = tmp_path / "dist"
    r = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(29100 + os.getpid() % 300),
                        "-m", "instit_edge.cli", "eval", str(qbundle), "--bench", str(bench), "--llm", "f16",
                        "--threads", "1", "--out", str(out)], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    shards = sorted(p.name for p in (out / "shards").iterdir())
    assert shards == ["rank-0-of-2", "rank-1-of-2"]
    assert all(_preds(out / "shards" / s) for s in shards)
    assert sorted(_preds(out)) == sorted(_preds(runs["f16"]))
    assert _submissions(out) == _submissions(runs["f16"])


def test_limit_and_shard_options(bench):
    from instit_edge.data.bench import load_bench
    from instit_edge.eval.runner import parse_shard, select_items

    items = load_bench(bench)
    limited = select_items(items, limit=2)
    assert len(limited) == 8 and {(i.split, i.format) for i in limited} == {(s, f) for s in ("image", "video")
                                                                          for f in ("mc", "oe")}
    shards = [select_items(items, parse_shard(f"{i}/3")) for i in range(3)]
    assert sum(map(len, shards)) == len(items)
    for bad in ("3/3", "1-2", "0/0"):
        with pytest.raises(InstitError):
            parse_shard(bad)


# --------------------------------------------------------------------------- report + gate
def test_report_f16_vs_q4_k_m_and_gate(runs, tmp_path):
    from typer.testing import CliRunner

    from instit_edge.cli import app
    from instit_edge.eval.report import report

    out = tmp_path / "report"
    rep = report([runs["f16"], runs["q4_k_m"]], runs["f16"], out, max_drop=100, n_threads=THREADS)
    for name in ("report.md", "report.json", "accuracy.png", "kld_vs_size.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert rep["gate"]["passed"]
    comp = rep["comparisons"]["q4_k_m"]
    assert set(comp["groups"]) == {"image/mc", "image/oe", "video/mc", "video/oe"}
    for g, c in comp["groups"].items():
        assert c["n"] > 0 and 0 <= c["agreement"] <= 1
        assert ("mcnemar" in c) == g.endswith("/mc")
        if c["ci"]:
            assert c["ci"][0] <= c["ci"][1]
    fid = comp["fidelity"]
    assert fid["kld_mean"] > 0 and 0 < fid["top1"] <= 1 and fid["prompts"] > 0
    assert rep["runs"]["q4_k_m"]["sizes_mb"]["llm"] < rep["runs"]["f16"]["sizes_mb"]["llm"]
    md = (out / "report.md").read_text()
    assert "not the official GPT-4o score" in md and "| q4_k_m | image/mc |" in md
    print("\n".join(line for line in md.splitlines() if line.startswith("|"))[:6000])

    failed = report([runs["f16"], runs["q4_k_m"]], runs["f16"], tmp_path / "r2", max_drop=-1, kld_prompts=0)
    assert not failed["gate"]["passed"] and failed["gate"]["failures"][0]["run"] == "q4_k_m"

    cli = CliRunner()
    base = ["report", str(runs["f16"]), str(runs["q4_k_m"]), "--reference", str(runs["f16"]), "--kld-prompts", "0"]
    ok = cli.invoke(app, base + ["--out", str(tmp_path / "c1"), "--max-drop", "100"])
    assert ok.exit_code == 0, ok.output
    bad = cli.invoke(app, base + ["--out", str(tmp_path / "c2"), "--max-drop", "-1"])
    assert bad.exit_code == 1
    assert re.search(r"gate failed: q4_k_m loses -?\d+\.\d points on (image|video)/(mc|oe)", bad.output), bad.output


def test_torch_backend_run_and_kld_note(tiny_models, qbundle, bench, runs, tmp_path):
    from instit_edge.eval.report import report
    from instit_edge.eval.runner import run_eval

    meta = run_eval(None, bench, tmp_path / "torch", backend="torch", model=str(tiny_models(COMBO)), limit=1,
                    split="image", max_new_tokens=8)
    assert meta["backend"] == "torch" and meta["done"] == 2 and meta["files"]["checkpoint"]["size"] > 0
    rep = report([runs["f16"], tmp_path / "torch"], runs["f16"], tmp_path / "rep", n_threads=THREADS)
    assert "torch backend" in rep["comparisons"]["torch"]["fidelity"]["note"]
    assert set(rep["comparisons"]["torch"]["groups"]) == {"image/mc", "image/oe"}


# --------------------------------------------------------------------------- MC scoring
def _official_reference(s: str) -> str:
    """inst-it/inst-it inst-it-bench/evaluate.py ``extract_characters_regex``, transcribed (missing commas kept)."""
    s = s.strip()
    answer_prefixes = [
        "The best answer is", "The correct answer is", "The answer is", "The answer",
        "The best option is" "The correct option is", "Best answer:" "Best option:",
        "Answer", "Answer:", "answer:", "answer", "Option:", "The correct answer", "The correct option",
    ]
    for answer_prefix in answer_prefixes:
        s = s.replace(answer_prefix, "")
    if len(s.split()) > 10 and not re.search("[ABCD]", s):
        return ""
    matches = re.search(r"[ABCD]", s)
    return "" if matches is None else matches[0]


# (response, official letter, strict letter), checked by hand against the official source
MC_TABLE = [
    ("B", "B", "B"),
    ("B.", "B", "B"),
    ("(C)", "C", "C"),
    ("A", "A", "A"),
    ("The best answer is: B", "B", "B"),
    ("The best answer is B. [2] is red.", "B", "B"),
    ("Answer: C", "C", "C"),
    ("answer: b", "", "B"),
    ("The answer is d", "", "D"),
    ("The correct option is A", "A", "A"),
    ("Best option: D", "B", "D"),  # fused official prefix: the "B" of "Best" counts
    ("Based on the image, the best answer is A.", "B", "A"),
    ("At <4>, [2] appears in the frame.", "A", ""),
    ("A red square is at [2].", "A", ""),
    ("Dog", "D", ""),
    ("I think the answer is C because [1] is left of [2]", "C", "C"),
    ("C. [4] moves to the left", "C", "C"),
    ("[3] is a blue circle located at the top left of the image and it is large", "", ""),
    ("there are three instances visible in the frame and they move to the right over time", "", ""),
    ("the object [2] moves to the left between <3> and <5>, so option B fits best", "B", "B"),
    ("", "", ""),
]


def test_mc_official_mode_is_the_official_rule():
    from instit_edge.eval.scoring import score_items, summarize
    from instit_edge.prompting import extract_mc_answer, score_mc

    recs = [{"question_id": f"{i:03d}", "split": "image", "question": "q", "model_prediction": resp,
             "ground_truth": "B"} for i, (resp, _, _) in enumerate(MC_TABLE)]
    items = score_items(recs)
    for (resp, official, strict), o in zip(MC_TABLE, items):
        assert _official_reference(resp) == official, resp
        assert extract_mc_answer(resp, "official") == official, resp
        assert o["format"] == "mc" and o["answer"] == official and o["valid"] == bool(official), resp
        assert o["score"] == float(official == "B")
        assert extract_mc_answer(resp, "strict") == strict, resp
        assert o["strict_valid"] == bool(strict) and o["strict_score"] == float(strict == "B"), resp
    s = summarize(items)["image/mc"]
    ref = score_mc(recs, "official")
    assert (s["accuracy"], s["valid"], s["correct"], s["total"]) == (ref["accuracy"], ref["valid"], ref["correct"],
                                                                      ref["total"])
    strict = score_mc(recs, "strict")
    assert (s["strict"]["accuracy"], s["strict"]["valid"]) == (strict["accuracy"], strict["valid"])


def test_paired_stats():
    from instit_edge.eval.stats import mcnemar, paired_delta

    assert mcnemar([1, 1, 1, 0], [1, 1, 1, 0]) == {"b": 0, "c": 0, "p": 1.0}
    m = mcnemar([1] * 8 + [0] * 2, [0] * 8 + [0] * 2)
    assert m["b"] == 8 and m["c"] == 0 and m["p"] < 0.01
    same = paired_delta([1, 0, 1, 1], [1] * 4, [1, 0, 1, 1], [1] * 4)
    assert same["delta"] == 0 and same["ci"] == [0.0, 0.0]
    d = paired_delta([1] * 20, [1] * 20, [1] * 10 + [0] * 10, [1] * 20, seed=1)
    assert d["delta"] == -50 and d["ci"][0] < -50 < d["ci"][1] < 0
    assert paired_delta([1] * 20, [1] * 20, [1] * 10 + [0] * 10, [1] * 20, seed=1) == d  # fixed seed


# --------------------------------------------------------------------------- judges
def test_offline_judge_sanity():
    from instit_edge.eval.judges import OfflineJudge

    j = OfflineJudge()
    gt = "There are 2 red instances in the image: [1] [3]."
    assert j.score("q", gt, gt) == 1.0
    wrong_ids = j.score("q", gt, "There are 2 red instances in the image: [2] [4].")
    assert wrong_ids < j.score("q", gt, "There are 2 red instances in the image: [1] [4].") < 1.0
    assert j.score("q", gt, "banana") == 0.0
    vgt = "[2] disappears: it is visible in <3> but not in <4>."
    assert j.score("q", vgt, vgt, "video") == 1.0
    assert j.score("q", vgt, "[2] disappears: it is visible in <5> but not in <6>.", "video") < 1.0
    for resp in ("[1] is red", "[3] [1]", "red", "<2>", ""):
        s = j.score("q", gt, resp, "video")
        assert 0 <= s <= 1 and abs(s * 10 - round(s * 10)) < 1e-9


class _FakeOpenAI(BaseHTTPRequestHandler):
    script: list = []  # (status, content) replies in order; the last one repeats
    seen: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        status, content = self.script[min(len(self.seen) - 1, len(self.script) - 1)]
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]} if status == 200
                          else {"error": {"message": "boom"}}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_openai(monkeypatch):
    _FakeOpenAI.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeOpenAI)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{server.server_address[1]}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    yield _FakeOpenAI
    server.shutdown()
    server.server_close()


def test_openai_judge_retry_and_cache(fake_openai, tmp_path):
    from instit_edge.eval.judges import OpenAIJudge, make_judge
    from instit_edge.prompting import judge_input, judge_prompt

    fake_openai.script = [(500, None), (200, '{"sample_score": 0.7}')]
    cache = tmp_path / "judge.jsonl"
    j = make_judge("openai", model="judge-x", cache=cache)
    j.backoff = 0.01
    args = ("What is the color of [1]?", "[1] is red.", "[1] is red, I think.", "image")
    assert j.score(*args) == 0.7
    assert len(fake_openai.seen) == 2  # one 500, one retry
    req = fake_openai.seen[-1]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test"
    assert req["body"]["model"] == "judge-x"
    texts = [c["text"] for c in req["body"]["messages"][0]["content"]]
    assert texts == [judge_prompt("image"), judge_input(*args[:3])]
    assert j.score(*args) == 0.7 and len(fake_openai.seen) == 2  # cache hit in memory
    j2 = OpenAIJudge(model="judge-x", cache=cache, backoff=0.01)
    assert j2.score(*args) == 0.7 and len(fake_openai.seen) == 2  # cache hit on disk
    assert OpenAIJudge(model="other", cache=cache, backoff=0.01).score(*args) == 0.7
    assert len(fake_openai.seen) == 3  # the model is part of the key

    fake_openai.seen = []
    fake_openai.script = [(200, "I would give it a 7/10")]
    j3 = OpenAIJudge(model="judge-x", cache=tmp_path / "c3.jsonl", retries=2, backoff=0.01)
    assert j3.score("q", "[1]", "[2]", "video") is None  # invalid after 1 + 2 tries, not cached
    assert len(fake_openai.seen) == 3 and not (tmp_path / "c3.jsonl").exists()

    fake_openai.seen = []  # an endpoint without structured output: asked again without response_format
    fake_openai.script = [(400, None), (200, '{"sample_score": 1}')]
    j4 = OpenAIJudge(model="judge-x", backoff=0.01)
    assert j4.score("q", "[1]", "[1]") == 1.0
    assert "response_format" in fake_openai.seen[0]["body"] and "response_format" not in fake_openai.seen[1]["body"]


def test_openai_judge_in_score_command(fake_openai, runs, tmp_path):
    from typer.testing import CliRunner

    from instit_edge.cli import app

    fake_openai.script = [(200, 'Sure: {"sample_score": 0.5}')]
    sub = runs["f16"] / "video_oe_inference.json"
    n = len(json.loads(sub.read_text()))
    args = ["score", str(sub), "--judge", "openai", "--judge-cache", str(tmp_path / "c.jsonl")]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "video/oe" in r.output and "50.00" in r.output and len(fake_openai.seen) == n
    assert CliRunner().invoke(app, args).exit_code == 0 and len(fake_openai.seen) == n  # all cached


# --------------------------------------------------------------------------- score command + bad input
def test_score_command_counts(runs):
    from typer.testing import CliRunner

    from instit_edge.cli import app
    from instit_edge.prompting import score_mc

    sub = runs["q4_k_m"] / "image_mc_inference.json"
    ref = score_mc(json.loads(sub.read_text()))
    r = CliRunner().invoke(app, ["score", str(sub)])
    assert r.exit_code == 0, r.output
    acc = "n/a" if ref["accuracy"] is None else f"{ref['accuracy']:.2f}"
    row = rf"image/mc\s*│\s*{re.escape(acc)}\s*│\s*{ref['valid']}\s*│\s*{ref['correct']}\s*│"
    assert re.search(row, r.output), r.output


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "instit_edge.cli", *args], capture_output=True, text=True,
                          env=dict(os.environ, COLUMNS="200"), timeout=300)


def test_bad_input_is_one_line(tmp_path, qbundle, bench):
    from instit_edge.eval.scoring import load_predictions_file

    bad = tmp_path / "preds.json"
    bad.write_text('[{"question_id": "001-01", "model_prediction": "A"')
    r = _cli("score", str(bad))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "not valid JSON" in r.stderr
    broken = tmp_path / "bench"
    shutil.copytree(bench, broken)
    (broken / "image_multi_choices.json").write_text("[{]")
    r = _cli("eval", str(qbundle), "--bench", str(broken), "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "image_multi_choices.json" in r.stderr
    bad.write_text(json.dumps([{"question_id": "1", "model_prediction": "A", "ground_truth": "A"}]))
    with pytest.raises(InstitError, match="has no split"):
        load_predictions_file(bad)
    bad.write_text(json.dumps({"question_id": "1"}))
    with pytest.raises(InstitError, match="JSON list"):
        load_predictions_file(bad)
    torn = tmp_path / "run2" / "predictions.jsonl"
    torn.parent.mkdir()
    torn.write_text('{"question_id": "1", "split": "image", "format": "mc"}\nnot json\n{"question_id": "2"')
    with pytest.raises(InstitError, match="line 2"):
        load_predictions_file(torn.parent)
