"""Where does the default model's instance lookup break? (issue 14, 2026-12-02)

On a world's image questions that name one instance, measured on the torch weights:
- ``aq``: attention of head HQ of layer LQ, at the position that predicts the answer, on the question's ID token;
- ``ap``: attention mass of head HP of layer LP there on the asked instance's image rows (``prior_rows``: if uniform);
- ``lens``: the logit lens after layer LP reads the answer's first word; ``final``: the output does;
- ``lens4`` / ``final4``: the same among the four options' first words (questions whose four differ), and
  ``head4``: head HP's own output (its direct contribution, through the final norm's scale and ``lm_head``) does.

    python docs/experiments/lookup_read_probe.py models/default out/world            # official MC prompts
    python docs/experiments/lookup_read_probe.py models/default out/world --short    # bare-word lookups
    python docs/experiments/lookup_read_probe.py models/default out/world --oe       # official OE, at the word

Measured on the 2026-12-02 weights and make demo's world (seed 7, before the world's size floors): official MC
(74 questions) aq 1.00, ap 0.74, lens 0.31, final 0.32, and among the options lens4 0.27, final4 0.27, head4 0.33;
bare-word lookups (240) aq 1.00, ap 0.63, lens 0.56, final 0.56. The head attends to the right rows and its own
output still picks the right option at chance: the rows were the next suspect, and
``docs/experiments/rows_readable.py`` found half the instances hidden under their ID label.

Thirteenth session, seed 4242's world (230 one-instance questions each), MC / OE at the word: the committed 2f
weights aq 1.00 / 0.33, ap 0.90 / 0.35, final 0.81 / 0.55 (the lookup is not done where an OE answer's word is
predicted); after stage 2h (OE lookups supervised at the word) 1.00 / 0.34, 0.92 / 0.79, 0.83 / 0.62; 2f rerun with
them from the 2e weights 1.00 / 1.00, 0.90 / 0.89, 0.80 / 0.61: the rows are now found, the word still read less
often than in MC.
"""

import argparse
from pathlib import Path

import torch
from probe_forward import load_for_probe, probed

from instit_edge.train.default_model import bench_samples, lookup_samples
from instit_edge.train.letter_heads import _OPTION
from instit_edge.train.lookup_heads import HP, HQ, LP, LQ, lookup_positions

ap_ = argparse.ArgumentParser()
ap_.add_argument("model")
ap_.add_argument("world")
ap_.add_argument("--short", action="store_true", help="bare-word lookups instead of the official MC prompts")
ap_.add_argument("--oe", action="store_true", help="the official open-ended prompts, measured where the attribute's "
                 "word is predicted ([2] is orange.)")
ap_.add_argument("--limit", type=int, default=240)
a = ap_.parse_args()

model, tok, rows, inst = load_for_probe(a.model, a.world)
world = Path(a.world)
if a.short:
    samples = [s for s in lookup_samples(world) if not s.kind.endswith("-mc")][:a.limit]
else:
    kind = "image-oe" if a.oe else "image-mc"
    samples = [s for s in bench_samples(world, text_letter=True) if s.kind == kind][:a.limit]
stats = {"aq": 0.0, "ap": 0.0, "lens": 0, "final": 0, "prior_rows": 0.0, "lens4": 0, "final4": 0, "head4": 0}
lp_attn = model.model.language_model.layers[LP].self_attn
seen = {}
hook = lp_attn.o_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("x", i[0]))
dh = lp_attn.head_dim
n = n4 = 0


def asked(s, ids):
    p = lookup_positions(s, ids, tok, "vicuna_v1", inst, oe_word=a.oe)
    return p if p is not None and p.answer_token is not None else None


with torch.no_grad():
    for s, p, out, sh in probed(model, rows, samples, tok, asked):
        q = p.answer_pred + sh
        n += 1
        stats["aq"] += float(out.attentions[LQ][0, HQ, q, p.id_token + sh])
        stats["ap"] += float(out.attentions[LP][0, HP, q, [p.image_pos + r for r in p.rows]].sum())
        stats["prior_rows"] += len(p.rows) / len(rows.rows(s))
        h = model.model.language_model.norm(out.hidden_states[LP + 1][0, q])
        stats["lens"] += int(model.lm_head(h).argmax()) == p.answer_token
        stats["final"] += int(out.logits[0, q].argmax()) == p.answer_token
        # among the options' first tokens (the choice the bench scores), and head HP's own direct contribution
        opts = [tok(" " + text, add_special_tokens=False)["input_ids"][0]
                for _, text in _OPTION.findall(s.turns[0][0] + "\n")] if not (a.short or a.oe) else []
        if len(set(opts)) == 4 and p.answer_token in opts:
            res = out.hidden_states[LP + 1][0, q]
            scale = torch.rsqrt(res.pow(2).mean() + 1e-6) * model.model.language_model.norm.weight
            head = seen["x"][0, q, HP * dh:(HP + 1) * dh] @ lp_attn.o_proj.weight[:, HP * dh:(HP + 1) * dh].T
            for key, logits in (("lens4", model.lm_head(h)), ("final4", out.logits[0, q]),
                                ("head4", model.lm_head(head * scale))):
                stats[key] += opts[int(logits[opts].argmax())] == p.answer_token
            n4 += 1
print(f"{n} questions ({n4} with four distinct option words):",
      {k: round(v / max(n4 if k.endswith("4") else n, 1), 3) for k, v in stats.items()})
