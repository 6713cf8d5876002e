"""The CLI end to end, in subprocesses: exit codes, one-line errors, and `ask` without torch."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

RUN_NO_TORCH = r"""
import sys
from instit_edge.cli import main
sys.argv = ["instit-edge"] + sys.argv[1:]
try:
    main()
except SystemExit as e:
    code = e.code or 0
else:
    code = 0
assert "torch" not in sys.modules, "torch was imported on the device path"
assert "transformers" not in sys.modules, "transformers was imported on the device path"
sys.exit(code)
"""


def run(*args, torch_free=False):
    env = dict(os.environ, COLUMNS="200")
    cmd = [sys.executable, "-c", RUN_NO_TORCH, *args] if torch_free else [sys.executable, "-m", "instit_edge.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def marked_image(tmp_path_factory):
    from conftest import draw_seed

    p = tmp_path_factory.mktemp("img") / "frame.png"
    Image.fromarray(np.random.default_rng(draw_seed("marked_image")).integers(0, 256, (48, 80, 3), dtype=np.uint8)).save(p)
    return p


def test_ask_answers_without_torch(bundles, marked_image):
    r = run("ask", str(bundles("llava-next-qwen2-siglip")), "--image", str(marked_image), "-q", "What is [1]?",
            "--json", "--max-new-tokens", "12", torch_free=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["generated_tokens"] >= 1 and out["image_rows"] > 0
    for key in ("vision_ms", "prefill_tok_s", "decode_tok_s", "ttft_s"):
        assert key in out


def test_ask_streams_text(bundles, marked_image):
    r = run("ask", str(bundles("llava-next-llama-clip")), "--image", str(marked_image), "-q", "What is [2]?",
            "--max-new-tokens", "6", torch_free=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith("\n")


@pytest.mark.parametrize("args,needle", [
    (["ask", "/no/such/bundle", "--image", "x.png", "-q", "hi"], "bundle not found"),
    (["tiny", "--out", "/tmp/x", "--arch", "blip"], "--arch"),
    (["export", "/no/such/model", "--out", "/tmp/never"], "checkpoint not found"),
])
def test_user_errors_are_one_line_exit_2(args, needle):
    r = run(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_debug_shows_traceback():
    r = run("--debug", "ask", "/no/such/bundle", "--image", "x.png", "-q", "hi")
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_ask_missing_variant_and_list(bundles, marked_image):
    b = str(bundles("llava-next-llama-clip"))
    r = run("ask", b, "--list")
    assert r.returncode == 0 and "llm.f16.gguf" in r.stdout
    r = run("ask", b, "--image", str(marked_image), "-q", "hi", "--llm", "q2_k", torch_free=True)
    assert r.returncode == 2 and "available: f16, f32" in r.stderr


def test_every_command_has_help():
    r = run("--help")
    assert r.returncode == 0
    for cmd in ("doctor", "tiny", "synth", "export", "ask"):
        h = run(cmd, "--help")
        assert h.returncode == 0 and "Usage" in h.stdout, cmd


def test_doctor_reports_runtime():
    r = run("doctor")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "llama.cpp" in r.stdout and "onnxruntime" in r.stdout and "mtmd" in r.stdout


def test_doctor_names_the_opencv_wheel_and_checks_the_output_folder(tmp_path):
    from instit_edge.doctor import opencv_wheels, run_doctor

    wheels = opencv_wheels()
    assert len(wheels) == 1 and wheels[0].startswith("opencv-contrib-python "), wheels
    rows, missing = run_doctor(tmp_path / "out")
    detail = {r[0]: r[2] for r in rows}
    assert wheels[0] in detail["opencv"]
    assert "writable" in detail["output folder"] and "GiB free" in detail["output folder"]
    assert "AMX" in detail["cpu"] and not missing
    blocker = tmp_path / "a-file"
    blocker.write_text("x")  # a regular file where the output folder's parent should be: nothing can be made there
    _, missing = run_doctor(blocker / "out")
    assert any(m.startswith("write access") for m in missing)
