"""Does stage 2g's count head count? (issue 14, eleventh / twelfth sessions)

On a world's image count MC questions (official prompts, answered ``<number> <letter>``), on the torch weights:
- ``mark``: head HF of layer LF's attention, at each image row on an instance, on that instance's earlier rows
  (the sink at its first row): what stage 2g supervises so that each instance has one marked row;
- ``sink share by n``: head HC of layer LC's attention on position 0 at the position that predicts the number,
  per true count n (the target is 1 / (n + 1));
- ``HC mass on counted firsts`` / ``on all firsts``: its attention on the counted instances' first rows, and on
  every instance's first row;
- ``lens`` / ``final``: the logit lens after layer LC, and the output, pick the right number among 0-7.

    python docs/experiments/count_probe.py models/default out/world

Measured (twelfth session; 143 questions of a seed-4242 world, true counts 0/1/2/3: 13/99/29/2). The committed
stage-2f weights: mark 0.14, sink share ~0 for every n, lens 0.69, final 0.69 (always "1", the prior). After 400
steps of stage 2g from them (`python -m instit_edge.train.default_model --from-model models/default
--count-steps 400`), four variants:

| 2g variant | mark | sink share n = 0 / 1 / 2 / 3 | on counted firsts n = 1 / 2 / 3 | on all firsts | final |
|---|---|---|---|---|---|
| count term weight 1 | 0.94 | 0.56 / 0.53 / 0.52 / 0.49 | 0.16 / 0.28 / 0.41 | 0.42 | 0.69 |
| weight 4 | 0.96 | 0.54 / 0.52 / 0.50 / 0.44 | 0.17 / 0.30 / 0.51 | 0.45 | 0.69 |
| weight 4 + HQ hops to the counted word (0.999 of it there) | 0.96 | 0.54 / 0.53 / 0.49 / 0.46 | 0.16 / 0.29 / 0.47 | 0.44 | 0.69 |
| the same, count head LC, HC = 3, 1 (set on the module before this script imports it) | 0.96 | 0.57 / 0.53 / 0.52 / 0.38 | 0.16 / 0.28 / 0.54 | 0.43 | 0.69 |

(targets: sink 1 / 0.5 / 0.33 / 0.25.) The marks are learned; the count head spreads over every instance's mark
instead of the counted ones, even once the question's colour / shape word is brought to its query, so its share
does not say the number and the answer stays "1": the head never matches the question's colour / shape against
the marks. (tests/test_count_heads.py trains the same loss alone on a 4-layer Llama and it learns the spread,
but there each count's word is its own token: it shows the loss trains, not that this matching is learnable.)
"""

import argparse
from pathlib import Path

import numpy as np
from probe_forward import load_for_probe, probed

from instit_edge.train.count_heads import HC, HF, LC, LF, count_positions
from instit_edge.train.default_model import bench_samples
from instit_edge.train.lookup_heads import _COUNT

ap_ = argparse.ArgumentParser()
ap_.add_argument("model")
ap_.add_argument("world")
ap_.add_argument("--limit", type=int, default=150)
a = ap_.parse_args()

model, tok, rows, inst = load_for_probe(a.model, a.world)
world = Path(a.world)
samples = [s for s in bench_samples(world, text_letter=True)
           if s.kind == "image-mc" and _COUNT.search(s.turns[0][0])][:a.limit]
mark, share, ns, on_counted, on_firsts = [], [], [], [], []
lens = final = 0


def counting(s, ids):
    p = count_positions(s, ids, tok, "vicuna_v1", inst)
    return p if p is not None and p.answer_pred is not None else None


for _, p, out, sh in probed(model, rows, samples, tok, counting):
    af = out.attentions[LF][0, HF]
    for r, before in zip(p.rows, p.earlier):
        mark.append(float(af[r + p.image_pos, [x + p.image_pos for x in before] or [0]].sum()))
    q = p.answer_pred + sh
    ac = out.attentions[LC][0, HC, q]
    firsts = [r + p.image_pos for r, before in zip(p.rows, p.earlier) if not before]
    on_counted.append(float(ac[[f + p.image_pos for f in p.firsts]].sum()) if p.firsts else 0.0)
    on_firsts.append(float(ac[firsts].sum()))
    share.append(float(ac[0]))
    ns.append(len(p.firsts))
    c = list(p.candidates)
    h = model.model.language_model.norm(out.hidden_states[LC + 1][0, q])
    lens += c[int(model.lm_head(h)[c].argmax())] == p.answer_token
    final += c[int(out.logits[0, q, c].argmax())] == p.answer_token
ns, share, on_counted = np.array(ns), np.array(share), np.array(on_counted)
by_n = {int(k): k == ns for k in np.unique(ns)}
print(f"{len(ns)} count questions, true counts {dict(zip(*np.unique(ns, return_counts=True)))}")
print(f"mark {np.mean(mark):.3f}; sink share by n {({k: round(float(share[m].mean()), 3) for k, m in by_n.items()})}; "
      f"on the counted firsts {({k: round(float(on_counted[m].mean()), 3) for k, m in by_n.items()})}, "
      f"on all firsts {np.mean(on_firsts):.3f}; lens {lens / len(ns):.3f}, final {final / len(ns):.3f}")
