"""The embedded default model: a small LLaVA-Next trained on the synthetic world to read the ID marks.

Recipe (``make train-default``), chosen because a from-scratch LM loss alone
left a tiny VLM at chance (the LLM learns option priors and ignores the image):

1. **World at model resolution.** Scenes rendered natively at 128 x 128, so a
   mark's digit is ~10 px tall inside a 16 px patch (readable), instead of
   being shrunk 3x by the resize.
2. **Vision first, on a direct objective.** The vision tower is trained alone
   with per-patch targets from the ground truth: which ID label sits in the
   patch, and the colour / shape of the instance under the patch centre.
3. **Then the VLM**, vision tower frozen, projector + LLM trained on
   instruction samples: dense instance lists ("[1] a red circle ...") first,
   then bench-format MC and OE questions of a *training* world (different
   seed from the held-out evaluation world), loss on answers only.

Everything is deterministic for a seed. Scores come from ``instit-edge eval``
on a held-out world.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from ..errors import InstitError

IMAGE = 128
PATCH = 16


def default_spec(seed: int = 0):
    from ..models.tiny import TinySpec

    return TinySpec(arch="llava-next", llm="llama", vision="clip", seed=seed, hidden_size=256,
                    intermediate_size=768, num_layers=4, num_heads=4, num_kv_heads=4, vocab_size=1024,
                    max_position_embeddings=2048, image_size=IMAGE, patch_size=PATCH, vision_hidden=192,
                    vision_intermediate=384, vision_layers=4, vision_heads=3, feature_layer=-1,
                    pinpoints=[[IMAGE, IMAGE]])


# --------------------------------------------------------------------------- stage 1: per-patch targets
def _patch_targets(entry: dict, mask_png: Path, colours: list[str], shapes: list[str]) -> np.ndarray:
    """[G*G, 3] int targets: (digit id or 0, colour class, shape class) per patch (0 = background)."""
    from PIL import Image

    g = IMAGE // PATCH
    m = np.asarray(Image.open(mask_png))
    if m.shape[:2] != (IMAGE, IMAGE):
        raise InstitError(f"default model world must be {IMAGE}x{IMAGE}, got {m.shape[:2]} in {mask_png}")
    t = np.zeros((g, g, 3), np.int64)
    cy = cx = (np.arange(g) * PATCH + PATCH // 2)
    ids = m[np.ix_(cy, cx)]
    inst = entry["instances"]
    for k, v in inst.items():
        sel = ids == int(k)
        t[..., 1][sel] = 1 + colours.index(v["color"])
        t[..., 2][sel] = 1 + shapes.index(v["shape"])
        lx0, ly0, lx1, ly1 = v["label_rect"]
        for py in range(g):
            for px in range(g):
                ox = max(0, min(lx1, (px + 1) * PATCH) - max(lx0, px * PATCH))
                oy = max(0, min(ly1, (py + 1) * PATCH) - max(ly0, py * PATCH))
                if ox * oy >= 0.3 * (lx1 - lx0) * (ly1 - ly0):
                    t[py, px, 0] = int(k)
    return t.reshape(-1, 3)


def _vision_examples(world: Path):
    from ..data.synth import COLORS, SHAPES

    gt = json.loads((world / "ground_truth.json").read_text())
    colours = list(COLORS)
    items = []
    for part in ("dataset", "bench"):
        for entry in gt[part]["images"].values():
            items.append((world / entry["image_path"], _patch_targets(entry, world / entry["mask_path"], colours,
                                                                      list(SHAPES))))
        for v in gt[part]["videos"].values():
            for f in v["frames"]:
                img = world / v["video_path"] / f["frame_name"]
                items.append((img, _patch_targets(f, world / f["mask_path"], colours, list(SHAPES))))
    return items, len(colours), len(SHAPES)


def pretrain_vision(model, processor, world: Path, steps: int, lr: float = 1e-3, batch: int = 32, log=print) -> dict:
    """Train the vision tower (up to the feature layer) on per-patch digit / colour / shape targets."""
    import torch

    from ..runtime.anyres import Preprocess, load_image

    items, n_col, n_shp = _vision_examples(world)
    ip = processor.image_processor
    pre = Preprocess(IMAGE, list(ip.image_mean), list(ip.image_std), None)
    px = np.stack([pre.crops(load_image(p), anyres=False)[0][0] for p, _ in items])
    tg = np.stack([t for _, t in items])
    tower = model.model.vision_tower
    layer = model.config.vision_feature_layer
    d = model.config.vision_config.hidden_size
    heads = torch.nn.ModuleList([torch.nn.Linear(d, 10), torch.nn.Linear(d, n_col + 1), torch.nn.Linear(d, n_shp + 1)])
    params = [p for p in tower.parameters()] + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(0)
    tower.train()
    t0 = time.perf_counter()
    acc = {}
    for step in range(steps):
        idx = torch.randint(0, len(px), (batch,), generator=g)
        x = torch.from_numpy(px[idx.numpy()])
        y = torch.from_numpy(tg[idx.numpy()])
        h = tower(x, output_hidden_states=True).hidden_states[layer][:, 1:]
        loss = 0
        for j, head in enumerate(heads):
            logits = head(h)
            w = None
            if j == 0:  # digits are rare: weight the positives up
                w = torch.ones(10)
                w[1:] = 20.0
            loss = loss + torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[..., j].reshape(-1),
                                                            weight=w)
            if step % 50 == 0 or step == steps - 1:
                pred = logits.argmax(-1)
                pos = y[..., j] > 0
                acc[("digit", "colour", "shape")[j]] = float((pred[pos] == y[..., j][pos]).float().mean())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"vision step {step + 1}/{steps} loss {float(loss):.3f} patch acc {acc} "
                f"({(step + 1) * batch / (time.perf_counter() - t0):.0f} img/s)")
    tower.eval()
    return {"steps": steps, "patch_accuracy": acc, "images": len(px), "seconds": time.perf_counter() - t0}


# --------------------------------------------------------------------------- stage 2: the VLM
def vlm_samples(world: Path, seed: int = 0):
    """Dense instance lists first (curriculum), then bench-format MC + OE questions, as training samples."""
    from ..data.bench import load_bench
    from ..data.dataset import load_instit_dataset
    from ..quant.calib import bench_prompt
    from .instructions import Sample, instit_samples

    dense = [s for s in instit_samples(load_instit_dataset(world / "dataset"), 2, seed)
             if s.kind in ("list", "frame_list", "change")]
    qa = []
    for it in load_bench(world / "bench"):
        media = {"image": it.image_path} if it.split == "image" else {"frames": list(it.frame_paths)}
        qa.append(Sample([(bench_prompt(it), it.answer)], kind=f"{it.split}-{it.format}", **media))
    return dense, qa


def train_vlm(model, processor, dense, qa, steps: int, lr: float = 1e-3, batch: int = 8, dense_frac: float = 0.3,
              log=print) -> dict:
    import random

    import torch

    from .encode import build_batch, encode_text

    for p in model.parameters():
        p.requires_grad = False
    for mod in (model.model.multi_modal_projector, model.model.language_model, model.lm_head):
        for p in mod.parameters():
            p.requires_grad = True
    model.model.image_newline.requires_grad = True
    tok = processor.tokenizer
    enc_d = [encode_text(s, tok, "vicuna_v1") for s in dense]
    enc_q = [encode_text(s, tok, "vicuna_v1") for s in qa]
    rows = FrozenVisionRows(model, processor)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    rng = random.Random(0)
    model.train()
    t0 = time.perf_counter()
    losses = []
    for step in range(steps):
        frac = dense_frac * max(0.0, 1 - step / (0.6 * steps))  # curriculum: dense captions fade out
        picks = [(dense, enc_d) if rng.random() < frac else (qa, enc_q) for _ in range(batch)]
        chosen = [(src[i], enc[i]) for src, enc in picks for i in [rng.randrange(len(src))]]
        embeds, mask, labels = build_batch(model, rows, [c[0] for c in chosen], [c[1] for c in chosen])
        out = model(inputs_embeds=embeds, attention_mask=mask, labels=labels)
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(float(out.loss))
        if step % 50 == 0 or step == steps - 1:
            log(f"vlm step {step + 1}/{steps} loss {np.mean(losses[-50:]):.3f} "
                f"({(step + 1) * batch / (time.perf_counter() - t0):.1f} samples/s)")
    model.eval()
    return {"steps": steps, "final_loss": float(np.mean(losses[-50:])), "seconds": time.perf_counter() - t0,
            "samples_per_s": steps * batch / (time.perf_counter() - t0)}


class FrozenVisionRows:
    """Image rows for a frozen vision tower: tower features cached once, projector + packing with gradients."""

    def __init__(self, model, processor):
        from .encode import MediaEncoder

        self.model = model
        self.enc = MediaEncoder(model, processor)
        self.cache: dict[int, tuple] = {}

    def _features(self, crops):
        import torch

        inner = self.model.model
        with torch.no_grad():
            h = inner.vision_tower(torch.from_numpy(crops), output_hidden_states=True).hidden_states
            h = h[self.model.config.vision_feature_layer]
            return h[:, 1:] if self.model.config.vision_feature_select_strategy == "default" else h

    def rows(self, sample):
        import torch
        import torch.nn.functional as F
        from PIL import Image

        from ..runtime.anyres import load_image
        from ..runtime.media import load_frames

        key = id(sample)
        if key not in self.cache:
            if sample.image is not None:
                crops, hw = self.enc.pre.crops(load_image(sample.image), anyres=True)
                self.cache[key] = ("image", self._features(crops), hw)
            else:
                frames = load_frames(sample.frames, 32)
                crops = np.concatenate([self.enc.pre.crops(Image.fromarray(f), anyres=False)[0] for f in frames])
                self.cache[key] = ("video", self._features(crops), None)
        kind, feats, hw = self.cache[key]
        inner = self.model.model
        x = inner.multi_modal_projector(feats)
        if kind == "image":
            packed, _ = inner.pack_image_features([x], torch.tensor([hw]), self.model.config.vision_feature_select_strategy,
                                                  image_newline=inner.image_newline)
            return packed[0]
        n, t, d = x.shape
        side = int(round(t ** 0.5))
        g = F.avg_pool2d(x.reshape(n, side, side, d).permute(0, 3, 1, 2), 2, 2, ceil_mode=True)
        return g.permute(0, 2, 3, 1).reshape(-1, d)


def build_default(out: str | Path, seed: int = 0, n_images: int = 600, n_videos: int = 120, vision_steps: int = 600,
                  vlm_steps: int = 3000, batch: int = 8, log=print) -> dict:
    """Build the world, train both stages, save an HF checkpoint + model card at ``out``."""
    import tempfile

    import torch

    from ..atomic import atomic_dir
    from ..data.synth import build_world
    from ..models.loading import load_model
    from ..models.tiny import build_tiny

    torch.manual_seed(seed)
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="instit-default-"))
    world = work / "world"
    build_world(world, seed=1000 + seed, n_images=n_images, n_videos=n_videos, image_size=(IMAGE, IMAGE),
                n_train_images=n_images, n_train_videos=n_videos)
    log(f"world: {n_images} + {n_images} images, {n_videos} + {n_videos} videos at {IMAGE}x{IMAGE}")
    base = build_tiny(work / "base", default_spec(seed))
    model, processor = load_model(base)
    vis = pretrain_vision(model, processor, world, vision_steps, log=log)
    dense, qa = vlm_samples(world, seed)
    vlm = train_vlm(model, processor, dense, qa, vlm_steps, batch=batch, log=log)
    card = {"recipe": __doc__.strip().splitlines()[0], "seed": seed, "world_seed": 1000 + seed,
            "image_size": IMAGE, "patch_size": PATCH, "vision": vis, "vlm": vlm,
            "samples": {"dense": len(dense), "qa": len(qa)}, "hardware": _hardware(),
            "train_seconds": round(time.perf_counter() - t0, 1)}
    with atomic_dir(out, force=True) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / "training.json").write_text(json.dumps(card, indent=2, default=str))
    return card


def _hardware() -> str:
    import os
    import platform

    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Train the embedded default model (make train-default).")
    ap.add_argument("--out", default="models/default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--videos", type=int, default=120)
    ap.add_argument("--vision-steps", type=int, default=600)
    ap.add_argument("--vlm-steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=8)
    a = ap.parse_args()
    print(json.dumps(build_default(a.out, a.seed, a.images, a.videos, a.vision_steps, a.vlm_steps, a.batch),
                     indent=2, default=str))
