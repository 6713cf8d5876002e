"""The default model's curriculum pieces: oracle rows, lookup questions, the projector's code and its readout.

References: the synthetic world's own bench (a lookup's bare answer must be the attribute that the bench's
open-ended answer names for the same question on the same image), its ground truth and masks (which patches
belong to which instance), the committed default model's real tokenizer and embedding table, a numpy 2x2 mean
for the frame pooling, and the HF projector itself for the baked readout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import default_world

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "models" / "default"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return default_world(tmp_path_factory, "oracle", seed=5, images=6, videos=2)


@pytest.fixture(scope="module")
def model_and_processor():
    from instit_edge.models.loading import load_model

    return load_model(DEFAULT)


@pytest.fixture(scope="module")
def scenes(world, model_and_processor):
    from instit_edge.train.oracle_rows import SceneTable

    return SceneTable(world, model_and_processor[1].tokenizer)


def test_lookup_answers_are_the_attribute_the_bench_names(world):
    import json

    from instit_edge.data.bench import load_bench
    from instit_edge.train.default_model import lookup_samples

    gt = json.loads((world / "ground_truth.json").read_text())
    truth = {str((world / e["image_path"]).resolve()): e["instances"] for part in ("dataset", "bench")
             for e in gt[part]["images"].values()}
    lookups = {(str(Path(s.image).resolve()), s.turns[0][0]): s for s in lookup_samples(world)
               if not s.kind.endswith("-mc")}
    for (path, q), s in lookups.items():
        k = q.split("[")[1].split("]")[0]
        assert s.turns[0][1] == truth[path][k][s.kind.split("-")[1]], (q, s.turns[0][1])
    compared = 0
    for it in load_bench(world / "bench", split="image", fmt="oe"):
        key = (str(Path(it.image_path).resolve()), it.question)
        if key in lookups:
            assert lookups[key].turns[0][1] in it.answer, (it.question, lookups[key].turns[0][1], it.answer)
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


def test_patch_targets_follow_the_masks_and_the_grid(world):
    import json

    from PIL import Image

    from instit_edge.data.synth import COLORS, SHAPES, position_name
    from instit_edge.train.default_model import POSITIONS, _patch_targets

    gt = json.loads((world / "ground_truth.json").read_text())
    for e in gt["bench"]["images"].values():
        t = _patch_targets(e, world / e["mask_path"], list(COLORS), list(SHAPES)).reshape(8, 8, 6)
        m = np.asarray(Image.open(world / e["mask_path"]))
        for py in range(8):
            for px in range(8):
                k = int(m[py * 16 + 8, px * 16 + 8])
                assert POSITIONS[t[py, px, 5] - 1] == position_name(px * 16 + 8, py * 16 + 8, 128, 128)
                if k == 0:
                    assert (t[py, px, 1:5] == 0).all()
                    continue
                inst = e["instances"][str(k)]
                assert t[py, px, 3] == k
                assert list(COLORS)[t[py, px, 1] - 1] == inst["color"]
                assert list(SHAPES)[t[py, px, 2] - 1] == inst["shape"]
                assert POSITIONS[t[py, px, 4] - 1] == inst["position"]


def test_code_layout_fits_the_projector_and_does_not_overlap(model_and_processor):
    from instit_edge.data.synth import COLORS, SHAPES
    from instit_edge.train.default_model import code_layout

    layout = code_layout(len(COLORS), len(SHAPES))
    units = [u for a, n in layout.values() for u in range(a, a + n)]
    assert len(units) == len(set(units)) and min(units) == 0
    assert max(units) < model_and_processor[0].model.multi_modal_projector.linear_1.out_features


def test_code_stage_learns_and_silences_the_spare_units(world):
    import torch

    from instit_edge.models.loading import load_model
    from instit_edge.train.default_model import code_layout, pretrain_codes

    model, processor = load_model(DEFAULT)
    logs = []
    out = pretrain_codes(model, processor, world, steps=40, batch=8, log=logs.append)
    first, last = float(logs[0].split(" loss ")[1].split()[0]), float(logs[-1].split(" loss ")[1].split()[0])
    assert last < first, logs
    used = sum(n for _, n in out["layout"].values())
    assert {k: tuple(v) for k, v in out["layout"].items()} == code_layout(*_classes())
    lin1 = model.model.multi_modal_projector.linear_1
    assert torch.count_nonzero(lin1.weight[used:]) == 0 and torch.count_nonzero(lin1.bias[used:]) == 0


def _classes():
    from instit_edge.data.synth import COLORS, SHAPES

    return len(COLORS), len(SHAPES)


def test_baked_readout_equals_the_tied_rows_and_writes_word_embeddings(world, rng):
    import torch

    from instit_edge.models.loading import load_model
    from instit_edge.train.default_model import (
        FrozenVisionRows,
        TiedCodeRows,
        code_layout,
        code_token_matrix,
        init_code_readout,
    )
    from instit_edge.train.instructions import Sample
    from instit_edge.train.oracle_rows import id_token

    model, processor = load_model(DEFAULT)
    tok = processor.tokenizer
    layout = code_layout(*_classes())
    with torch.no_grad():  # fresh random embeddings: the readout must follow whatever the table holds
        model.get_input_embeddings().weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(int(rng.integers(1e9))))
    init_code_readout(model, tok, layout)
    lin2 = model.model.multi_modal_projector.linear_2
    emb = model.get_input_embeddings().weight
    a, _ = layout["instance"]
    torch.testing.assert_close(lin2.weight[:, a + 3], emb[id_token(tok, 3)], rtol=1e-5, atol=1e-6)
    assert torch.count_nonzero(lin2.weight[:, a]) == 0  # background writes nothing
    m = code_token_matrix(tok, layout, lin2.in_features, emb.shape[0])
    assert m.sum(1)[sum(n for _, n in layout.values()):].sum() == 0
    img = next((world / "bench" / "images_vpt").glob("*.jpg"))
    s = Sample([("q", "a")], image=img, kind="t")
    torch.testing.assert_close(FrozenVisionRows(model, processor).rows(s), TiedCodeRows(model, processor, layout).rows(s),
                               rtol=1e-4, atol=1e-5)


def test_code_rows_stage_keeps_the_code_and_trains_the_llm(world):
    import torch

    from instit_edge.models.loading import load_model
    from instit_edge.train.default_model import TiedCodeRows, code_layout, lookup_samples, train_vlm

    model, processor = load_model(DEFAULT)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lookups = lookup_samples(world)[:8]
    rows = TiedCodeRows(model, processor, code_layout(*_classes()))
    out = train_vlm(model, processor, lookups, lookups, 2, batch=2, rows=rows, freeze_code=True, log=lambda *_: None)
    assert out["steps"] == 2
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in after
               if k.startswith(("model.vision_tower.", "model.multi_modal_projector.linear_1.")))
    assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith("model.language_model."))


def test_lookup_heads_point_at_the_id_the_answer_and_the_instance_patches(world, model_and_processor):
    """train/lookup_heads.py: on the world's official MC prompts and short lookups, the supervised positions
    are the ID's token, the token before the answer, and the patches the instance's mask covers (checked
    against the mask itself); questions naming no single instance are left alone."""
    import json

    from PIL import Image

    from instit_edge.train.default_model import bench_samples, lookup_samples
    from instit_edge.train.encode import encode_text
    from instit_edge.train.lookup_heads import _ONE_ID, InstanceRows, lookup_positions

    tok = model_and_processor[1].tokenizer
    rows = InstanceRows(world, 8)
    gt = json.loads((world / "ground_truth.json").read_text())
    masks = {str((world / e["image_path"]).resolve()): world / e["mask_path"]
             for part in ("dataset", "bench") for e in gt[part]["images"].values()}
    samples = [s for s in bench_samples(world, text_letter=True) if s.kind == "image-mc"] + lookup_samples(world)[:60]
    seen = skipped = 0
    for s in samples:
        e = encode_text(s, tok, "vicuna_v1")
        p = lookup_positions(s, e.input_ids, tok, "vicuna_v1", rows)
        q, a = s.turns[0]
        named = "color of [" in q or "shape of [" in q or "Where is [" in q
        if p is None:
            assert not named or not rows.masks, q
            skipped += 1
            continue
        seen += 1
        mk = _ONE_ID.search(q)
        k = mk.group("k") or mk.group("kp")
        assert tok.decode([e.input_ids[p.id_token]]).strip().startswith(k[0])
        assert a.startswith(tok.decode([e.input_ids[p.answer_pred + 1]]).strip())  # it predicts the answer
        assert p.answer_token == (None if a.startswith("[") else e.input_ids[p.answer_pred + 1])
        assert e.input_ids[p.image_pos] == tok.convert_tokens_to_ids("<image>")
        m = np.asarray(Image.open(masks[str(Path(s.image).resolve())]))
        for r in p.rows:  # every supervised patch is at least a quarter the instance
            patch = m[(r // 8) * 16:(r // 8 + 1) * 16, (r % 8) * 16:(r % 8 + 1) * 16]
            assert (patch == int(k)).mean() >= 0.25 or len(p.rows) == 1
    assert seen > 50 and skipped > 0  # extreme / relation / count questions name no single instance


def test_oe_word_moves_the_open_ended_lookup_to_the_attributes_word(world, model_and_processor):
    """Stage 4 (``oe_word``): an open-ended answer ``[2] is orange.`` / ``[3] is at the top-right of the image.``
    is supervised where its attribute's word is predicted, with that word read among the attribute's words;
    without it, where the answer starts (``[``) and nothing read. The same ID token and rows either way."""
    from instit_edge.drawing import COLORS, SHAPES
    from instit_edge.train.default_model import bench_samples
    from instit_edge.train.encode import encode_text
    from instit_edge.train.lookup_heads import InstanceRows, attribute_candidates, lookup_positions

    tok = model_and_processor[1].tokenizer
    rows = InstanceRows(world, 8)
    seen = set()
    for s in bench_samples(world, text_letter=True):
        if s.kind != "image-oe":
            continue
        e = encode_text(s, tok, "vicuna_v1")
        old = lookup_positions(s, e.input_ids, tok, "vicuna_v1", rows)
        new = lookup_positions(s, e.input_ids, tok, "vicuna_v1", rows, oe_word=True)
        q, a = s.turns[0]
        if old is None:
            assert new is None
            continue
        cat = "color" if "color of" in q else "shape" if "shape of" in q else "position"
        word = a.split(" is ", 1)[1].removeprefix("a ").removeprefix("at the ").split()[0].rstrip(".")
        word = word.split("-")[0] if cat == "position" else word
        assert word in (list(COLORS) if cat == "color" else SHAPES if cat == "shape" else
                        ("top", "middle", "bottom", "center")), a
        assert tok.decode([e.input_ids[old.answer_pred + 1]]).strip() == "[" and old.answer_token is None
        assert tok.decode([e.input_ids[new.answer_pred + 1]]).strip() == word  # it predicts the word
        assert new.answer_token == e.input_ids[new.answer_pred + 1]
        assert new.candidates == attribute_candidates(tok, cat) and new.answer_token in new.candidates
        assert (new.id_token, new.image_pos, new.rows) == (old.id_token, old.image_pos, old.rows)
        seen.add(cat)
    assert seen == {"color", "shape", "position"}, seen


def test_lookup_head_loss_trains_the_heads_to_attend_where_told(rng):
    """The two attention terms train a 4-layer Llama's heads onto the ID token and the instance's rows, the
    logit lens makes layer LP's output at the answer position read the answer's first token, and the head read
    makes head HP's own output pick it among the candidate words."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from instit_edge.train.lookup_heads import HP, HQ, LP, LQ, HeadOutput, LookupPositions, lookup_head_loss

    torch.manual_seed(int(rng.integers(1000)))
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                         num_attention_heads=2, num_key_value_heads=2, attn_implementation="eager"))
    n_rows, image_pos = 16, 3
    ids = torch.tensor(rng.integers(5, 64, 30))
    emb = model.get_input_embeddings()
    target = sorted(rng.choice(n_rows, 3, replace=False).tolist())
    cands = tuple(int(t) for t in rng.choice(np.arange(5, 64), 4, replace=False))
    answer = cands[int(rng.integers(4))]
    p = LookupPositions(id_token=20, answer_pred=28, image_pos=image_pos, rows=target, answer_token=answer,
                        candidates=cands)
    heads = HeadOutput(model.model)
    shift = n_rows - 1
    img = torch.randn(n_rows, 64) * 0.1
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        x = emb(ids)
        x = torch.cat([x[:image_pos], img, x[image_pos + 1:]])[None]
        out = model(inputs_embeds=x, output_attentions=True, output_hidden_states=True)
        loss = lookup_head_loss(out, [p], [shift], model.lm_head, model.model.norm, heads.value())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert np.isfinite(losses).all() and losses[-1] < 0.3 * losses[0]
    with torch.no_grad():
        x = torch.cat([emb(ids)[:image_pos], img, emb(ids)[image_pos + 1:]])[None]
        out = model(inputs_embeds=x, output_attentions=True, output_hidden_states=True)
        lens = model.lm_head(model.model.norm(out.hidden_states[LP + 1]))[0, p.answer_pred + shift]
        read = model.lm_head(model.model.norm(heads.value()))[0, p.answer_pred + shift, list(cands)]
    heads.close()
    q = p.answer_pred + shift
    assert int(lens.argmax()) == answer
    assert cands[int(read.argmax())] == answer
    assert float(out.attentions[LQ][0, HQ, q, p.id_token + shift]) > 0.5
    assert float(out.attentions[LP][0, HP, q, [image_pos + r for r in target]].sum()) > 0.5
    assert lookup_head_loss(out, [None], [0]) is None


