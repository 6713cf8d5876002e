"""Unmarked synthetic videos with ground-truth tracks, and tracking metrics, for marker tests and benchmarks.

The synthetic Inst-IT world (:mod:`instit_edge.data.synth`) writes *marked*
frames (IDs already drawn), which a marker must not see. This module renders
unmarked clips from the same ingredients (:func:`~instit_edge.drawing.shape_mask`,
:data:`~instit_edge.drawing.COLORS`):

* :func:`moving_shapes`: shapes on straight, well-separated paths at camera
  frame rates (a few pixels per frame), optionally hidden for a span of
  frames (an occlusion) and preceded by background-only warm-up frames;
* :func:`world_clips`: the world's videos re-rendered without marks from its
  ``ground_truth.json`` and label-map PNGs (keyframe-like: objects jump
  4-8% of the width between frames, appear and disappear, some stay still).

:func:`track_metrics` scores a tracker's output against the ground truth
(recall, precision, ID switches) with per-frame IoU matching.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from instit_edge.drawing import COLORS, shape_mask

Box = tuple[int, int, int, int]


@dataclass
class Clip:
    """Frames (RGB uint8) and per-frame ground truth ``{track_id: box}`` (boxes x1/y1 exclusive)."""

    name: str
    frames: list[np.ndarray]
    gt: list[dict[int, Box]]
    fps: float = 30.0
    masks: list[dict[int, np.ndarray]] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        h, w = self.frames[0].shape[:2]
        return w, h

    def write_video(self, path) -> Path:
        """Write an mp4v MP4 (BGR) and return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        w, h = self.size
        vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
        try:
            for f in self.frames:
                vw.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
        finally:
            vw.release()
        return path

    def write_frames(self, folder) -> Path:
        """Write ``frame_0001.png`` ... into ``folder`` (lossless) and return it."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for k, f in enumerate(self.frames, 1):
            cv2.imwrite(str(folder / f"frame_{k:04d}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
        return folder


def _backdrop(rng, w: int, h: int) -> np.ndarray:
    base = rng.integers(60, 100)
    img = np.full((h, w, 3), base, np.float32) + rng.integers(-10, 11, 3)
    small = rng.normal(0, 6, (max(2, h // 32), max(2, w // 32), 1)).astype(np.float32)
    img += cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)[:, :, None]
    return np.clip(img, 0, 255).astype(np.uint8)


def _textured(rng, color, mask: np.ndarray, frame: np.ndarray, amp: float) -> None:
    ys, xs = np.nonzero(mask)
    c = np.asarray(color, np.float32)
    if amp > 0:
        shade = rng.normal(0, amp, (len(ys), 1)).astype(np.float32)
        frame[ys, xs] = np.clip(c + shade, 0, 255).astype(np.uint8)
    else:
        frame[ys, xs] = c.astype(np.uint8)


def _box_of(mask: np.ndarray) -> Box | None:
    x, y, w, h = cv2.boundingRect(mask.view(np.uint8))
    return None if w == 0 or h == 0 else (x, y, x + w, y + h)


def moving_shapes(seed: int = 0, n_objects: int = 4, n_frames: int = 60, size=(640, 480), *,
                  speed=(2.0, 5.0), radius=(0.07, 0.11), warmup: int = 0, hidden: dict | None = None,
                  gap: float = 0.06, noise: float = 2.0, texture: float = 6.0, fps: float = 30.0,
                  with_masks: bool = False, name: str | None = None) -> Clip:
    """Shapes moving on straight lines that stay inside the frame and never come closer than ``gap``.

    ``radius`` is a fraction of ``min(W, H)``; ``speed`` in pixels per frame;
    ``warmup`` background-only frames come first (objects appear together at
    frame ``warmup``); ``hidden`` maps an object index (0-based) to a
    ``range`` of frame indices where it is not drawn (an occlusion); ground
    truth excludes hidden objects. Track IDs in the ground truth are 1..n.
    """
    W, H = int(size[0]), int(size[1])
    rng = np.random.default_rng(seed)
    side = min(W, H)
    hidden = hidden or {}
    colors = list(COLORS)
    shapes = ("circle", "square", "triangle", "star", "ring", "cross")
    T = n_frames - warmup
    objs: list[dict] = []
    for k in range(n_objects):
        for _try in range(400):
            r = rng.uniform(*radius) * side
            er = r * 1.15
            sp = rng.uniform(*speed)
            ang = rng.uniform(0, 2 * math.pi)
            vx, vy = sp * math.cos(ang), sp * math.sin(ang)
            lo_x, hi_x = er + 2 - min(0, vx * T), W - er - 2 - max(0, vx * T)
            lo_y, hi_y = er + 2 - min(0, vy * T), H - er - 2 - max(0, vy * T)
            if lo_x >= hi_x or lo_y >= hi_y:
                continue
            x0, y0 = rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)
            ok = True
            for o in objs:
                dx0, dy0 = x0 - o["x0"], y0 - o["y0"]
                dvx, dvy = vx - o["vx"], vy - o["vy"]
                # closest approach of two straight paths over t in [0, T]
                tt = 0.0 if dvx == dvy == 0 else min(T, max(0.0, -(dx0 * dvx + dy0 * dvy) / (dvx ** 2 + dvy ** 2)))
                if math.hypot(dx0 + dvx * tt, dy0 + dvy * tt) < er + o["er"] + gap * side:
                    ok = False
                    break
            if ok:
                objs.append(dict(x0=x0, y0=y0, vx=vx, vy=vy, r=r, er=er, color=COLORS[colors[k % len(colors)]],
                                 shape=shapes[int(rng.integers(0, len(shapes)))]))
                break
        else:
            raise ValueError(f"cannot place {n_objects} separated objects in {W}x{H}; use fewer or smaller ones")
    bg = _backdrop(rng, W, H)
    frames, gts, masks = [], [], []
    tex_rng = np.random.default_rng(seed + 7919)
    for f in range(n_frames):
        img = bg.copy()
        gt, mk = {}, {}
        if f >= warmup:
            t = f - warmup
            for k, o in enumerate(objs):
                if f in hidden.get(k, ()):
                    continue
                m = shape_mask(o["shape"], o["x0"] + o["vx"] * t, o["y0"] + o["vy"] * t, o["r"], H, W)
                _textured(tex_rng, o["color"], m, img, texture)
                box = _box_of(m)
                if box is not None:
                    gt[k + 1] = box
                    if with_masks:
                        mk[k + 1] = m
        if noise > 0:
            n = tex_rng.normal(0, noise, img.shape).astype(np.float32)
            img = np.clip(img.astype(np.float32) + n, 0, 255).astype(np.uint8)
        frames.append(img)
        gts.append(gt)
        masks.append(mk)
    return Clip(name or f"shapes-{seed}", frames, gts, fps, masks if with_masks else [])


def easy_set(n_clips: int = 3, size=(320, 240), n_frames: int = 45, seed: int = 0, **kw) -> list[Clip]:
    """The easy set: well-separated shapes (3-4 per clip) on straight paths at camera rates."""
    return [moving_shapes(seed + k, n_objects=3 + k % 2, n_frames=n_frames, size=size, **kw) for k in range(n_clips)]


def world_clips(world, part: str = "bench", noise: float = 1.5) -> list[Clip]:
    """The world's videos (``ground_truth.json`` + label maps), re-rendered without marks.

    Pixels of instance ``i`` take its colour; the rest is a plain backdrop of
    the scene's tone. Ground-truth IDs are the world's instance IDs.
    """
    world = Path(world)
    gt = json.loads((world / "ground_truth.json").read_text())
    clips = []
    for sid, rec in sorted(gt[part]["videos"].items()):
        W, H = rec["width"], rec["height"]
        rng = np.random.default_rng(zlib.crc32(f"{part}/{sid}".encode()))
        bg = _backdrop(rng, W, H)
        frames, gts, masks = [], [], []
        for fr in rec["frames"]:
            lm = cv2.imread(str(world / fr["mask_path"]), cv2.IMREAD_UNCHANGED)
            img = bg.copy()
            g, mk = {}, {}
            for key, inst in fr["instances"].items():
                m = lm == int(key)
                img[m] = COLORS[inst["color"]]
                g[int(key)] = tuple(int(v) for v in inst["box"])
                mk[int(key)] = m
            if noise > 0:
                img = np.clip(img + rng.normal(0, noise, img.shape), 0, 255).astype(np.uint8)
            frames.append(img)
            gts.append(g)
            masks.append(mk)
        clips.append(Clip(f"world-{part}-{sid}", frames, gts, 2.0, masks))
    return clips


# --------------------------------------------------------------------------- metrics


def track_metrics(gt_frames, pred_frames, iou: float = 0.5) -> dict:
    """Recall, precision and ID switches of predicted ``{id: box}`` frames against ground truth.

    Per frame, ground truth and predictions are matched one-to-one
    (Hungarian on IoU, pairs with IoU >= ``iou``). An ID switch is counted when
    a ground-truth track is matched to a different predicted ID than the last
    time it was matched (CLEAR-MOT). Also returns ``ids_per_track``: the
    predicted IDs each ground-truth track was given.
    """
    from instit_edge.marker.tracker import assign, iou_matrix

    if len(gt_frames) != len(pred_frames):
        raise ValueError(f"{len(gt_frames)} ground-truth frames but {len(pred_frames)} predicted frames")
    n_gt = n_pred = n_match = switches = 0
    last: dict = {}
    ids: dict = {}
    for g, p in zip(gt_frames, pred_frames):
        gk, pk = list(g), list(p)
        n_gt += len(gk)
        n_pred += len(pk)
        if not gk or not pk:
            continue
        m = iou_matrix([g[k] for k in gk], [p[k] for k in pk])
        for i, j in assign(1.0 - m, 1.0 - iou):
            n_match += 1
            gid, pid = gk[i], pk[j]
            if gid in last and last[gid] != pid:
                switches += 1
            last[gid] = pid
            ids.setdefault(gid, [])
            if pid not in ids[gid]:
                ids[gid].append(pid)
    return {"recall": n_match / n_gt if n_gt else 1.0, "precision": n_match / n_pred if n_pred else 1.0,
            "id_switches": switches, "gt_boxes": n_gt, "pred_boxes": n_pred, "matched": n_match,
            "ids_per_track": {int(k): v for k, v in ids.items()}}
