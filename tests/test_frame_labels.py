"""Frame labels: a model whose config says ``video_frame_labels`` reads ``<t>`` before each video frame's rows.

The bundle runtime (llama.cpp segments) against the torch reference on fresh random frames (F32 GGUF: max abs
<= 1e-3 over every text position, as tests/test_parity.py), the labels' numbers when frames are sampled, and
the trainer's rows (the same block the reference builds).
"""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

COMBO = "llava-llama-siglip"


@pytest.fixture(scope="module")
def labelled(workdir, tiny_models):
    """A tiny checkpoint with frame labels on, its f32 bundle, and the same bundle without labels."""
    from instit_edge.export.bundle_writer import export_bundle

    src = tiny_models(COMBO)
    model = workdir / "labelled" / "model"
    if not (model / "config.json").exists():
        shutil.copytree(src, model, dirs_exist_ok=True)
        cfg = json.loads((model / "config.json").read_text())
        cfg["video_frame_labels"] = True
        (model / "config.json").write_text(json.dumps(cfg))
    bundle = workdir / "labelled" / "bundle"
    if not (bundle / "bundle.json").exists() and not (bundle / "manifest.json").exists():
        export_bundle(str(model), bundle, llm_types=("f32",))
    return model, bundle


def _frames(rng, n):
    return [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(n)]


def test_bundle_records_frame_labels(labelled, bundles):
    from instit_edge.bundle import Bundle

    _, bundle = labelled
    assert Bundle.load(bundle).preprocess["video"]["frame_labels"] is True
    assert Bundle.load(bundles(COMBO)).preprocess["video"]["frame_labels"] is False


def test_segments_put_each_label_before_its_frame(labelled, rng):
    from instit_edge.runtime.session import EdgeSession

    _, bundle = labelled
    s = EdgeSession.load(bundle, llm="f32", f32_kv=True)
    n = int(rng.integers(2, 6))
    rows, key, frames = s.frames_embeddings(_frames(rng, n))
    segs = s.segments("What happens at <2>?", rows, key)
    assert frames == n and len(segs) == 2 + 2 * n
    per = len(rows) // n
    for t in range(1, n + 1):
        label, block = segs[2 * t - 1], segs[2 * t]
        assert b"".join(s.llm.token_bytes(x) for x in label.tokens).decode() == f"<{t}>"
        np.testing.assert_array_equal(block.embd, rows[(t - 1) * per:t * per])


def test_labelled_video_logits_match_torch(labelled, rng):
    from instit_edge.runtime.session import EdgeSession
    from instit_edge.runtime.torch_ref import TorchSession

    model, bundle = labelled
    edge = EdgeSession.load(bundle, llm="f32", f32_kv=True)
    ref = TorchSession.load(str(model))
    frames = _frames(rng, int(rng.integers(2, 7)))
    q = "What changed for [1] between <1> and <2>?"
    a, b = edge.logits(q, video=frames), ref.logits(q, video=frames)
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= 1e-3
    assert edge.generated_ids(q, video=frames, max_new_tokens=8) == ref.generated_ids(q, video=frames,
                                                                                       max_new_tokens=8)


def test_labels_change_what_the_model_reads(labelled, bundles, rng):
    """The same weights with and without labels: the labelled prompt is 3 tokens per frame longer and its
    answer logits differ (the labels really reach the LLM)."""
    from instit_edge.runtime.session import EdgeSession

    _, bundle = labelled
    on = EdgeSession.load(bundle, llm="f32", f32_kv=True)
    off = EdgeSession.load(bundles(COMBO), llm="f32", f32_kv=True)
    frames = _frames(rng, 3)
    q = "What is [1] doing at <3>?"
    seg_on, _ = on.prepare(q, video=frames)
    seg_off, _ = off.prepare(q, video=frames)
    assert sum(map(len, seg_on)) == sum(map(len, seg_off)) + sum(len(x.tokens) for x in seg_on[1:-1:2])
    assert not np.allclose(on.logits(q, video=frames)[-1], off.logits(q, video=frames)[-1], atol=1e-4)


def test_sampled_frames_keep_their_numbers(tmp_path, rng):
    from instit_edge.runtime.media import load_numbered_frames, sample_indices

    folder = tmp_path / "clip"
    folder.mkdir()
    for i in range(40):
        Image.fromarray(np.full((8, 8, 3), i * 6, np.uint8)).save(folder / f"f{i:03d}.png")
    frames, numbers = load_numbered_frames(folder, max_frames=32)
    assert len(frames) == 32 and numbers == [i + 1 for i in sample_indices(40, 32)]
    assert numbers[0] == 1 and numbers[-1] == 40 and numbers != list(range(1, 33))
    assert [int(f[0, 0, 0]) for f in frames] == [(n - 1) * 6 for n in numbers]  # the frame each number names
    _, short = load_numbered_frames([folder / "f000.png", folder / "f001.png"])
    assert short == [1, 2]


def test_trainer_rows_match_the_reference(labelled, rng, tmp_path):
    """The trainer's video rows (MediaEncoder, gradients on) are the torch reference's labelled block."""
    from instit_edge.models.loading import load_model
    from instit_edge.runtime.torch_ref import TorchSession
    from instit_edge.train.encode import MediaEncoder

    model_dir, _ = labelled
    model, processor = load_model(model_dir)
    frames = _frames(rng, 3)
    paths = []
    for i, f in enumerate(frames):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(f).save(paths[-1])
    with torch.no_grad():
        ours = MediaEncoder(model, processor).video_rows(paths)
    ref = TorchSession.load(str(model_dir)).video_rows(paths)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


def test_rows_that_do_not_split_into_frames_are_refused(labelled):
    from instit_edge.errors import InstitError
    from instit_edge.models.loading import load_model
    from instit_edge.models.vision import label_frames

    model, processor = load_model(labelled[0])
    rows = torch.zeros(11, model.config.text_config.hidden_size)  # 3 per frame leaves 2 (one newline at most)
    with pytest.raises(InstitError, match="do not split into 3 frames"):
        label_frames(model, processor.tokenizer, rows, [1, 2, 3])
