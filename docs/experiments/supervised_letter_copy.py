"""Experiment (issue 14, fifth session), not part of the package: the MC letter step learned by supervising it.

The from-scratch default LLM does not learn "find the answer among the options and copy its letter" by
itself (0.25 after 20k samples). Here two attention heads are told where to look and the letter is made
readable where they look:
- H1 (layer 1, head 0): at each option's last content token, attend to that option's letter ("A" of "A. red");
- logit lens: after layer 2, the final norm + lm_head at each option's last content token must predict its
  letter (" A"), so the letter is in a direction the output can use;
- H2 (layer 3, head 0): at the answer's last content token, attend to the right option's last content token.
Answer format "<option text> <letter>" (the official extraction takes the first A-D character; option texts
are lower case). Loss: the letter and the content's first token (teacher-forced content), + the two
attention terms (-log p) + the lens term, weights 1.

Measured on this 2-core Xeon, from the 2b state (letters-state.pt: lookups learned on the tower's code
rows), training world's image MC questions in the official prompt with the image's code rows, 300 held out:
after 500 steps of 16 (5.5 min) the letter given the right content 0.79 (0.27 at step 150, chance 0.25),
the content's first token 0.52. Text-only (no image, batch 32, 400 steps): letter 0.81; the same without the
lens term stayed at 0.26 with the heads attending correctly (the value path does not form on its own).

Run from the repository root after `make train-default` has written models/.default-train/:
    python docs/experiments/supervised_letter_copy.py letters-state.pt 1e-3 500 1.0 1.0
(args: stage state, lr, steps, attention-term weight, lens-term weight)
"""
import random, sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import numpy as np, torch
from instit_edge.models.loading import load_model
from instit_edge.data.bench import load_bench
from instit_edge.prompting import official_prompt, render_chat
from instit_edge.train.encode import IGNORE
torch.manual_seed(0)
W = Path(__file__).resolve().parents[2] / "models" / ".default-train"
model, proc = load_model(W / "base")
st = torch.load(W / sys.argv[1], weights_only=False)
model.load_state_dict(st["model"], strict=False)
model.config.text_config._attn_implementation = "eager"
model.model.language_model.config._attn_implementation = "eager"
tok = proc.tokenizer
L1, H1, L2, H2 = 1, 0, 3, 0
AUXW = float(sys.argv[4]) if len(sys.argv) > 4 else 1.0
BATCH = 16
LENSW = float(sys.argv[5]) if len(sys.argv) > 5 else 1.0
LETTER = {x: tok.encode(" " + x, add_special_tokens=False)[-1] for x in "ABCD"}
items = [i for i in load_bench(W / "world" / "bench") if i.format == "mc" and i.split == "image"]
from instit_edge.train.default_model import TiedCodeRows
from instit_edge.prompting import IMAGE_TOKEN
st2 = torch.load(W / "codes.pt", weights_only=False)
model.model.vision_tower.load_state_dict(st2["tower"])
model.model.multi_modal_projector.linear_1.load_state_dict(st2["linear_1"])
ROWS = TiedCodeRows(model, proc, st2["info"]["layout"])
IMG_ID = tok.convert_tokens_to_ids(IMAGE_TOKEN)
class _S:
    def __init__(self, p): self.image = p; self.frames = []
rng = random.Random(0); rng.shuffle(items)
def enc(it):
    prompt = official_prompt(it)
    ans = f"{it.options[it.answer]} {it.answer}"
    text = render_chat("vicuna_v1", [("user", IMAGE_TOKEN + "\n" + prompt), ("assistant", ans)], add_generation_prompt=False)
    e = tok(text, return_offsets_mapping=True)
    ids = e["input_ids"]; offs = e["offset_mapping"]
    def tok_at(ch):  # token index covering char position ch
        for i, (a, b) in enumerate(offs):
            if a <= ch < b: return i
        return None
    u0 = text.index(prompt)
    opt_letter, opt_last = {}, {}
    for L, c in it.options.items():
        key = f"\n{L}. {c}\n"
        j = prompt.index(key)
        opt_letter[L] = tok_at(u0 + j + 1)
        opt_last[L] = tok_at(u0 + j + len(key) - 2)
    a0 = text.rindex(ans)
    ans_last = tok_at(a0 + len(it.options[it.answer]) - 1)
    letter_pos = tok_at(a0 + len(ans) - 1)
    labels = [IGNORE] * len(ids)
    labels[letter_pos] = ids[letter_pos]
    first_pos = tok_at(a0)  # the content's first token: the lookup in the MC context
    labels[first_pos] = ids[first_pos]
    sh = ROWS_N - 1  # positions after the <image> token move by the rows it becomes
    return (ids, labels, {k: v + sh for k, v in opt_letter.items()}, {k: v + sh for k, v in opt_last.items()},
            ans_last + sh, it.answer, it.image_path, first_pos + sh, letter_pos + sh)
