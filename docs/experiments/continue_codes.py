"""More stage-1b steps (the tower + the projector's first layer into the per-patch code) on the committed
weights, with more worlds' images, the LLM untouched (fourteenth session).

    python docs/experiments/continue_codes.py --out /tmp/m --extra /tmp/w2001 --steps 3000 --lr 3e-4

Stage 2 keeps the tower and ``linear_1`` frozen (``freeze_code``), so the LLM reads the code's units through
``linear_2`` (the LLM's own word embeddings): a cleaner code is what it was trained to read. The committed
tower's code on an unseen world (seed 4242, per patch): colour 0.98, shape 0.73, instance 0.98 (on its
training world ~0.99 / 0.94 / 1.00: the shape code overfits its 4,000 training images). Two runs of it (3,000
steps with one more world, seed 2001, then 3,000 with a second, seed 2002) made the shape code 0.88, then 0.95,
and chose stage 3 of the recipe (``default_model.refresh_worlds``, one run of 6,000 steps: 0.96); the model
card's "Stage 3" table has their scores.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from instit_edge.models.loading import load_model
from instit_edge.train.default_model import pretrain_codes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/default")
    ap.add_argument("--world", default="models/.default-train/world", help="make train-default's training world")
    ap.add_argument("--extra", nargs="*", default=[], help="more worlds at 128 px (other seeds than the benches')")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--steps", type=int, default=3000)
    a = ap.parse_args()
    model, processor = load_model(a.model)
    r = pretrain_codes(model, processor, Path(a.world), a.steps, lr=a.lr, extra_worlds=tuple(a.extra),
                       continued=True)
    print({k: v for k, v in r.items() if k != "layout"})
    model.save_pretrained(a.out)
    processor.save_pretrained(a.out)
    shutil.copy(Path(a.model) / "training.json", a.out / "training.json")


if __name__ == "__main__":
    main()
