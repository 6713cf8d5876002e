"""The exported mmproj loads in libmtmd (mtmd_init_from_file); its embeddings are compared with PyTorch.

Measured deviations (written in the README), asserted as expected bands for every combination: a SigLIP
tower at its native size matches to cosine ~1.0 (so tensor names, feature_layer and projector are right);
CLIP towers differ (llama.cpp's CLS placement): mean cosine 0.74-0.77 over seeds 0-3 for LLaVA-1.5, and
for LLaVA-Next mtmd neither unpads nor inserts image_newline, so it yields a different number of rows and
its base rows agree to 0.79. A value above a band means llama.cpp fixed the deviation (update the README);
below it, our export broke.
"""

import numpy as np
import pytest


def _cos(a, b):
    return float(((a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)).mean())


EXPECTED_COSINE = {  # (low, high) of the mean cosine, measured with seeds 0-3 (tiny bundles, random images)
    "llava-qwen2-siglip": (0.999, 1.0001),
    "llava-llama-clip": (0.65, 0.85),  # measured 0.740, 0.750, 0.770, 0.747
    "llava-next-llama-clip": (0.70, 0.88),  # base rows only; measured 0.795, 0.793, 0.790, 0.789
    "llava-onevision-qwen2-siglip": (0.999, 1.0001),  # base rows only; SigLIP as in LLaVA-1.5
}


@pytest.mark.parametrize("combo", sorted(EXPECTED_COSINE))
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
    if edge.pre.pinpoints:  # LLaVA-Next / OneVision
        # mtmd: base + tiles, no unpadding, no newline -> a different row count than HF
        assert len(theirs) % (side * side) == 0 and len(theirs) != len(ours)
        cos = _cos(theirs[: side * side], ours[: side * side])
    else:
        assert len(theirs) == len(ours)
        cos = _cos(theirs, ours)
    record_property("mtmd_cosine", cos)
    print(f"{combo}: mtmd rows {len(theirs)} vs ours {len(ours)}, mean cosine of base rows {cos:.4f}")
    low, high = EXPECTED_COSINE[combo]
    assert low <= cos <= high, f"{combo}: mtmd cosine {cos:.4f} outside the documented {low}-{high}"