ROWS_N = 64
data = [enc(it) for it in items]
data = [d for d in data if None not in d[2].values() and None not in d[3].values() and d[4] is not None]
held, train = data[:300], data[300:]
print(len(train), "train", flush=True)
lm = model.model.language_model
for p in model.parameters(): p.requires_grad = False
for m in (lm, model.lm_head):
    for p in m.parameters(): p.requires_grad = True
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=float(sys.argv[2]), weight_decay=0.01)
def batch(ch):
    emb = model.get_input_embeddings()
    seqs, labs = [], []
    for d in ch:
        ids = torch.tensor(d[0]); p = d[0].index(IMG_ID)
        x = emb(ids); r = ROWS.rows(_S(d[6])).to(x.dtype)
        seqs.append(torch.cat([x[:p], r, x[p + 1:]])); lab = torch.tensor(d[1])
        labs.append(torch.cat([lab[:p], torch.full((len(r),), IGNORE), lab[p + 1:]]))
    n = max(len(x) for x in seqs)
    X = torch.zeros(len(ch), n, x.shape[-1]); LB = torch.full((len(ch), n), IGNORE); M = torch.zeros(len(ch), n, dtype=torch.long)
    for i, (x, lab) in enumerate(zip(seqs, labs)):
        X[i, :len(x)] = x; LB[i, :len(lab)] = lab; M[i, :len(x)] = 1
    return X, LB, M
def _old_batch(ch):
    n = max(len(d[0]) for d in ch)
    ids = torch.full((len(ch), n), tok.pad_token_id); lab = torch.full((len(ch), n), IGNORE); m = torch.zeros(len(ch), n, dtype=torch.long)
    for i, d in enumerate(ch):
        ids[i, :len(d[0])] = torch.tensor(d[0]); lab[i, :len(d[1])] = torch.tensor(d[1]); m[i, :len(d[0])] = 1
    return ids, lab, m
def run(ch, train_mode=True):
    ids, lab, m = batch(ch)
    out = model(inputs_embeds=ids, attention_mask=m, output_attentions=True, output_hidden_states=True)
    lg = out.logits
    tgt = lab[:, 1:]; sel = tgt != IGNORE
    loss = torch.nn.functional.cross_entropy(lg[:, :-1][sel].float(), tgt[sel])
    a1, a2 = out.attentions[L1][:, H1], out.attentions[L2][:, H2]
    aux = []
    for i, d in enumerate(ch):
        for L in "ABCD":
            aux.append(-torch.log(a1[i, d[3][L], d[2][L]] + 1e-6))
        aux.append(-torch.log(a2[i, d[4], d[3][d[5]]] + 1e-6))
    # logit lens at each option's last word, before H2's layer: the option's letter must be readable there
    hs = lm.norm(out.hidden_states[L2])
    rows, cls = [], []
    for i, d in enumerate(ch):
        for L in "ABCD":
            rows.append(hs[i, d[3][L]]); cls.append(LETTER[L])
    lens = torch.nn.functional.cross_entropy(model.lm_head(torch.stack(rows)).float(), torch.tensor(cls))
    aux = torch.stack(aux).mean() + LENSW * lens
    fl = [(lg[i, d[7] - 1].argmax() == lab[i, d[7]]).float().item() for i, d in enumerate(ch)]
    ll = [(lg[i, d[8] - 1].argmax() == lab[i, d[8]]).float().item() for i, d in enumerate(ch)]
    return loss, aux, (float(np.mean(fl)), float(np.mean(ll)))
def acc():
    model.eval(); r = []
    with torch.no_grad():
        for i in range(0, len(held), 50):
            _, aux, a = run(held[i:i+50]); r.append(a)
    model.train(); return "content-first-token", float(np.mean([x[0] for x in r])), "letter|content", float(np.mean([x[1] for x in r])), float(aux)
print("step 0", acc(), flush=True)
t0 = time.time(); L = []; A = []
for step in range(1, int(sys.argv[3]) + 1):
    ch = [train[rng.randrange(len(train))] for _ in range(BATCH)]
    loss, aux, _ = run(ch)
    opt.zero_grad(); (loss + AUXW * aux).backward(); torch.nn.utils.clip_grad_norm_(params, 1.0); opt.step()
    L.append(loss.item()); A.append(aux.item())
    if step % 50 == 0:
        print(step, f"loss {np.mean(L[-50:]):.3f} aux {np.mean(A[-50:]):.3f} held (acc, aux) {acc()} {time.time()-t0:.0f}s", flush=True)