def test_multi_positions_point_at_both_instances_and_the_deciding_token(world, model_and_processor):
    """Stage 2e's supervision (lookup_heads.multi_positions) on the world's official relation, extreme and count
    MC prompts: the IDs' tokens are the question's ``[a]`` / ``[b]`` digits, the rows are the patches of ``a`` /
    ``b`` / the winner / the counted instances (checked against the masks; as many counted as the right option
    says), and the supervised position predicts the first answer token where the right option's text differs
    from every other option's (each option rendered and tokenized)."""
    import json

    from PIL import Image

    from instit_edge.prompting import IMAGE_TOKEN, render_chat
    from instit_edge.train.default_model import bench_samples
    from instit_edge.train.encode import encode_text
    from instit_edge.train.letter_heads import _OPTION, letter_answer
    from instit_edge.train.lookup_heads import _COUNT, _EXTREME, _RELATION, InstanceRows, lookup_positions

    tok = model_and_processor[1].tokenizer
    rows = InstanceRows(world, 8)
    gt = json.loads((world / "ground_truth.json").read_text())
    masks = {str((world / e["image_path"]).resolve()): world / e["mask_path"]
             for part in ("dataset", "bench") for e in gt[part]["images"].values()}

    def covers(path, r, k):
        m = np.asarray(Image.open(masks[str(Path(path).resolve())]))
        return (m[(r // 8) * 16:(r // 8 + 1) * 16, (r % 8) * 16:(r % 8 + 1) * 16] == k).mean()

    seen = {"relation": 0, "extreme": 0, "count": 0}
    for s in bench_samples(world, text_letter=True):
        if s.kind != "image-mc":
            continue
        e = encode_text(s, tok, "vicuna_v1")
        q, a = s.turns[0]
        assert lookup_positions(s, e.input_ids, tok, "vicuna_v1", rows, multi=False) is None or \
            not (_RELATION.search(q) or _EXTREME.search(q) or _COUNT.search(q))  # off unless asked: 2d unchanged
        p = lookup_positions(s, e.input_ids, tok, "vicuna_v1", rows, multi=True)
        rel, ext, cnt = _RELATION.search(q), _EXTREME.search(q), _COUNT.search(q)
        if not (rel or ext or cnt):
            continue
        counted = rows.counted(s.image, q)
        if cnt:  # the counted instances are as many as the right option says; a count of 0 is left alone
            assert len(counted) == int(a.split()[0]), (q, a, counted)
            if not counted:
                assert p is None
                continue
        assert p is not None, q
        opts = dict(_OPTION.findall(q + "\n"))
        right = a.rsplit(" ", 1)[1]
        at = p.answer_pred + 1
        shared = 0  # the options still tied with the right one just before the deciding token
        for k, v in opts.items():  # the deciding token: there the right one differs from every other option
            if k == right:
                continue
            other = tok(render_chat("vicuna_v1", [("user", f"{IMAGE_TOKEN}\n{q}"), ("assistant", letter_answer(v, k))],
                                    add_generation_prompt=False))["input_ids"]
            tied = other[:at] == e.input_ids[:at]
            assert not tied or len(other) <= at or other[at] != e.input_ids[at], (q, v)
            shared += tied
        text = render_chat("vicuna_v1", [("user", f"{IMAGE_TOKEN}\n{q}"), ("assistant", a)], add_generation_prompt=False)
        enc = tok(text, return_offsets_mapping=True)
        first = next(i for i, (x, y) in enumerate(enc["offset_mapping"]) if x <= text.rindex(a) < y)
        assert at >= first and (shared > 0 or at == first), q  # no earlier token decides: some option is tied
        if rel:
            seen["relation"] += 1
            assert tok.decode([e.input_ids[p.id_token]]).strip().startswith(rel.group("a")[0])
            assert tok.decode([e.input_ids[p.id_token_b]]).strip().startswith(rel.group("b")[0])
            assert p.id_token < p.id_token_b and p.answer_token is None
            for rs, k in ((p.rows, int(rel.group("a"))), (p.rows_b, int(rel.group("b")))):
                assert all(covers(s.image, r, k) >= 0.25 for r in rs) or len(rs) == 1
        elif cnt:
            seen["count"] += 1
            assert p.id_token is None and p.answer_token is None
            assert set(p.rows) == {r for k in counted for r in rows.rows(s.image, k)}
            assert all(max(covers(s.image, r, k) for k in counted) > 0 for r in p.rows)
        else:
            seen["extreme"] += 1
            win = int(opts[right].strip("[]"))
            assert p.id_token is None and p.answer_token == e.input_ids[at]
            assert tok.decode([p.answer_token]).strip().strip("[]").startswith(str(win)[0])
            assert all(covers(s.image, r, win) >= 0.25 for r in p.rows) or len(p.rows) == 1
    assert min(seen.values()) > 0, seen


def test_relation_terms_train_the_second_heads_onto_the_second_instance(rng):
    """Stage 2e's relation terms: head HQB of layer LQ learns to attend to the second ID, head HPB of layer LP
    to the second instance's rows, while HQ / HP take the first; an extreme (no ID asked) adds no ID term."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from instit_edge.train.lookup_heads import HP, HPB, HQ, HQB, LP, LQ, LookupPositions, lookup_head_loss

    torch.manual_seed(int(rng.integers(1000)))
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                         num_attention_heads=4, num_key_value_heads=4, attn_implementation="eager"))
    n_rows, image_pos = 16, 3
    ids = torch.tensor(rng.integers(5, 64, 30))
    a_rows, b_rows = (sorted(x.tolist()) for x in np.split(rng.choice(n_rows, 4, replace=False), 2))
    p = LookupPositions(id_token=12, answer_pred=28, image_pos=image_pos, rows=a_rows, answer_token=None,
                        id_token_b=20, rows_b=tuple(b_rows))
    emb = model.get_input_embeddings()
    img = torch.randn(n_rows, 64) * 0.1
    shift = n_rows - 1
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def forward():
        x = emb(ids)
        return model(inputs_embeds=torch.cat([x[:image_pos], img, x[image_pos + 1:]])[None], output_attentions=True,
                     output_hidden_states=True)

    for _ in range(60):
        loss = lookup_head_loss(forward(), [p], [shift], model.lm_head, model.model.norm)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = forward()
    q = p.answer_pred + shift
    assert float(out.attentions[LQ][0, HQ, q, p.id_token + shift]) > 0.5
    assert float(out.attentions[LQ][0, HQB, q, p.id_token_b + shift]) > 0.5
    assert float(out.attentions[LP][0, HP, q, [image_pos + r for r in a_rows]].sum()) > 0.5
    assert float(out.attentions[LP][0, HPB, q, [image_pos + r for r in b_rows]].sum()) > 0.5
    ext = LookupPositions(id_token=None, answer_pred=28, image_pos=image_pos, rows=a_rows, answer_token=7)
    alone = lookup_head_loss(out, [ext], [shift])  # the rows term only
    assert torch.isclose(alone, -torch.log(out.attentions[LP][0, HP, q, [image_pos + r for r in a_rows]].sum() + 1e-6))


def test_stage_2f_pool_repeats_the_questions_with_several_word_options(world):
    """Stage 2f's pool: 2e's, plus every position, relation and video MC question twice more; a colour or shape
    question (one-word options) as often as in 2e."""
    from collections import Counter

    from instit_edge.train.default_model import SPAN_REPEAT, _multi_pool, bench_samples

    qa_tl = bench_samples(world, text_letter=True)  # (stage_samples holds 96 MC out: all of this small world's)
    pool_2e, _, _ = _multi_pool(qa_tl)
    pool_2f, _, _ = _multi_pool(qa_tl, option_spans=True)
    n_2e, n_2f = Counter(map(id, pool_2e)), Counter(map(id, pool_2f))
    seen = Counter()
    for x in qa_tl:
        q = x.turns[0][0]
        several = x.kind == "video-mc" or (x.kind == "image-mc" and ("Where is [" in q or "Complete the sentence" in q))
        assert n_2f[id(x)] - n_2e[id(x)] == (SPAN_REPEAT - 1 if several else 0), q[-200:]
        seen[(x.kind, several)] += 1
    assert seen[("image-mc", True)] and seen[("video-mc", True)] and seen[("image-mc", False)], seen


def test_later_stages_continue_a_trained_model_and_refuse_one_they_cannot(world, tmp_path, monkeypatch):
    """``make train-default --from-model``: stages 2e-4 run from a model this recipe trained up to 2d (the
    committed weights, with their card's later records removed; stage 3 off), 2f-4 from one trained up to 2e, 2g
    and 4 from one trained up to 2f, only 4 from one whose 2g was off; the card says where the earlier stages came
    from; the LLM changes, the tower does not; stage 3 (the code refresh) changes the tower and not the LLM, and
    stage 4 after it the LLM and not the tower, and stage 5 (when asked) gives the model frame labels, which a
    run without it leaves off; a model that has stage 5 already, or has no card, is refused with what to do."""
    import json
    import shutil

    import torch
    from safetensors.torch import load_file

    from instit_edge.errors import InstitError
    from instit_edge.train import default_model
    from instit_edge.train.default_model import build_default

    monkeypatch.setattr(default_model, "REFRESH_WORLDS", 1)  # stage 3's extra world: a tiny one
    monkeypatch.setattr(default_model, "REFRESH_IMAGES", 3)
    monkeypatch.setattr(default_model, "REFRESH_VIDEOS", 1)

    def without(src, dst, *stages):
        shutil.copytree(src, dst)
        card = json.loads((dst / "training.json").read_text())
        for k in stages:
            card.pop(k, None)
        (dst / "training.json").write_text(json.dumps(card))
        return card

    src = tmp_path / "trained"
    card = without(DEFAULT, src, "multi_heads", "span_heads", "count_heads", "oe_heads", "code_refresh",
                   "video_heads")
    work = tmp_path / "work"
    work.mkdir()
    (work / "world").symlink_to(world)  # the fixture's small world stands in for the training world
    out = tmp_path / "out"
    got = build_default(out, multi_steps=2, span_steps=1, count_steps=1, oe_steps=1, refresh_steps=0, work=work,
                        from_model=src, log=lambda *_: None, video_steps=0)
    assert got["complete"] and got["multi_heads"]["steps"] == 2 and got["span_heads"]["steps"] == 1
    assert got["count_heads"]["steps"] == 1 and got["oe_heads"]["steps"] == 1
    assert json.loads((out / "config.json").read_text())["video_frame_labels"] is False  # stage 5 off: no labels
    assert got["stages_1_to_2d_from"]["path"] == str(src)
    assert got["lookup_heads"]["steps"] == card["lookup_heads"]["steps"]  # the stages before are the source's
    before, after = load_file(src / "model.safetensors"), load_file(out / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in after if "language_model" in k)
    assert all(torch.equal(before[k], after[k]) for k in after if "vision_tower" in k)  # the tower stays frozen

    without(out, tmp_path / "to-3", "code_refresh", "oe_heads", "video_heads")  # up to 2g: stage 3 alone (4 off)
    fresh = build_default(tmp_path / "out-3", refresh_steps=2, oe_steps=0, work=work, from_model=tmp_path / "to-3",
                          log=lambda *_: None, video_steps=0)
    assert fresh["complete"] and fresh["code_refresh"]["steps"] == 2 and fresh["oe_heads"]["steps"] == 0
    assert fresh["stages_1_to_2g_from"]["path"] == str(tmp_path / "to-3")
    assert (work / "refresh-world-1" / "ground_truth.json").is_file()
    refreshed = load_file(tmp_path / "out-3" / "model.safetensors")
    assert any(not torch.equal(after[k], refreshed[k]) for k in after if "vision_tower" in k)
    assert all(torch.equal(after[k], refreshed[k]) for k in after if "vision_tower" not in k
               and "linear_1" not in k)  # the LLM (and the readout baked from its embeddings) is untouched
    (work / "oe-state.pt").unlink()
    without(tmp_path / "out-3", tmp_path / "to-4", "oe_heads", "video_heads")  # up to 3: stages 4 and 5 run
    last = build_default(tmp_path / "out-4", refresh_steps=5, oe_steps=1, work=work, from_model=tmp_path / "to-4",
                         log=lambda *_: None, video_steps=1)  # stage 3 comes from the source's card, not run again
    assert last["complete"] and last["oe_heads"]["steps"] == 1 and last["video_heads"]["steps"] == 1
    assert json.loads((tmp_path / "out-4" / "config.json").read_text())["video_frame_labels"] is True
    assert {k: v for k, v in last["code_refresh"].items() if k != "losses"} == fresh["code_refresh"]
    assert last["stages_1_to_3_from"]["path"] == str(tmp_path / "to-4")
    final = load_file(tmp_path / "out-4" / "model.safetensors")
    assert all(torch.equal(refreshed[k], final[k]) for k in final if "vision_tower" in k or "linear_1" in k)
    assert any(not torch.equal(refreshed[k], final[k]) for k in final if "language_model" in k)
    with pytest.raises(InstitError, match="stage 5 already"):
        build_default(tmp_path / "again", work=work, from_model=tmp_path / "out-4", log=lambda *_: None)

    card_2e = without(out, tmp_path / "to-2e", "span_heads", "count_heads", "oe_heads", "video_heads")  # up to 2e: 2f-4 run
    for state in ("span", "count", "oe"):
        (work / f"{state}-state.pt").unlink()
    got = build_default(tmp_path / "out-2f", span_steps=1, count_steps=1, oe_steps=1, refresh_steps=0, work=work,
                        from_model=tmp_path / "to-2e", log=lambda *_: None, video_steps=0)
    assert got["complete"] and got["multi_heads"] == card_2e["multi_heads"] and got["span_heads"]["steps"] == 1
    assert got["stages_1_to_2e_from"]["path"] == str(tmp_path / "to-2e")
    assert got["stages_1_to_2e_from"]["stages_1_to_2d_from"]["path"] == str(src)  # the chain of provenance

    card_2f = without(tmp_path / "out-2f", tmp_path / "to-2f", "count_heads", "oe_heads", "video_heads")  # up to 2f: 2g, 4 run
    (work / "count-state.pt").unlink()
    (work / "oe-state.pt").unlink()
    got = build_default(tmp_path / "out-2g", count_steps=1, oe_steps=1, refresh_steps=0, work=work,
                        from_model=tmp_path / "to-2f", log=lambda *_: None, video_steps=0)
    assert got["complete"] and got["span_heads"] == card_2f["span_heads"] and got["count_heads"]["steps"] == 1
    assert got["stages_1_to_2f_from"]["path"] == str(tmp_path / "to-2f") and got["oe_heads"]["steps"] == 1

    off = without(tmp_path / "out-2g", tmp_path / "2g-off", "oe_heads", "video_heads")  # 2g and 3 off there: only 4 runs
    off["count_heads"] = {"steps": 0, "target_steps": 0, "curve": []}
    (tmp_path / "2g-off" / "training.json").write_text(json.dumps(off))
    (work / "oe-state.pt").unlink()
    got = build_default(tmp_path / "out-4-only", count_steps=5, oe_steps=1, refresh_steps=5, work=work,
                        from_model=tmp_path / "2g-off", video_steps=0,
                        log=lambda *_: None)  # a stage off in the source stays off
    assert got["complete"] and got["count_heads"]["steps"] == 0 and got["oe_heads"]["steps"] == 1
    assert got["code_refresh"]["steps"] == 0 and got["stages_1_to_3_from"]["path"] == str(tmp_path / "2g-off")
    half = without(tmp_path / "out-2g", tmp_path / "half-2f", "count_heads", "oe_heads", "video_heads")
    half["span_heads"]["steps"] = 0.5 * half["span_heads"]["target_steps"]
    (tmp_path / "half-2f" / "training.json").write_text(json.dumps(half))
    with pytest.raises(InstitError, match="stage 2f is not complete"):
        build_default(tmp_path / "again", work=work, from_model=tmp_path / "half-2f", log=lambda *_: None)

    (src / "training.json").unlink()
    with pytest.raises(InstitError, match="no training.json"):
        build_default(tmp_path / "again", multi_steps=2, work=work, from_model=src, log=lambda *_: None)


def test_train_default_refuses_a_bad_from_model_in_one_line(tmp_path):
    """``make train-default TRAIN_ARGS="--from-model DIR"`` with a folder that is no trained model: one line on
    stderr that says what to give, exit code 2, and nothing built (checked before the world)."""
    import subprocess
    import sys

    (tmp_path / "not-a-model").mkdir()
    r = subprocess.run([sys.executable, "-m", "instit_edge.train.default_model", "--from-model",
                        str(tmp_path / "not-a-model"), "--out", str(tmp_path / "out"), "--work", str(tmp_path / "w")],
                       capture_output=True, text=True, timeout=300)
    err = [line for line in r.stderr.splitlines() if line.strip() and "Warning" not in line and "W1" not in line[:3]]
    assert r.returncode == 2, r.stderr
    assert len(err) == 1 and err[0].startswith("error:") and "training.json" in err[0], r.stderr
    assert not (tmp_path / "w" / "world").exists() and not (tmp_path / "out").exists()


def test_train_default_refuses_a_negative_step_count_in_one_line(tmp_path):
    """``make train-default TRAIN_ARGS="--count-steps -1"`` would skip a stage without a word: it is refused with
    exit code 2 before anything is built."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "instit_edge.train.default_model", "--out", str(tmp_path / "m"),
                        "--count-steps", "-1", "--batch", "0"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert "--count-steps, --batch must be >= 0" in r.stderr
    assert not (tmp_path / "m").exists()
