"""Stage 5 from a trained model: frame labels and the video lookups supervised (seventeenth session).

    python docs/experiments/continue_video.py --model models/default --out /tmp/m3 --work /tmp/w3 --steps 500
    python docs/experiments/continue_video.py --model /tmp/m3 --out /tmp/m4 --work /tmp/w4 --steps 600
    python docs/experiments/continue_video.py --model /tmp/m4 --out /tmp/m5 --work /tmp/w5 --steps 600

How the committed weights got stage 5 (the three runs above, from the stage-4 weights of commit 4364c38, on
``make train-default``'s training world): each run turns ``video_frame_labels`` on, trains with
:func:`~instit_edge.train.default_model.train_vlm` on stage 4's pool plus every video MC question
``--video-repeat`` times in all (10), stage 4's terms and the video heads of :mod:`instit_edge.train.video_heads`,
bakes the readout and saves an HF checkpoint; before training (``--eval-only``) and after, it prints the
per-category video MC choice (teacher forced) on the benches of ``--eval``. ``--no-heads`` trains the labels
without the video supervision. Resumable from ``--work``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

from instit_edge.models.loading import load_model
from instit_edge.train import video_heads
from instit_edge.train.default_model import (
    IMAGE,
    PATCH,
    TiedCodeRows,
    _mc_choice_accuracy,
    _multi_pool,
    bench_samples,
    init_code_readout,
    stage_samples,
    train_vlm,
)
from instit_edge.train.lookup_heads import InstanceRows

CATEGORIES = {"appear": video_heads._APPEAR, "disappear": video_heads._DISAPPEAR, "change": video_heads._CHANGE,
              "movement": video_heads._MOVE, "count": video_heads._FRAME_COUNT, "color": video_heads._COLOR}


def evaluate(model, rows, tok, worlds, tag: str) -> None:
    for w in worlds:
        vs = [s for s in bench_samples(Path(w), text_letter=True) if s.kind == "video-mc"]
        res, total = {}, 0.0
        for name, rx in CATEGORIES.items():
            sub = [s for s in vs if rx.search(s.turns[0][0])]
            acc = _mc_choice_accuracy(model, rows, sub, tok) if sub else 0.0
            res[name] = (len(sub), round(100 * acc))
            total += acc * len(sub)
        print(f"[{tag}] {w}: video choice {100 * total / max(len(vs), 1):.1f} {res}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/default")
    ap.add_argument("--world", default="models/.default-train/world", help="make train-default's training world")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--video-repeat", type=int, default=10)
    ap.add_argument("--no-heads", action="store_true", help="frame labels without the video supervision")
    ap.add_argument("--eval", nargs="*", default=[], help="synthetic worlds whose video MC to score")
    ap.add_argument("--eval-only", action="store_true")
    a = ap.parse_args()
    torch.manual_seed(0)
    a.work.mkdir(parents=True, exist_ok=True)
    model, processor = load_model(a.model)
    model.config.video_frame_labels = True
    layout = json.loads((Path(a.model) / "training.json").read_text())["codes"]["layout"]
    rows = TiedCodeRows(model, processor, layout)
    tok = processor.tokenizer
    if a.eval_only:
        evaluate(model, rows, tok, a.eval, "before")
        sys.exit()
    world = Path(a.world)
    lookups, _, qa_tl, _, held_tl = stage_samples(world, 0)
    pool, _, _ = _multi_pool(qa_tl, True)
    vmc = [x for x in qa_tl if x.kind == "video-mc"]
    pool += vmc * (a.video_repeat - 1)
    print(f"pool {len(pool)}, video MC {len(vmc)} x{a.video_repeat}", flush=True)
    r = train_vlm(model, processor, lookups, pool, a.steps, lr=a.lr, batch=16, dense_frac=0.2, dense_floor=0.2,
                  state_path=a.work / "state.pt", held=held_tl, rows=rows, freeze_code=True, letter_heads=True,
                  lookup_heads=InstanceRows(world, IMAGE // PATCH), multi_heads=True, option_spans=True,
                  oe_words=True, first_layer_span=True,
                  video_heads=None if a.no_heads else video_heads.VideoInstanceRows(world, IMAGE // PATCH // 2))
    print({k: v for k, v in r.items() if k != "losses"}, flush=True)
    (a.work / "losses.json").write_text(json.dumps(r["losses"]))
    evaluate(model, rows, tok, a.eval, "after")
    init_code_readout(model, tok, layout)
    model.save_pretrained(a.out)
    processor.save_pretrained(a.out)
    shutil.copy(Path(a.model) / "training.json", a.out / "training.json")


if __name__ == "__main__":
    main()
