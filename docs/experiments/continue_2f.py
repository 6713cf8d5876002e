"""More stage-2f steps from the committed weights, optionally with the span read or the open-ended word lookup on (thirteenth session).

    python docs/experiments/continue_2f.py --out /tmp/m --work /tmp/w --lr 3e-4 --steps 400 [--span-read 1.0]

Loads ``models/default`` the way ``--from-model`` does, runs :func:`train_multi_stage` with ``option_spans``
(2f's pool, heads and terms) on the training world of ``make train-default`` (``--world``, built there), bakes
the readout and saves an HF checkpoint to evaluate (``instit-edge export``, then ``eval``). Resumable from
``--work``. The model card's "Stage 2f continued, and 2h" table came from it (``--span-read 0`` / ``1``,
``--oe-word``).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from instit_edge.train import letter_heads
from instit_edge.train.default_model import (
    TiedCodeRows,
    _from_trained,
    init_code_readout,
    stage_samples,
    train_multi_stage,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/default")
    ap.add_argument("--world", default="models/.default-train/world", help="make train-default's training world")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--span-read", type=float, default=0.0, help="SPAN_READ_WEIGHT (0: off)")
    ap.add_argument("--oe-word", action="store_true", help="open-ended answers' lookups supervised at the "
                    "attribute's word (what stage 2h, --oe-steps, does)")
    a = ap.parse_args()
    letter_heads.SPAN_READ_WEIGHT = a.span_read
    a.work.mkdir(parents=True, exist_ok=True)
    model, processor, done = _from_trained(a.model, 0, print)
    world = Path(a.world)
    lookups, _, qa_tl, _, held_tl = stage_samples(world, 0)
    layout = done["codes"]["layout"]
    r = train_multi_stage(model, processor, world, lookups, qa_tl, held_tl, a.steps,
                          TiedCodeRows(model, processor, layout), a.work / "state.pt", lr=a.lr, option_spans=True,
                          oe_words=a.oe_word)
    print({k: v for k, v in r.items() if k != "losses"})
    init_code_readout(model, processor.tokenizer, layout)
    model.config.instit_question_format = "official_oe"
    model.save_pretrained(a.out)
    processor.save_pretrained(a.out)
    shutil.copy(Path(a.model) / "training.json", a.out / "training.json")


if __name__ == "__main__":
    main()
