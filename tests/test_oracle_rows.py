"""The default model's curriculum pieces: oracle rows, lookup questions and the projector regression.

References: the synthetic world's own bench (the lookup answers must be the bench's open-ended wording
for the same question on the same image), its masks (which patches belong to which instance), the
committed default model's real tokenizer and embedding table, and a numpy 2x2 mean for the frame pooling.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "models" / "default"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from instit_edge.data.synth import build_world

    out = tmp_path_factory.mktemp("oracle") / "world"
    build_world(out, seed=5, n_images=6, n_videos=2, image_size=(128, 128), n_train_images=6, n_train_videos=2)
    return out


@pytest.fixture(scope="module")
def model_and_processor():
    from instit_edge.models.loading import load_model

    return load_model(DEFAULT)


@pytest.fixture(scope="module")
def scenes(world, model_and_processor):
    from instit_edge.train.oracle_rows import SceneTable

    return SceneTable(world, model_and_processor[1].tokenizer)


def test_lookup_answers_use_the_bench_wording(world):
    from instit_edge.data.bench import load_bench
    from instit_edge.train.default_model import lookup_samples

    lookups = {(str(Path(s.image).resolve()), s.turns[0][0]): s.turns[0][1] for s in lookup_samples(world)
               if not s.kind.endswith("-mc")}
    compared = 0
    for it in load_bench(world / "bench", split="image", fmt="oe"):
        key = (str(Path(it.image_path).resolve()), it.question)
        if key in lookups:
            assert lookups[key] == it.answer, (it.question, lookups[key], it.answer)
            compared += 1
    assert compared >= 6, compared


def test_lookup_mc_letter_points_at_the_truth(world):
    import json

    from instit_edge.train.default_model import lookup_samples

    gt = json.loads((world / "ground_truth.json").read_text())
    by_path = {str((world / e["image_path"]).resolve()): e for part in ("dataset", "bench")
               for e in gt[part]["images"].values()}
    mcs = [s for s in lookup_samples(world) if s.kind.endswith("-mc")]
    assert mcs
    for s in mcs:
        q, letter = s.turns[0]
        lines = q.split("\n")
        k = lines[0].split("[")[1].split("]")[0]
        cat = s.kind.split("-")[1]
        options = dict(line.split(". ", 1) for line in lines[1:])
        assert sorted(options) == ["A", "B", "C", "D"] and len(set(options.values())) == 4
        assert options[letter] == by_path[str(Path(s.image).resolve())]["instances"][k][cat]


def test_oracle_rows_follow_the_masks(world, scenes, model_and_processor):
    import json

    from PIL import Image

    from instit_edge.train.oracle_rows import id_token

    tok = model_and_processor[1].tokenizer
    gt = json.loads((world / "ground_truth.json").read_text())
    for e in gt["bench"]["images"].values():
        ids = scenes.ids(world / e["image_path"])
        m = np.asarray(Image.open(world / e["mask_path"]))
        centre = m[np.ix_(np.arange(8) * 16 + 8, np.arange(8) * 16 + 8)].reshape(-1)
        for j, k in enumerate(centre):
            if k == 0:
                assert (ids[j] < 0).all()
            else:
                assert ids[j, 0] == id_token(tok, int(k))
                assert tok.decode([int(ids[j, 0])]).strip() == str(int(k))
                inst = e["instances"][str(int(k))]
                words = tok.decode([int(t) for t in ids[j, 1:] if t >= 0])
                assert inst["color"] in words and inst["shape"] in words and inst["position"] in words.replace(" ", "")


def test_embed_rows_and_frame_pooling_match_references(model_and_processor, rng):
    import torch

    from instit_edge.train.oracle_rows import embed_rows, pool_frames

    emb = model_and_processor[0].get_input_embeddings()
    ids = rng.integers(-1, emb.weight.shape[0], (3 * 64, 5))
    got = embed_rows(emb, ids).detach().numpy()
    w = emb.weight.detach().numpy()
    want = np.stack([w[[t for t in row if t >= 0]].sum(0) if (row >= 0).any() else np.zeros(w.shape[1])
                     for row in ids])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    x = rng.normal(size=(3 * 64, 7)).astype(np.float32)
    pooled = pool_frames(torch.from_numpy(x)).numpy()
    ref = x.reshape(3, 4, 2, 4, 2, 7).mean(axis=(2, 4)).reshape(-1, 7)
    np.testing.assert_allclose(pooled, ref, rtol=1e-5, atol=1e-6)


def test_oracle_stage_trains_the_llm_not_the_projector(world, scenes):
    import torch

    from instit_edge.models.loading import load_model
    from instit_edge.train.default_model import lookup_samples, train_vlm
    from instit_edge.train.oracle_rows import OracleRows

    model, processor = load_model(DEFAULT)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lookups = lookup_samples(world)[:8]
    out = train_vlm(model, processor, lookups, lookups, 2, batch=2, rows=OracleRows(model, scenes), log=lambda *_: None)
    assert out["steps"] == 2
    after = model.state_dict()
    proj = [k for k in after if "multi_modal_projector" in k]
    llm = [k for k in after if k.startswith("model.language_model.")]
    assert proj and all(torch.equal(before[k], after[k]) for k in proj)
    assert any(not torch.equal(before[k], after[k]) for k in llm)
    assert all(torch.equal(before[k], after[k]) for k in after if k.startswith("model.vision_tower."))


def test_projector_regression_lowers_the_error(world, scenes):
    from instit_edge.models.loading import load_model
    from instit_edge.train.default_model import regress_projector

    model, processor = load_model(DEFAULT)
    logs = []
    out = regress_projector(model, processor, scenes, steps=60, batch=16, log=logs.append)
    first = float(logs[0].rsplit(" ", 1)[1])
    assert out["relative_mse"] < 0.5 * first, (first, out)
