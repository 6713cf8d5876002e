"""The exported mmproj loads in libmtmd (mtmd_init_from_file); its embeddings are compared with PyTorch.

Measured deviations (written in the README): a SigLIP tower at its native size matches to cosine ~1.0
(so tensor names, feature_layer and projector are right); CLIP towers differ (llama.cpp's CLS
placement), and for LLaVA-Next mtmd neither unpads nor inserts image_newline, so it yields a
different number of rows.
"""

import numpy as np
import pytest


def _cos(a, b):
    return float(((a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)).mean())


@pytest.mark.parametrize("combo", ["llava-qwen2-siglip", "llava-llama-clip", "llava-next-llama-clip"])
def test_mmproj_loads_in_libmtmd_and_deviation_is_measured(combo, bundles, record_property, rng):
    from instit_edge.runtime.mtmd_vision import MtmdVision
    from instit_edge.runtime.session import EdgeSession

    b = bundles(combo)
    edge = EdgeSession.load(b, llm="f32")
    mv = MtmdVision(b / "mmproj.f16.gguf", b / "llm.f16.gguf")
    try:
        size = edge.pre.image_size
        img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        ours, _ = edge.image_embeddings(img)
        theirs = mv.encode(img)
    finally:
        mv.close()
    assert theirs.shape[1] == ours.shape[1]
    side = size // edge.bundle.preprocess["patch_size"]
    if "next" in combo:
        # mtmd: base + tiles, no unpadding, no newline -> a different row count than HF
        assert len(theirs) % (side * side) == 0 and len(theirs) != len(ours)
        cos = _cos(theirs[: side * side], ours[: side * side])
    else:
        assert len(theirs) == len(ours)
        cos = _cos(theirs, ours)
    record_property("mtmd_cosine", cos)
    print(f"{combo}: mtmd rows {len(theirs)} vs ours {len(ours)}, mean cosine of base rows {cos:.4f}")
    if combo == "llava-qwen2-siglip":
        assert cos >= 0.999  # f16 mmproj, same tower: the export itself is right
