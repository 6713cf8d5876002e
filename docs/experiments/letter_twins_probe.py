"""Why position letters fail: options that end in the same token (fifteenth session, issue 14).

On the position MC questions of a world whose right option shares its last token with exactly one other option
(``top-right`` / ``middle-right``), measured per side (``left`` / ``right``), and on the relation questions
answered ``to the left of`` / ``to the right of`` (the other is the twin; ``relation left`` / ``relation
right``; sixteenth session), on the torch weights:
- ``h2_right`` / ``h2_twin``: attention of the letter step's answer head (head H2 of layer L2,
  :mod:`instit_edge.train.letter_heads`), at the answer's last text token, on the right option's last token and on
  the other one's;
- ``span_*``: the option-span head's (HS of layer LS) mass on a text's own tokens at its last token (the answer,
  the right option, the other option);
- ``lens_*``: the logit lens after layer L2 reads the option's own letter at its last token;
- ``final``: the output picks the right letter among A-D where the letter is predicted;
- ``cos_L{n}``: cosine of the residuals at the two options' last tokens after n layers (0: the embeddings);
- ``qk_right`` / ``qk_twin``: head H2's query at the answer's last token dotted with its key at either option's
  last token (before the rotary embedding, so a rough share of the score).

    python docs/experiments/letter_twins_probe.py models/default out/world4242 [LIMIT]

Measured on the stage-4 weights, seed 4242 (37 left / 49 right questions): left h2 0.98 / 0.01, final 1.00;
right h2 0.46 / 0.53, final 0.37; every span 1.00. On 250 of the training world's own questions: right 0.52 /
0.47, left 0.98 / 0.01: the head never learned to tell the ``-right`` options apart. Why: after layer 0 the two
``-left`` texts' last tokens already differ (cos 0.75) while the two ``-right`` ones are all but equal (0.99);
after layer 2, where the span head has written each text, 0.38 against 0.63, and head H2's query-key score
separates the left twins (68 against 37) but not the right ones (67.3 against 66.7): H2 reads a layer-0
difference that only some texts get, not the span head's output. With stage 4's layer-0 term (sixteenth
session, these weights: head 3 of layer 0 over what the twins lack): left h2 0.99 / 0.00, right 0.95 / 0.03,
final 1.00 on both sides (the same term over the whole text: 0.92 / 0.06, 0.88 / 0.09, final 1.00).
Relations, seed 6464 (36 left / 29 right): whole-text term 0.51 / 0.47 and 0.47 / 0.52, final 0.50 / 0.31;
these weights 0.97 / 0.03 and 0.95 / 0.02, final 1.00 / 1.00.
"""

import collections
import sys
from pathlib import Path

import torch
from probe_forward import load_for_probe, probed

from instit_edge.train.default_model import bench_samples
from instit_edge.train.letter_heads import _OPTION, H2, HS, L2, LS, letter_positions

model, tok, rows, inst = load_for_probe(sys.argv[1], sys.argv[2])
limit = int(sys.argv[3]) if len(sys.argv) > 3 else None
samples = [s for s in bench_samples(Path(sys.argv[2]), text_letter=True)
           if s.kind == "image-mc" and ("located" in s.turns[0][0] or "Complete the sentence" in s.turns[0][0])][:limit]
RELATION = {"to the left of": "left", "to the right of": "right"}
letters = {k: tok(" " + k, add_special_tokens=False)["input_ids"][-1] for k in "ABCD"}
stats = collections.defaultdict(collections.Counter)
with torch.no_grad():
    for s, p, out, sh in probed(model, rows, samples, tok, lambda s, ids: letter_positions(s, ids, tok, "vicuna_v1")):
        opts = dict(_OPTION.findall(s.turns[0][0] + "\n"))
        if opts[p.answer] in RELATION:  # relation twins: to the left of / to the right of
            side = "relation " + RELATION[opts[p.answer]]
            twins = [k for k, v in opts.items() if k != p.answer and v in RELATION]
        else:  # position twins: top-right / middle-right
            side = opts[p.answer].split("-")[-1]
            twins = [k for k, v in opts.items() if k != p.answer and v.split("-")[-1] == side]
            if side not in ("left", "right"):
                continue
        if len(twins) != 1:
            continue
        t, c, q = twins[0], stats[side], p.answer_last + sh
        c["n"] += 1
        att = out.attentions[L2][0, H2, q]
        c["h2_right"] += float(att[p.last[p.answer] + sh])
        c["h2_twin"] += float(att[p.last[t] + sh])
        c["span_answer"] += float(out.attentions[LS][0, HS, q][[x + sh for x in p.answer_span]].sum())
        for k, name in ((p.answer, "option"), (t, "twin")):
            at = p.last[k] + sh
            c[f"span_{name}"] += float(out.attentions[LS][0, HS, at][[x + sh for x in p.spans[k]]].sum())
            lens = model.lm_head(model.model.language_model.norm(out.hidden_states[L2 + 1][0, at]))
            c[f"lens_{name}"] += "ABCD"[int(lens[[letters[x] for x in "ABCD"]].argmax())] == k
        c["final"] += "ABCD"[int(out.logits[0, q][[letters[x] for x in "ABCD"]].argmax())] == p.answer
        for n in range(len(out.hidden_states)):
            h = out.hidden_states[n][0]
            c[f"cos_L{n}"] += float(torch.nn.functional.cosine_similarity(h[p.last[p.answer] + sh], h[p.last[t] + sh],
                                                                           dim=0))
        layer = model.model.language_model.layers[L2]
        h = layer.input_layernorm(out.hidden_states[L2][0])
        dh, groups = layer.self_attn.head_dim, layer.self_attn.num_key_value_groups
        qv = layer.self_attn.q_proj(h[q])[H2 * dh:(H2 + 1) * dh]
        keys = layer.self_attn.k_proj(h)[:, (H2 // groups) * dh:(H2 // groups + 1) * dh]
        c["qk_right"] += float(qv @ keys[p.last[p.answer] + sh])
        c["qk_twin"] += float(qv @ keys[p.last[t] + sh])
for side, c in sorted(stats.items()):
    print(side, c["n"], {k: round(v / c["n"], 2) for k, v in c.items() if k != "n"})
