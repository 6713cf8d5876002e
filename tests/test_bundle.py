"""Bundle manifest, verification and one-line errors for bad input."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from instit_edge.bundle import Bundle
from instit_edge.errors import InstitError


@pytest.fixture()
def bundle_copy(bundles, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(bundles("llava-next-llama-clip"), dst)
    return dst


def _one_line(e):
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


def test_manifest_lists_every_file_with_size_and_sha(bundles):
    b = Bundle.load(bundles("llava-next-llama-clip"), verify=True)
    m = b.manifest
    assert m["format_version"] == 1
    pre = m["preprocess"]
    for key in ("image_size", "image_mean", "image_std", "pinpoints", "feature_layer", "select_strategy", "video"):
        assert key in pre
    assert m["prompt"]["template"] == "vicuna_v1" and m["prompt"]["image_token"] == "<image>"
    files = {e["path"] for g in m["files"].values() for e in g.values()}
    assert {"llm.f16.gguf", "vision.onnx", "vision.fp16.onnx", "mmproj.f16.gguf", "image_newline.npy"} <= files
    on_disk = {p.name for p in b.root.iterdir()} - {"bundle.json"}
    assert on_disk == files  # nothing unlisted, nothing missing
    q = Bundle.load(bundles("llava-next-qwen2-siglip"), verify=False)
    assert q.prompt["template"] == "chatml"


def test_tampered_file_is_named(bundle_copy):
    p = bundle_copy / "vision.onnx"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(InstitError) as e:
        Bundle.load(bundle_copy, verify=True)
    assert "vision.onnx" in _one_line(e) and "sha256" in str(e.value)


def test_truncated_and_missing_files(bundle_copy):
    from instit_edge.runtime.session import EdgeSession

    original = (bundle_copy / "llm.f16.gguf").read_bytes()
    (bundle_copy / "llm.f16.gguf").write_bytes(b"GGUF")
    with pytest.raises(InstitError) as e:
        EdgeSession.load(bundle_copy, llm="f16")
    assert "llm.f16.gguf" in _one_line(e)
    (bundle_copy / "llm.f16.gguf").write_bytes(original)
    (bundle_copy / "vision.onnx").unlink()
    with pytest.raises(InstitError) as e:
        Bundle.load(bundle_copy).verify()
    assert "vision.onnx" in _one_line(e)


def test_missing_variant_lists_available(bundles):
    from instit_edge.runtime.session import EdgeSession

    with pytest.raises(InstitError) as e:
        EdgeSession.load(bundles("llava-next-llama-clip"), llm="q4_k_m")
    msg = _one_line(e)
    assert "q4_k_m" in msg and "f16" in msg and "f32" in msg


def test_corrupt_manifest(bundle_copy):
    (bundle_copy / "bundle.json").write_text("{not json")
    with pytest.raises(InstitError) as e:
        Bundle.load(bundle_copy)
    assert "bundle.json" in _one_line(e)
    (bundle_copy / "bundle.json").write_text(json.dumps({"format_version": 99}))
    with pytest.raises(InstitError, match="format_version"):
        Bundle.load(bundle_copy)


def test_prompt_over_context_gives_both_numbers(bundles):
    from instit_edge.runtime.session import EdgeSession

    s = EdgeSession.load(bundles("llava-next-llama-clip"), llm="f16", n_ctx=64, verify=False)
    img = Image.fromarray(np.zeros((40, 70, 3), np.uint8))
    with pytest.raises(InstitError) as e:
        s.ask("What is [1]? " * 100, image=img)
    msg = _one_line(e)
    n_prompt = sum(len(seg) for seg in s.segments("What is [1]? " * 100, s.image_embeddings(img)[0]))
    assert f"prompt is {n_prompt} tokens" in msg and str(s.llm.n_ctx) in msg


def test_unreadable_image_and_empty_video(bundles, tmp_path):
    from instit_edge.runtime.session import EdgeSession

    s = EdgeSession.load(bundles("llava-next-llama-clip"), llm="f16", verify=False)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(InstitError) as e:
        s.ask("What is [1]?", image=bad)
    assert "bad.jpg" in _one_line(e)
    empty = tmp_path / "frames"
    empty.mkdir()
    with pytest.raises(InstitError) as e:
        s.ask("What is [1] at <1>?", video=empty)
    assert "no frames" in _one_line(e)
    broken = tmp_path / "clip.mp4"
    broken.write_bytes(b"\x00" * 100)
    with pytest.raises(InstitError) as e:
        s.ask("What is [1]?", video=broken)
    assert "clip.mp4" in _one_line(e)


def test_timestamp_past_last_frame_is_rejected(bundles):
    from instit_edge.runtime.session import EdgeSession

    s = EdgeSession.load(bundles("llava-next-llama-clip"), llm="f16", verify=False)
    frames = [np.zeros((32, 32, 3), np.uint8)] * 3
    with pytest.raises(InstitError) as e:
        s.ask("What does [1] do at <5>?", video=frames)
    assert "3" in _one_line(e)


def test_export_refusals(tiny_models, tmp_path):
    from instit_edge.export.bundle_writer import export_bundle

    (tmp_path / "exists").mkdir()
    with pytest.raises(InstitError, match="--force"):
        export_bundle(str(tiny_models("llava-llama-clip")), tmp_path / "exists")
    ck = tmp_path / "ck"
    shutil.copytree(tiny_models("llava-llama-clip"), ck)
    cfg = json.loads((ck / "config.json").read_text())
    cfg["model_type"] = "blip-2"
    (ck / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InstitError) as e:
        export_bundle(str(ck), tmp_path / "out")
    assert "llava" in _one_line(e) and "blip-2" in str(e.value)
    assert not (tmp_path / "out").exists()
    cfg["model_type"] = "llava"
    (ck / "config.json").write_text(json.dumps(cfg))
    for f in ck.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(InstitError, match="weight"):
        export_bundle(str(ck), tmp_path / "out")
    with pytest.raises(InstitError, match="not found"):
        export_bundle(str(tmp_path / "nowhere" / "model"), tmp_path / "out")


def test_question_format_official_oe_wraps_plain_questions(bundle_copy):
    """A bundle whose model was trained on the official OE prompt (the default model) gets plain questions
    wrapped in it; official prompts pass unchanged; raw bundles never wrap."""
    from instit_edge.prompting import build_oe_prompt
    from instit_edge.runtime.session import EdgeSession

    m = json.loads((bundle_copy / "bundle.json").read_text())
    assert m["prompt"]["question_format"] == "raw"
    s = EdgeSession.load(bundle_copy, verify=False)
    assert s.wrap_question("What is [1]?") == "What is [1]?"
    m["prompt"]["question_format"] = "official_oe"
    (bundle_copy / "bundle.json").write_text(json.dumps(m))
    s = EdgeSession.load(bundle_copy, verify=False)
    wrapped = build_oe_prompt("What is [1]?", split="image")
    assert s.wrap_question("What is [1]?") == wrapped
    assert s.wrap_question(wrapped) == wrapped
    assert s.wrap_question("What changed for [1] between <1> and <2>?", video=True) == \
        build_oe_prompt("What changed for [1] between <1> and <2>?", split="video")
    img = Image.fromarray(np.random.default_rng(3).integers(0, 255, (40, 70, 3), dtype=np.uint8))
    a = s.ask("What is [1]?", image=img, max_new_tokens=4)
    b = s.ask(wrapped, image=img, max_new_tokens=4)
    assert a.text == b.text and s.last_stats["prompt_tokens"] > 100
    m["prompt"]["question_format"] = "sometimes"
    (bundle_copy / "bundle.json").write_text(json.dumps(m))
    with pytest.raises(InstitError, match="question_format"):
        Bundle.load(bundle_copy, verify=False)


def test_prefetch_then_ask_prefills_only_the_question(bundles, rng):
    """prefetch(image) computes vision + the KV up to the end of the image rows; the answer is token for token
    the one without prefetch, and the prompt reuses everything before the question. A newer prefetch supersedes
    one that has not started."""
    from instit_edge.runtime.session import EdgeSession

    imgs = [Image.fromarray(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)) for _ in range(3)]
    q = "What is [1] doing?"
    ref = EdgeSession.load(bundles("llava-next-llama-clip"), verify=False)
    expected = ref.ask(q, image=imgs[0], max_new_tokens=8)
    s = EdgeSession.load(bundles("llava-next-llama-clip"), verify=False)
    info = s.prefetch(image=imgs[0]).result(timeout=60)
    assert not info["cancelled"] and info["rows"] > 0
    got = s.ask(q, image=imgs[0], max_new_tokens=8)
    assert got.text == expected.text
    assert s.last_stats["reused_tokens"] == info["cached_tokens"]
    assert s.last_stats["prompt_tokens"] - s.last_stats["reused_tokens"] < 20  # the question's tokens only
    with s._lock:  # while the LLM is held, each newer prefetch supersedes the older ones
        first = s.prefetch(image=imgs[1])
        second = s.prefetch(image=imgs[2])
        third = s.prefetch(image=imgs[0])
    assert first.result(timeout=60)["cancelled"] and second.result(timeout=60)["cancelled"]
    assert not third.result(timeout=60)["cancelled"]
    s.close_prefetch()


def test_prefetch_with_the_official_pre_prompt(bundles, rng):
    """prefetch(image, prefix=the official OE pre-prompt): the pre-prompt's KV is computed with the frame, so the
    official-prompt question afterwards prefills only its own words, and answers exactly as without prefetch."""
    from instit_edge.prompting import build_oe_prompt
    from instit_edge.runtime.session import EdgeSession

    img = Image.fromarray(rng.integers(0, 255, (40, 72, 3), dtype=np.uint8))
    q = build_oe_prompt("What is [2] holding?")
    prefix = build_oe_prompt("")
    ref = EdgeSession.load(bundles("llava-qwen2-siglip"), verify=False)
    expected = ref.ask(q, image=img, max_new_tokens=6)
    s = EdgeSession.load(bundles("llava-qwen2-siglip"), verify=False)
    plain = s.prefetch(image=img, background=False)["cached_tokens"]
    s.llm.reset()
    info = s.prefetch(image=img, prefix=prefix, background=False)
    assert info["cached_tokens"] > plain + 100  # the pre-prompt is hundreds of tokens
    got = s.ask(q, image=img, max_new_tokens=6)
    assert got.text == expected.text
    assert s.last_stats["reused_tokens"] == info["cached_tokens"]
    assert s.last_stats["prompt_tokens"] - s.last_stats["reused_tokens"] < 20
    s.close_prefetch()


def test_max_tiles_budget_row_counts(bundles):
    """--max-tiles N keeps AnyRes grids of at most N tiles: 0 = base image + one newline row; fewer tiles,
    fewer rows; no budget = the bundle's own packing."""
    from instit_edge.runtime.session import EdgeSession

    s = EdgeSession.load(bundles("llava-next-llama-clip"), verify=False)
    pre = s.bundle.preprocess
    side = pre["image_size"] // pre["patch_size"]
    img = Image.fromarray(np.random.default_rng(11).integers(0, 255, (40, 90, 3), dtype=np.uint8))
    full, _ = s.image_embeddings(img)
    counts = {}
    for n in (0, 2, 3, 4):
        s.set_max_tiles(n)
        rows, key = s.image_embeddings(img)
        counts[n] = len(rows)
        assert f":t{n}:" in key
    assert counts[0] == side * side + 1
    assert counts[0] < counts[2] <= counts[3] <= counts[4] <= len(full)
    s.set_max_tiles(None)
    again, _ = s.image_embeddings(img)
    assert np.array_equal(again, full)
    s.set_max_tiles(0)
    assert s.ask("What is [1]?", image=img, max_new_tokens=2).stats["image_rows"] == side * side + 1
    with pytest.raises(InstitError, match="max-tiles"):
        s.set_max_tiles(-1)


def test_stream_can_be_advanced_from_different_threads(bundles):
    """Gradio and Starlette advance a streaming generator from worker threads: the session's lock must not
    belong to the thread that started the answer (an RLock raised 'cannot release un-acquired lock')."""
    import threading

    from instit_edge.runtime.session import EdgeSession

    s = EdgeSession.load(bundles("llava-next-llama-clip"), verify=False)
    img = Image.fromarray(np.random.default_rng(2).integers(0, 255, (40, 60, 3), dtype=np.uint8))
    gen = s.stream("What is [1]?", image=img, max_new_tokens=6)
    pieces, errors = [], []

    def step():
        try:
            pieces.append(next(gen, None))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    for _ in range(10):  # every step on a new thread, as a thread pool may do
        t = threading.Thread(target=step)
        t.start()
        t.join()
        if errors or pieces[-1] is None:
            break
    assert not errors, errors
    pieces = [p for p in pieces if p is not None]
    assert pieces and s.ask("What is [1]?", image=img, max_new_tokens=2).stats["generated_tokens"] >= 1
