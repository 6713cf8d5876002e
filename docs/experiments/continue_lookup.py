"""Continue the default model's stage 2d from trained weights, with a variant of its data (issue 14, 2026-12-02).

Short runs to settle the next recipe step before a long one: each run loads a trained model, keeps its code
rows tied (``TiedCodeRows``, as stage 2 does), trains ``--steps`` more steps of the lookup supervision on the
training world (seed 1000, rebuilt in ``--work`` when missing), bakes the readout and saves the model. Choice
accuracy (each option's answer scored, the model's pick) on held-out worlds' image / video MC, before and after.

    python docs/experiments/continue_lookup.py models/default --out /tmp/cand --variant single --steps 200 \\
        --eval out/world out/world99

Variants: ``as2d`` (stage 2d's own mix: all bench questions, short lookups 30% -> 20%), ``single`` (only the
questions that name one instance, image MC and OE, where the lookup is supervised; short lookups 20%).

Measured on the weights before 2026-12-02's world fix, on the old world, 200 steps of 16 at lr 3e-4: ``single``
without the head read moved the choice on one-instance image MC 0.28 -> 0.22 (seed 7) and 0.43 -> 0.42
(seed 99); with it, 0.28 -> 0.22 and 0.43 -> 0.40. Neither helped: the rows were the problem
(``rows_readable.py``).
"""

import argparse
import json
import time
from pathlib import Path

import torch

from instit_edge.data.synth import build_world
from instit_edge.models.loading import load_model
from instit_edge.train.default_model import (IMAGE, PATCH, WORLD_SEED_OFFSET, TiedCodeRows, _mc_choice_accuracy,
                                             bench_samples, init_code_readout, lookup_samples, train_vlm)
from instit_edge.train import lookup_heads
from instit_edge.train.lookup_heads import _ONE_ID, InstanceRows

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("--out", required=True)
ap.add_argument("--work", default="/tmp/default-train-world")
ap.add_argument("--variant", choices=("as2d", "single"), default="single")
ap.add_argument("--steps", type=int, default=200)
ap.add_argument("--lr", type=float, default=3e-4)
ap.add_argument("--batch", type=int, default=16)
ap.add_argument("--eval", nargs="*", default=[])
ap.add_argument("--head-read", type=float, default=lookup_heads.HEAD_READ_WEIGHT, help="weight of the head-read term")
a = ap.parse_args()
lookup_heads.HEAD_READ_WEIGHT = a.head_read

torch.manual_seed(0)
world = Path(a.work) / "world"
if not (world / "ground_truth.json").exists():
    build_world(world, seed=WORLD_SEED_OFFSET, n_images=2000, n_videos=400, image_size=(IMAGE, IMAGE),
                n_train_images=2000, n_train_videos=400, force=True)
model, proc = load_model(a.model)
tok = proc.tokenizer
layout = json.loads((Path(a.model) / "training.json").read_text())["codes"]["layout"]
rows = TiedCodeRows(model, proc, layout)


def choice(tag):
    res = {}
    for w in a.eval:
        qa = bench_samples(Path(w), text_letter=True)
        for kind in ("image-mc", "video-mc"):
            s = [x for x in qa if x.kind == kind]
            res[f"{Path(w).name}/{kind}"] = round(_mc_choice_accuracy(model, rows, s, tok), 4)
        one = [x for x in qa if x.kind == "image-mc" and _ONE_ID.search(x.turns[0][0])]
        res[f"{Path(w).name}/image-mc-one-id"] = round(_mc_choice_accuracy(model, rows, one, tok), 4)
    print(tag, res, flush=True)
    return res


before = choice("before")
lookups = lookup_samples(world)
qa_tl = bench_samples(world, text_letter=True)
if a.variant == "single":
    qa_tl = [s for s in qa_tl if s.kind.startswith("image-") and _ONE_ID.search(s.turns[0][0])]
    frac, floor = 0.2, 0.2
else:
    frac, floor = 0.3, 0.2
print(f"{a.variant}: {len(qa_tl)} bench questions, {len(lookups)} lookups", flush=True)
out = Path(a.out)
out.mkdir(parents=True, exist_ok=True)
t0 = time.perf_counter()
info = train_vlm(model, proc, lookups, qa_tl, a.steps, lr=a.lr, batch=a.batch, dense_frac=frac, dense_floor=floor,
                 state_path=out / "state.pt", rows=rows, freeze_code=True, letter_heads=True,
                 lookup_heads=InstanceRows(world, IMAGE // PATCH))
init_code_readout(model, tok, layout)
after = choice("after")
model.save_pretrained(out / "model")
proc.save_pretrained(out / "model")
(out / "result.json").write_text(json.dumps({"variant": a.variant, "head_read": a.head_read, "steps": a.steps, "lr": a.lr, "before": before,
                                             "after": after, "seconds": round(time.perf_counter() - t0, 1),
                                             "final_loss": info["final_loss"]}, indent=2))
