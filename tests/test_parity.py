"""The bundle runtime (ONNX Runtime + llama.cpp) against PyTorch, on fresh random inputs each run.

Tolerances:
- vision.onnx (fp32) vs HF image features: max abs <= 1e-4.
- llama.cpp F32 GGUF + F32 KV vs PyTorch logits at every text position: max abs <= 1e-3
  (measured ~5e-6), and 16 greedy tokens identical.
- F16 GGUF (+ F16 KV, fp16 vision): reported; asserted top-1 agreement >= 0.9 and cosine >= 0.999.
"""

import numpy as np
import pytest
import torch
from conftest import COMBOS
from PIL import Image

QUESTIONS = ["What is [1] holding?", "Describe [2] [3] at <1>.", "Which object is left of [4]?"]


def _image(rng):
    h, w = int(rng.integers(16, 120)), int(rng.integers(16, 120))
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def sessions():
    cache = {}

    def get(combo, bundles, tiny_models):
        if combo not in cache:
            from instit_edge.runtime.session import EdgeSession
            from instit_edge.runtime.torch_ref import TorchSession

            cache[combo] = (EdgeSession.load(bundles(combo), llm="f32", f32_kv=True),
                            EdgeSession.load(bundles(combo), llm="f16", vision="fp16"),
                            TorchSession.load(str(tiny_models(combo))))
        return cache[combo]

    return get


@pytest.mark.parametrize("combo", COMBOS)
def test_vision_onnx_matches_hf(combo, bundles, tiny_models, sessions, rng):
    edge, _, ref = sessions(combo, bundles, tiny_models)
    img = _image(rng)
    ours, _ = edge.image_embeddings(img)
    inputs = ref.processor.image_processor(images=img, return_tensors="pt")
    with torch.no_grad():
        feats = ref.model.get_image_features(pixel_values=inputs["pixel_values"],
                                             **({"image_sizes": inputs["image_sizes"]} if "image_sizes" in inputs else {}))
    rows = feats.pooler_output
    rows = torch.cat(list(rows), 0) if isinstance(rows, (list, tuple)) else rows.reshape(-1, rows.shape[-1])
    assert ours.shape == tuple(rows.shape)
    assert np.abs(ours - rows.numpy()).max() <= 1e-4


@pytest.mark.parametrize("combo", COMBOS)
def test_llamacpp_f32_logits_and_greedy_match_torch(combo, bundles, tiny_models, sessions, rng):
    edge, _, ref = sessions(combo, bundles, tiny_models)
    img = _image(rng)
    q = QUESTIONS[int(rng.integers(len(QUESTIONS)))]
    a, b = edge.logits(q, image=img), ref.logits(q, image=img)
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= 1e-3
    assert edge.generated_ids(q, image=img, max_new_tokens=16) == ref.generated_ids(q, image=img, max_new_tokens=16)


@pytest.mark.parametrize("combo", ["llava-next-llama-clip", "llava-next-qwen2-siglip", "llava-llama-siglip",
                                   "llava-onevision-qwen2-siglip"])
def test_video_logits_match_torch(combo, bundles, tiny_models, sessions, rng):
    edge, _, ref = sessions(combo, bundles, tiny_models)
    frames = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(int(rng.integers(2, 7)))]
    q = "What changed for [1] between <1> and <2>?"
    a, b = edge.logits(q, video=frames), ref.logits(q, video=frames)
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= 1e-3


@pytest.mark.parametrize("combo", COMBOS)
def test_f16_fidelity_reported(combo, bundles, tiny_models, sessions, rng, record_property):
    _, edge16, ref = sessions(combo, bundles, tiny_models)
    img = _image(rng)
    a, b = edge16.logits(QUESTIONS[0], image=img), ref.logits(QUESTIONS[0], image=img)
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    top1 = float((a.argmax(-1) == b.argmax(-1)).mean())
    record_property("f16_top1", top1)
    record_property("f16_cos_min", float(cos.min()))
    print(f"{combo}: f16 top-1 agreement {top1:.3f}, min cosine {cos.min():.6f}, max abs {np.abs(a - b).max():.2e}")
    assert top1 >= 0.9 and cos.min() >= 0.999


def test_answer_reuses_prefix_and_image_cache(bundles, rng):
    from instit_edge.runtime.session import EdgeSession

    s = EdgeSession.load(bundles("llava-next-llama-clip"), llm="f16")
    tower_calls = []
    vision = s.vision
    s.vision = lambda crops: (tower_calls.append(len(crops)), vision(crops))[1]  # count, do not time
    img = _image(rng)
    first = s.ask("What is [1]?", image=img, max_new_tokens=8)
    n_first = len(tower_calls)
    second = s.ask("What is [2]?", image=img, max_new_tokens=8)
    rows = first.stats["image_rows"]
    assert second.stats["reused_tokens"] >= rows  # system prefix + all image rows came from the KV cache
    assert n_first >= 1 and len(tower_calls) == n_first  # embeddings came from the cache: the tower did not run
    again = s.ask("What is [1]?", image=img, max_new_tokens=8)
    assert again.text == first.text


def test_onevision_anyres_max_shrinks_and_matches_hf(bundles, tiny_models, sessions, rng):
    """A 2x2-tile grid (8x8 patches) is over anyres_max_2's limit (sqrt(64 / 32) = 1.41 > 1.1): HF
    LlavaOnevision shrinks it bilinearly to 5x5; the bundle runtime packs the same rows."""
    combo = "llava-onevision-qwen2-siglip"
    edge, _, ref = sessions(combo, bundles, tiny_models)
    side = int(rng.integers(56, 64))
    img = Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
    ours, _ = edge.image_embeddings(img)
    inputs = ref.processor.image_processor(images=img, return_tensors="pt")
    with torch.no_grad():
        rows = ref.model.get_image_features(pixel_values=inputs["pixel_values"],
                                            image_sizes=inputs["image_sizes"]).pooler_output
    rows = torch.cat(list(rows), 0)
    assert ours.shape[0] == 16 + 5 * 6  # base 4x4, the shrunk 5x5 grid with a newline per row
    assert ours.shape == tuple(rows.shape) and np.abs(ours - rows.numpy()).max() <= 1e-4
