"""Can an instance's colour and shape be read from the default model's image rows at all? (issue 14, 2026-12-02)

For every instance of a world's bench images: the mean of the projector's code units (GELU of ``linear_1``)
over the patches the instance covers, its colour and shape slices' argmax against the ground truth, split by
the share of the instance's pixels left visible outside its ID label.

    python docs/experiments/rows_readable.py models/default out/world

Measured on the 2026-12-02 weights and make demo's world as it was then (small radius 9.6 px at 128 px):
47% of the instances were less than half visible; for them colour 0.41 / shape 0.24 (chance 0.14 / 0.17),
for the others 0.86 / 0.50. Small stars and triangles were a few pixels around the label, for a person too.
``data/synth.MIN_RADIUS_PX`` followed.
"""

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from instit_edge.drawing import COLORS, SHAPES
from instit_edge.models.loading import load_model
from instit_edge.runtime.anyres import load_image
from instit_edge.train.default_model import IMAGE, PATCH, FrozenVisionRows
from instit_edge.train.lookup_heads import InstanceRows

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("world")
a = ap.parse_args()

model, proc = load_model(a.model)
world = Path(a.world)
gt = json.loads((world / "ground_truth.json").read_text())
layout = json.loads((Path(a.model) / "training.json").read_text())["codes"]["layout"]
rows, inst = FrozenVisionRows(model, proc), InstanceRows(world, IMAGE // PATCH)
words = {"colour": ("color", list(COLORS)), "shape": ("shape", list(SHAPES))}
right = defaultdict(lambda: [0, 0])
with torch.no_grad():
    for e in gt["bench"]["images"].values():
        img = world / e["image_path"]
        mask = np.asarray(Image.open(world / e["mask_path"]))
        crops, _ = rows.enc.pre.crops(load_image(img), anyres=False)
        code = F.gelu(model.model.multi_modal_projector.linear_1(rows.features(crops)))[0].float()
        for k, v in e["instances"].items():
            patches = inst.rows(img, int(k))
            if not patches:
                continue
            area = mask == int(k)
            x0, y0, x1, y1 = v["label_rect"]
            outside = area.copy()
            outside[y0:y1, x0:x1] = False
            share = outside.sum() / max(area.sum(), 1)
            group = "less than half visible" if share < 0.5 else "half or more visible"
            mean = code[patches].mean(0)
            for name, (key, names) in words.items():
                first, n = layout[name]
                for g in (group, "all"):
                    right[(g, name)][0] += names[int(mean[first + 1:first + n].argmax())] == v[key]
                    right[(g, name)][1] += 1
for (g, name), (r, n) in sorted(right.items()):
    print(f"{g:24s} {name:7s} {r / n:.3f} of {n}")
