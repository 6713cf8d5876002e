"""The supervision of the MC letter step (train/letter_heads.py): positions on a real rendered sample, and a
loss that trains a 4-layer Llama's heads to attend where told."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def tok(tiny_models):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_models("llava-llama-clip")))


def _sample(rng):
    from instit_edge.prompting import build_mc_prompt
    from instit_edge.train.instructions import Sample
    from instit_edge.train.letter_heads import letter_answer

    words = ["red", "top-left", "to the left of", "[3]", "white", "<2>", "it does not move"]
    opts = dict(zip("ABCD", rng.choice(words, 4, replace=False).tolist()))
    right = "ABCD"[int(rng.integers(4))]
    prompt = build_mc_prompt("What is the color of [2]?", opts, "image")
    return Sample([(prompt, letter_answer(opts[right], right))], image="x.png"), opts, right


def test_positions_point_at_the_letters_and_texts(tok, rng):
    from instit_edge.train.encode import encode_text
    from instit_edge.train.letter_heads import letter_positions

    for _ in range(5):
        s, opts, right = _sample(rng)
        enc = encode_text(s, tok, "vicuna_v1")
        p = letter_positions(s, enc.input_ids, tok, "vicuna_v1")
        assert p is not None and p.answer == right
        for k, v in opts.items():
            assert tok.decode([enc.input_ids[p.letter[k]]]).strip() == k
            assert v.endswith(tok.decode([enc.input_ids[p.last[k]]]).strip())
            assert p.letter[k] < p.last[k] < p.answer_last
            span = p.spans[k] + (p.last[k],) if p.spans[k][-1] != p.last[k] else p.spans[k]
            assert tok.decode([enc.input_ids[t] for t in span]).strip() == v  # the text but its last token
            assert p.spans[k][-1] == p.last[k] - 1 or p.spans[k] == (p.last[k],)
        span = p.answer_span + (p.answer_last,) if p.answer_span[-1] != p.answer_last else p.answer_span
        assert tok.decode([enc.input_ids[t] for t in span]).strip() == opts[right]
        assert tok.decode([enc.input_ids[p.answer_last + 1]]).strip() == right  # it predicts the letter
        assert tok.decode(enc.input_ids[p.answer_last - 12: p.answer_last + 1]).strip().endswith(opts[right])
    plain = type(s)([(s.turns[0][0], right)], image="x.png")  # a letter-only answer is not supervised
    assert letter_positions(plain, encode_text(plain, tok, "vicuna_v1").input_ids, tok, "vicuna_v1") is None


def test_focus_keeps_what_tells_twin_options_apart(tok):
    """Stage 4's layer-0 term reads, for an option that ends like another (its twin), only the tokens the twin
    lacks (``top`` of ``top-right`` beside ``middle-right``, ``left`` of ``to the left of`` beside ``to the right
    of``); an option with no twin keeps its whole span."""
    from instit_edge.prompting import build_mc_prompt
    from instit_edge.train.encode import encode_text
    from instit_edge.train.instructions import Sample
    from instit_edge.train.letter_heads import letter_answer, letter_positions

    def focus_of(opts, right):
        s = Sample([(build_mc_prompt("Where is [2]?", opts, "image"), letter_answer(opts[right], right))],
                   image="x.png")
        ids = encode_text(s, tok, "vicuna_v1").input_ids
        p = letter_positions(s, ids, tok, "vicuna_v1")
        words = {k: tok.decode([ids[t] for t in p.focus[k]]).strip() for k in "ABCD"}
        for k in "ABCD":
            assert set(p.focus[k]) <= set(p.spans[k]) | {p.last[k]}
        return words, tok.decode([ids[t] for t in p.answer_focus]).strip(), p

    words, answer, _ = focus_of({"A": "top-right", "B": "middle-right", "C": "to the left of",
                                 "D": "to the right of"}, "B")
    assert words["A"].startswith("top") and "middle" not in words["A"] and "right" not in words["A"], words
    assert words["B"].startswith("middle") and "right" not in words["B"], words
    assert "left" in words["C"] and not words["C"].startswith("to"), words
    assert "right" in words["D"] and not words["D"].startswith("to"), words
    assert answer == words["B"]
    _, _, p = focus_of({"A": "red", "B": "top-left", "C": "white", "D": "to the left of"}, "D")
    assert p.focus == p.spans and p.answer_focus == p.answer_span  # no two options end alike


def test_loss_trains_the_heads_to_attend_where_told(tok, rng):
    from transformers import LlamaConfig, LlamaForCausalLM

    from instit_edge.train.encode import encode_text
    from instit_edge.train.letter_heads import H1, H2, L1, L2, letter_head_loss, letter_positions

    torch.manual_seed(int(rng.integers(1000)))
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=2,
                                         attn_implementation="eager"))
    s, _, _ = _sample(rng)
    text = type(s)(s.turns)  # text only: no image rows, shift 0
    enc = encode_text(text, tok, "vicuna_v1")
    p = letter_positions(text, enc.input_ids, tok, "vicuna_v1")
    ids = torch.tensor([enc.input_ids])
    letter_ids = {x: tok.encode(" " + x, add_special_tokens=False)[-1] for x in "ABCD"}
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        out = model(input_ids=ids, output_attentions=True, output_hidden_states=True)
        loss = letter_head_loss(out, [p], [0], model.lm_head, model.model.norm, letter_ids)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert np.isfinite(losses).all() and losses[-1] < 0.5 * losses[0]
    with torch.no_grad():
        out = model(input_ids=ids, output_attentions=True)
    a1, a2 = out.attentions[L1][0, H1], out.attentions[L2][0, H2]
    assert float(a1[p.last["A"], p.letter["A"]]) > 0.5  # the option's text attends to its letter
    assert float(a2[p.answer_last, p.last[p.answer]]) > 0.5  # the answer attends to the right option
    assert letter_head_loss(out, [None], [0], model.lm_head, model.model.norm, letter_ids) is None


@pytest.mark.parametrize("first_layer", [False, True], ids=["2f", "stage4"])
def test_span_term_spreads_a_head_over_the_whole_option(tok, rng, first_layer):
    """Stage 2f's term: head HS of layer LS, at an option's (and the answer's) last text token, covers every
    token of that text evenly, so ``bottom-right`` and ``middle-right`` no longer look alike there. Stage 4
    (``first_layer_span``) puts the same term on head H0 of layer L0 too; without it that head is left alone."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from instit_edge.train.encode import encode_text
    from instit_edge.train.letter_heads import H0, HS, L0, LS, letter_head_loss, letter_positions

    torch.manual_seed(int(rng.integers(1000)))
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                                         attn_implementation="eager"))
    s, opts, right = _sample(rng)
    text = type(s)(s.turns)
    enc = encode_text(text, tok, "vicuna_v1")
    p = letter_positions(text, enc.input_ids, tok, "vicuna_v1")
    ids = torch.tensor([enc.input_ids])
    letter_ids = {x: tok.encode(" " + x, add_special_tokens=False)[-1] for x in "ABCD"}

    def covered(out, layer=LS, head=HS):
        a = out.attentions[layer][0, head]
        return [float(a[q, list(span)].sum()) for q, span in
                [(p.last[k], p.spans[k]) for k in "ABCD"] + [(p.answer_last, p.answer_span)]]

    def loss_of(out, **kw):
        return letter_head_loss(out, [p], [0], model.lm_head, model.model.norm, letter_ids, **kw)

    out = model(input_ids=ids, output_attentions=True, output_hidden_states=True)
    before, before_0 = covered(out), covered(out, L0, H0)
    without = float(loss_of(out))
    with_spans = float(loss_of(out, spans=True))
    assert with_spans != without
    assert float(loss_of(out, first_layer_span=True)) == without  # it needs spans
    assert float(loss_of(out, spans=True, first_layer_span=True)) != with_spans
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        out = model(input_ids=ids, output_attentions=True, output_hidden_states=True)
        loss = loss_of(out, spans=True, first_layer_span=first_layer)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = model(input_ids=ids, output_attentions=True)
    after, after_0 = covered(out), covered(out, L0, H0)
    assert min(after) > 0.8 > max(before), (before, after)
    if first_layer:
        assert min(after_0) > 0.8 > max(before_0), (before_0, after_0)
    else:
        assert max(after_0) < 0.8, after_0
    a = out.attentions[LS][0, HS]
    k = max("ABCD", key=lambda x: len(p.spans[x]))  # the longest option: no token of it left out
    assert min(float(a[p.last[k], t]) for t in p.spans[k]) > 0.4 / len(p.spans[k])


