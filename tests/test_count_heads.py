"""Stage 2g's supervision (instit_edge.train.count_heads): one mark per instance, and a count head over the marks.

References: the synthetic world's masks (read here pixel by pixel, not through InstanceRows), its official count
questions and their right options, and the committed default model's real tokenizer; the loss is checked by
training a 4-layer Llama on it, not by its value.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import default_world

torch = pytest.importorskip("torch")



@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return default_world(tmp_path_factory, "count", seed=11, images=12, videos=1)


def test_count_positions_mark_each_instance_once_and_point_at_the_counted(world, tok):
    """Every image row on an instance (its patch centre, as the code rows say) points at the earlier rows of that
    instance, the first one at none; a count question's supervised position predicts the number's token, and
    the count head's targets are the first rows of exactly as many instances as the right option says, and the
    question hop's target is the word for what is counted."""
    from PIL import Image

    from instit_edge.train.count_heads import count_positions, number_tokens
    from instit_edge.train.default_model import bench_samples
    from instit_edge.train.encode import encode_text
    from instit_edge.train.lookup_heads import _COUNT, InstanceRows

    rows = InstanceRows(world, 8)
    gt = json.loads((world / "ground_truth.json").read_text())
    masks = {str((world / e["image_path"]).resolve()): world / e["mask_path"]
             for part in ("dataset", "bench") for e in gt[part]["images"].values()}
    counts = 0
    for s in bench_samples(world, text_letter=True):
        if s.kind != "image-mc":
            continue
        e = encode_text(s, tok, "vicuna_v1")
        p = count_positions(s, e.input_ids, tok, "vicuna_v1", rows)
        m = np.asarray(Image.open(masks[str(Path(s.image).resolve())]))
        centre = [int(m[(r // 8) * 16 + 8, (r % 8) * 16 + 8]) for r in range(64)]
        assert p.rows == tuple(r for r in range(64) if centre[r])
        for r, earlier in zip(p.rows, p.earlier):
            assert earlier == tuple(x for x in range(r) if centre[x] == centre[r])
        q, a = s.turns[0]
        if not _COUNT.search(q):
            assert p.answer_pred is None and not p.firsts
            continue
        n = int(a.split()[0])
        counted = rows.counted(s.image, q)
        assert len(counted) == n
        if any(k not in centre for k in counted):  # under no patch centre: nothing to count it by
            assert p.answer_pred is None
            continue
        counts += 1
        assert e.input_ids[p.answer_pred + 1] == p.answer_token == number_tokens(tok)[n]
        assert tok.decode([p.answer_token]).strip() == str(n)
        assert p.firsts == tuple(centre.index(k) for k in sorted(counted))
        assert tok.decode([e.input_ids[p.what_token]]).strip() == _COUNT.search(q).group("what").split()[0]
    assert counts >= 3


def test_count_head_learns_the_sink_share_and_the_marks(tok):
    """Trained on the terms alone, a 4-layer Llama's head HC spreads 1 / (n + 1) over the sink and each counted
    instance's first row, head HF marks each instance's first row (the sink) apart from its others, and the lens
    after layer LC names the number: for counts of 0, 1 and 2 in one batch."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from instit_edge.train.count_heads import HC, HF, LC, LF, CountPositions, count_head_loss, number_tokens
    from instit_edge.train.lookup_heads import HeadOutput

    rng = np.random.default_rng(int(np.random.SeedSequence().entropy % 2**32))
    torch.manual_seed(int(rng.integers(1 << 30)))
    model = LlamaForCausalLM(LlamaConfig(vocab_size=1024, hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                                         attn_implementation="eager"))
    image_pos, length = 6, 40
    numbers = number_tokens(tok)
    batch, positions = [], []
    for n in (0, 1, 2):
        ids = rng.integers(100, 1000, length)
        centre = np.zeros(16, int)  # a 4 x 4 "image" of three instances
        centre[[1, 2, 5]], centre[[8, 9]], centre[[14]] = 1, 2, 3
        ids[image_pos:image_pos + 16] = 50 + centre  # a row's token says which instance covers it
        rows = tuple(int(r) for r in np.nonzero(centre)[0])
        earlier = tuple(tuple(x for x in rows if x < r and centre[x] == centre[r]) for r in rows)
        firsts = {0: (), 1: (8,), 2: (1, 14)}[n]
        ids[length - 2] = 950 + n  # the question's word for what is counted
        ids[length - 1] = numbers[n]
        batch.append(ids)
        positions.append(CountPositions(image_pos, rows, earlier, length - 2, firsts, numbers[n], numbers))
    x = torch.tensor(np.stack(batch))
    head = HeadOutput(model.model, LC, HC)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        out = model(input_ids=x, output_attentions=True, output_hidden_states=True)
        loss = count_head_loss(out, positions, [0, 0, 0], model.lm_head, model.model.norm, head.value())
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.close()
    with torch.no_grad():
        out = model(input_ids=x, output_attentions=True, output_hidden_states=True)
    for b, p in enumerate(positions):
        a = out.attentions[LC][b, HC, p.answer_pred]
        share = 1 / (len(p.firsts) + 1)
        assert abs(float(a[0]) - share) < 0.1, (b, float(a[0]))
        assert all(abs(float(a[image_pos + f]) - share) < 0.1 for f in p.firsts)
        lens = model.lm_head(model.model.norm(out.hidden_states[LC + 1][b, p.answer_pred]))
        assert int(lens.argmax()) == p.answer_token
        af = out.attentions[LF][b, HF]
        for r, e in zip(p.rows, p.earlier):
            target = [image_pos + t for t in e] if e else [0]
            assert float(af[image_pos + r, target].sum()) > 0.8
    assert count_head_loss(out, [None], [0]) is None


def test_count_heads_without_the_world_s_instances_is_refused_in_one_line():
    """The count head is supervised where the instances are: without ``lookup_heads`` there is nothing to aim at."""
    from instit_edge.errors import InstitError
    from instit_edge.train.default_model import train_vlm

    with pytest.raises(InstitError, match="count_heads needs lookup_heads") as e:
        train_vlm(None, None, [], [], 1, count_heads=True)
    assert "\n" not in str(e.value)
