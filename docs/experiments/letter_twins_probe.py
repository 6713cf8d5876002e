"""Why position letters fail: options that end in the same token (fifteenth session, issue 14).

On the position MC questions of a world whose right option shares its last token with exactly one other option
(``top-right`` / ``middle-right``), measured per side (``left`` / ``right``) on the torch weights:
- ``h2_right`` / ``h2_twin``: attention of the letter step's answer head (head H2 of layer L2,
  :mod:`instit_edge.train.letter_heads`), at the answer's last text token, on the right option's last token and on
  the other one's;
- ``span_*``: the option-span head's (HS of layer LS) mass on a text's own tokens at its last token (the answer,
  the right option, the other option);
- ``lens_*``: the logit lens after layer L2 reads the option's own letter at its last token;
- ``final``: the output picks the right letter among A-D where the letter is predicted.

    python docs/experiments/letter_twins_probe.py models/default out/world4242 [LIMIT]

Measured on the stage-4 weights, seed 4242 (37 left / 49 right questions): left h2 0.98 / 0.01, final 1.00;
right h2 0.46 / 0.53, final 0.37; every span 1.00. On 250 of the training world's own questions: right 0.52 /
0.47, left 0.98 / 0.01: the head never learned to tell the ``-right`` options apart.
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
           if s.kind == "image-mc" and "located" in s.turns[0][0]][:limit]
letters = {k: tok(" " + k, add_special_tokens=False)["input_ids"][-1] for k in "ABCD"}
stats = collections.defaultdict(collections.Counter)
with torch.no_grad():
    for s, p, out, sh in probed(model, rows, samples, tok, lambda s, ids: letter_positions(s, ids, tok, "vicuna_v1")):
        opts = dict(_OPTION.findall(s.turns[0][0] + "\n"))
        side = opts[p.answer].split("-")[-1]
        twins = [k for k, v in opts.items() if k != p.answer and v.split("-")[-1] == side]
        if len(twins) != 1 or side not in ("left", "right"):
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
for side, c in sorted(stats.items()):
    print(side, c["n"], {k: round(v / c["n"], 2) for k, v in c.items() if k != "n"})