def test_span_read_trains_the_span_heads_own_output_to_name_the_text(tok, rng, monkeypatch):
    """The span read (an experiment, off by default: ``SPAN_READ_WEIGHT`` 0): with it, head HS's own output,
    through the final norm and ``lm_head``, comes to name the other tokens of a several-token text at its last
    token; the same training from the same weights without it does not; weight 0 leaves the loss as it was."""
    import copy

    from transformers import LlamaConfig, LlamaForCausalLM

    from instit_edge.train import letter_heads
    from instit_edge.train.encode import encode_text
    from instit_edge.train.letter_heads import HS, LS, letter_head_loss, letter_positions
    from instit_edge.train.lookup_heads import HeadOutput

    torch.manual_seed(int(rng.integers(1000)))
    start = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                                         attn_implementation="eager"))
    while True:  # a sample with a several-token option
        s, opts, right = _sample(rng)
        text = type(s)(s.turns)
        enc = encode_text(text, tok, "vicuna_v1")
        p = letter_positions(text, enc.input_ids, tok, "vicuna_v1")
        several = [k for k in "ABCD" if p.last[k] not in p.spans[k]]
        if several:
            break
    for k in "ABCD":
        assert p.span_ids[k] == tuple(enc.input_ids[t] for t in p.spans[k])
    ids = torch.tensor([enc.input_ids])
    letter_ids = {x: tok.encode(" " + x, add_special_tokens=False)[-1] for x in "ABCD"}

    def trained(weight):  # the share of head HS's output lens on each several-token option's other tokens
        model = copy.deepcopy(start)
        read = HeadOutput(model.model, LS, HS)
        monkeypatch.setattr(letter_heads, "SPAN_READ_WEIGHT", weight)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(80):
            out = model(input_ids=ids, output_attentions=True, output_hidden_states=True)
            loss = letter_head_loss(out, [p], [0], model.lm_head, model.model.norm, letter_ids, True, read.value())
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            model(input_ids=ids)
            logp = torch.log_softmax(model.lm_head(model.model.norm(read.value()[0])).float(), -1)
        read.close()
        return [float(logp[p.last[k], list(p.span_ids[k])].exp().sum()) for k in several]

    with_read, without = trained(1.0), trained(0.0)
    assert min(with_read) > 0.15 and min(with_read) > 3 * max(without), (with_read, without)

    out = start(input_ids=ids, output_attentions=True, output_hidden_states=True)
    read = HeadOutput(start.model, LS, HS)
    out = start(input_ids=ids, output_attentions=True, output_hidden_states=True)
    monkeypatch.setattr(letter_heads, "SPAN_READ_WEIGHT", 0.0)
    off = float(letter_head_loss(out, [p], [0], start.lm_head, start.model.norm, letter_ids, True, read.value()))
    assert off == float(letter_head_loss(out, [p], [0], start.lm_head, start.model.norm, letter_ids, True))
    monkeypatch.setattr(letter_heads, "SPAN_READ_WEIGHT", 1.0)
    assert float(letter_head_loss(out, [p], [0], start.lm_head, start.model.norm, letter_ids, True,
                                  read.value())) > off
    read.close()
