"""A synthetic Inst-IT world: scenes with known instances, marks, questions and captions.

Each scene holds 2-6 instances with a colour, a shape (convex and non-convex:
ring, star, cross), a size and a position; videos (4-16 frames) move them,
make them appear and disappear, and keep their IDs. Everything is drawn with
OpenCV, the Set-of-Marks visual prompts with :mod:`instit_edge.marker.render`
(style ``"mask+id"``), and the instance masks are exact, so every answer is
known. :func:`build_world` writes::

    out/bench/            Inst-IT Bench, JSON layout (image/video x MC/OE)
    out/bench_parquet/    the same questions in the hub parquet layout
    out/dataset/          Inst-IT Dataset layout (separate training scenes)
    out/masks/            per-image / per-frame label maps (PNG, pixel = ID)
    out/ground_truth.json boxes, centres, areas, attributes, label boxes, tracks

It is deterministic for a seed: the same arguments give byte-identical files.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from instit_edge.drawing import COLORS, SHAPES, shape_mask
from instit_edge.errors import InstitError

SIZES = {"small": 0.075, "large": 0.125}  # radius as a fraction of min(W, H)
# ... but never so small that the ID label (~12 x 16 px at any size under 800 px) hides most of the instance.
# At 128 x 128 the fractions alone gave small radii of 9.6 px, and 47% of the instances were less than half
# visible outside their label (their colour and shape unreadable, by a person too: small stars and triangles
# were a few pixels around the label); with these floors none is (median visible share 0.75; 3.0 instances
# per image instead of 4.2). Worlds of 200 px and up are unchanged.
MIN_RADIUS_PX = {"small": 17.0, "large": 23.0}
IMAGE_SIZES = ((336, 336), (448, 336), (336, 448), (512, 288), (384, 384))
DIRECTIONS = ("left", "right", "up", "down")
STILL = "it does not move"
CATEGORIES_IMAGE = ("color", "shape", "position", "extreme", "relation", "nearest", "count")
CATEGORIES_VIDEO = ("appear", "disappear", "movement", "change", "count", "color")
_EXTENT = 1.15  # bounding radius of any shape / r
_MOVE_TEXT = {"left": "moves to the left", "right": "moves to the right", "up": "moves up", "down": "moves down"}


def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")


# --------------------------------------------------------------------------
# drawing
# --------------------------------------------------------------------------


def _background(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, str]:
    """A plain or lightly textured dark-to-mid background (all object colours contrast with it)."""
    tint = rng.integers(-12, 13, 3)
    base = int(rng.integers(55, 105))
    color = np.clip(base + tint, 30, 130).astype(np.float32)
    kind = ("plain", "textured", "gradient")[int(rng.integers(0, 3))]
    img = np.empty((height, width, 3), np.float32)
    img[:] = color
    if kind == "textured":
        small = rng.normal(0, 7, (max(2, height // 24), max(2, width // 24))).astype(np.float32)
        img += cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)[:, :, None]
    elif kind == "gradient":
        ramp = np.linspace(-14, 14, height, dtype=np.float32)[:, None, None]
        img += ramp
    name = "dark" if base < 75 else "gray"
    return np.clip(img, 0, 255).astype(np.uint8), f"{kind} {name}"


def _h_pos(cx: float, width: int) -> str:
    return "left" if cx < width / 3 else ("center" if cx < 2 * width / 3 else "right")


def _v_pos(cy: float, height: int) -> str:
    return "top" if cy < height / 3 else ("middle" if cy < 2 * height / 3 else "bottom")


def position_name(cx: float, cy: float, width: int, height: int) -> str:
    """``"top-left"`` ... ``"bottom-right"``; the middle cell is ``"center"``."""
    h, v = _h_pos(cx, width), _v_pos(cy, height)
    return "center" if (h, v) == ("center", "middle") else f"{v}-{h}"


_CELLS = [(v, h) for v in ("top", "middle", "bottom") for h in ("left", "center", "right")]


def _cell_name(v: str, h: str) -> str:
    return "center" if (h, v) == ("center", "middle") else f"{v}-{h}"


# --------------------------------------------------------------------------
# scenes
# --------------------------------------------------------------------------


@dataclass
class _Inst:
    id: int
    color: str
    shape: str
    size: str
    r: float
    cx: float = 0.0  # image scenes; videos use ``pos``
    cy: float = 0.0
    # video tracks: 1-based visible interval [a, b] and positions per frame
    a: int = 1
    b: int = 1
    direction: str | None = None
    pos: dict[int, tuple[float, float]] = field(default_factory=dict)

    @property
    def er(self) -> float:
        return self.r * _EXTENT

    def desc(self) -> str:
        return f"{self.size} {self.color} {self.shape}"


@dataclass
class _Scene:
    sid: str
    width: int
    height: int
    background: np.ndarray
    background_name: str
    insts: list[_Inst]
    n_frames: int = 1  # 1 for images


def radius(size: str, side: int) -> float:
    """An instance's radius in pixels for its size class in an image whose shorter side is ``side``."""
    return max(SIZES[size] * side, MIN_RADIUS_PX[size])


def _pick_size(rng, image_size) -> tuple[int, int]:
    if image_size is not None:
        return int(image_size[0]), int(image_size[1])
    return IMAGE_SIZES[int(rng.integers(0, len(IMAGE_SIZES)))]


def _attrs(rng) -> tuple[str, str, str]:
    names = list(COLORS)
    return (names[int(rng.integers(0, len(names)))], SHAPES[int(rng.integers(0, len(SHAPES)))],
            ("small", "large")[int(rng.integers(0, 2))])


def _near_third(v: float, extent: int) -> bool:
    return min(abs(v - extent / 3), abs(v - 2 * extent / 3)) < 0.05 * extent


def _image_scene(rng, sid: str, image_size) -> _Scene:
    W, H = _pick_size(rng, image_size)
    bg, bg_name = _background(rng, W, H)
    side = min(W, H)
    gap, margin = 0.05 * side, 0.03 * side
    want = int(rng.integers(2, 7))
    insts: list[_Inst] = []
    for _ in range(want):
        color, shape, size = _attrs(rng)
        for sz in (size, "small"):
            r = radius(sz, side)
            er = r * _EXTENT
            for _try in range(60):
                cx = rng.uniform(er + margin, W - er - margin)
                cy = rng.uniform(er + margin, H - er - margin)
                if _near_third(cx, W) or _near_third(cy, H):
                    continue
                if all(math.hypot(cx - o.cx, cy - o.cy) >= er + o.er + gap for o in insts):
                    insts.append(_Inst(len(insts) + 1, color, shape, sz, r, cx, cy))
                    break
            else:
                continue
            break
    if len(insts) < 2:  # practically unreachable; keep the 2-instance minimum
        return _image_scene(rng, sid, image_size)
    order = rng.permutation(len(insts))  # IDs are not tied to placement order
    for new_id, k in enumerate(order, 1):
        insts[k].id = new_id
    insts.sort(key=lambda i: i.id)
    return _Scene(sid, W, H, bg, bg_name, insts)


def _video_scene(rng, sid: str, image_size) -> _Scene:
    W, H = _pick_size(rng, image_size)
    bg, bg_name = _background(rng, W, H)
    side = min(W, H)
    gap, margin = 0.05 * side, 0.03 * side
    n = int(rng.integers(4, 17))
    n_tracks = int(rng.integers(3, 7))
    tracks: list[_Inst] = []
    for k in range(n_tracks):
        color, shape, size = _attrs(rng)
        a, b = 1, n
        if k >= 2:
            if rng.random() < 0.6:
                a = int(rng.integers(2, n))  # 2..n-1
            if rng.random() < 0.5 and a + 1 <= n - 1:
                b = int(rng.integers(a + 1, n))  # a+1..n-1
        moves = rng.random() < 0.7
        direction = DIRECTIONS[int(rng.integers(0, 4))] if moves else None
        placed = None
        for sz in (size, "small"):
            r = radius(sz, side)
            er = r * _EXTENT
            for _try in range(60):
                dirn = direction if _try < 40 else None
                steps = max(1, b - a)
                lo_x, hi_x = er + margin, W - er - margin
                lo_y, hi_y = er + margin, H - er - margin
                vx = vy = 0.0
                if dirn in ("left", "right"):
                    speed = min(rng.uniform(0.04, 0.08) * W, 0.8 * (hi_x - lo_x) / steps)
                    vx = speed if dirn == "right" else -speed
                elif dirn in ("up", "down"):
                    speed = min(rng.uniform(0.04, 0.08) * H, 0.8 * (hi_y - lo_y) / steps)
                    vy = speed if dirn == "down" else -speed
                tx, ty = vx * (b - a), vy * (b - a)
                x0 = rng.uniform(max(lo_x, lo_x - tx), min(hi_x, hi_x - tx))
                y0 = rng.uniform(max(lo_y, lo_y - ty), min(hi_y, hi_y - ty))
                pos = {t: (x0 + vx * (t - a), y0 + vy * (t - a)) for t in range(a, b + 1)}
                ok = True
                for o in tracks:
                    for t in range(max(a, o.a), min(b, o.b) + 1):
                        (px, py), (qx, qy) = pos[t], o.pos[t]
                        if math.hypot(px - qx, py - qy) < er + o.er + gap:
                            ok = False
                            break
                    if not ok:
                        break
                if ok:
                    placed = _Inst(0, color, shape, sz, r, a=a, b=b, direction=dirn, pos=pos)
                    break
            if placed is not None:
                break
        if placed is not None:
            tracks.append(placed)
    # IDs in order of first appearance (ties broken at random), starting at 1
    keys = rng.random(len(tracks))
    for new_id, k in enumerate(sorted(range(len(tracks)), key=lambda k: (tracks[k].a, keys[k])), 1):
        tracks[k].id = new_id
    tracks.sort(key=lambda i: i.id)
    if len(tracks) < 2 or not all(any(tr.a <= t <= tr.b for tr in tracks) for t in range(1, n + 1)):
        return _video_scene(rng, sid, image_size)
    return _Scene(sid, W, H, bg, bg_name, tracks, n_frames=n)


def _visible(scene: _Scene, t: int) -> list[_Inst]:
    return [i for i in scene.insts if i.a <= t <= i.b]


def _at(inst: _Inst, t: int | None) -> tuple[float, float]:
    return inst.pos[t] if t is not None else (inst.cx, inst.cy)


# --------------------------------------------------------------------------
# rendering a frame
# --------------------------------------------------------------------------


def _render(scene: _Scene, t: int | None, style: str = "mask+id"):
    """(marked RGB image, label map uint8, per-instance ground truth dict); marks drawn in ``style``."""
    from instit_edge.marker.base import Detection
    from instit_edge.marker.render import draw_marks

    W, H = scene.width, scene.height
    img = scene.background.copy()
    label_map = np.zeros((H, W), np.uint8)
    insts = scene.insts if t is None else _visible(scene, t)
    marks, gts = [], {}
    for inst in insts:
        cx, cy = _at(inst, t)
        mask = shape_mask(inst.shape, cx, cy, inst.r, H, W)
        img[mask] = COLORS[inst.color]
        label_map[mask] = inst.id
        x, y, w, h = cv2.boundingRect(mask.view(np.uint8))
        marks.append(Detection((x, y, x + w, y + h), mask, id=inst.id))
        gts[str(inst.id)] = {
            "color": inst.color, "shape": inst.shape, "size": inst.size,
            "box": [x, y, x + w, y + h], "center": [round(cx, 2), round(cy, 2)],
            "area": int(np.count_nonzero(mask)), "position": position_name(cx, cy, W, H),
        }
    out, labels = draw_marks(img, marks, style=style, return_labels=True)
    for lab in labels:
        gts[str(lab.id)]["label_rect"] = list(lab.rect)
        gts[str(lab.id)]["label_center"] = list(lab.center)
    return out, label_map, gts


_JPEG = [int(cv2.IMWRITE_JPEG_QUALITY), 95]
_PNG = [int(cv2.IMWRITE_PNG_COMPRESSION), 1]


def _save(path: Path, rgb: np.ndarray, label_map: np.ndarray, mask_path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), rgb[..., ::-1], _JPEG) or not cv2.imwrite(str(mask_path), label_map, _PNG):
        raise InstitError(f"cannot write {path} (check free disk space and permissions)")


# --------------------------------------------------------------------------
# questions
# --------------------------------------------------------------------------


@dataclass
class _Q:
    category: str
    question: str
    correct: str
    distractors: list[str]
    oe_answer: str


def _pick(rng, pool, k, first=()):
    """k distinct items: from ``first`` (shuffled) before the rest of ``pool`` (shuffled)."""
    first = [x for x in dict.fromkeys(first)]
    rest = [x for x in dict.fromkeys(pool) if x not in first]
    first = [first[i] for i in rng.permutation(len(first))] if first else []
    rest = [rest[i] for i in rng.permutation(len(rest))] if rest else []
    return (first + rest)[:k]


def _nearest_numbers(rng, value: int, lo: int, hi: int, k: int = 3) -> list[str]:
    cands = [v for v in range(lo, hi + 1) if v != value]
    cands.sort(key=lambda v: (abs(v - value), rng.random()))
    return [str(v) for v in cands[:k]]


def _count_answer(c: int, what_one: str, what_many: str, ids: list[int], where: str) -> str:
    from instit_edge.prompting import format_ids

    if c == 0:
        return f"There are no {what_many} {where}."
    if c == 1:
        return f"There is 1 {what_one} {where}: {format_ids(ids)}."
    return f"There are {c} {what_many} {where}: {format_ids(ids)}."


def _relation(a: _Inst, b: _Inst, W: int, H: int, t=None) -> str | None:
    """Where ``a`` is relative to ``b`` when it is unambiguous."""
    (ax, ay), (bx, by) = _at(a, t), _at(b, t)
    dx, dy = ax - bx, ay - by
    if abs(dx) >= 1.5 * abs(dy) and abs(dx) > 0.12 * W:
        return "to the left of" if dx < 0 else "to the right of"
    if abs(dy) >= 1.5 * abs(dx) and abs(dy) > 0.12 * H:
        return "above" if dy < 0 else "below"
    return None


def _image_questions(rng, s: _Scene) -> list[_Q]:
    W, H, insts = s.width, s.height, s.insts
    ids = [i.id for i in insts]
    cands: dict[str, _Q] = {}
    x = insts[int(rng.integers(0, len(insts)))]
    cands["color"] = _Q("color", f"What is the color of [{x.id}]?", x.color,
                        _pick(rng, [c for c in COLORS if c != x.color], 3,
                              [i.color for i in insts if i.color != x.color]),
                        f"[{x.id}] is {x.color}.")
    x = insts[int(rng.integers(0, len(insts)))]
    cands["shape"] = _Q("shape", f"What is the shape of [{x.id}]?", x.shape,
                        _pick(rng, [sh for sh in SHAPES if sh != x.shape], 3,
                              [i.shape for i in insts if i.shape != x.shape]),
                        f"[{x.id}] is a {x.shape}.")
    x = insts[int(rng.integers(0, len(insts)))]
    pos = position_name(x.cx, x.cy, W, H)
    v0, h0 = _v_pos(x.cy, H), _h_pos(x.cx, W)
    vi, hi = ("top", "middle", "bottom").index(v0), ("left", "center", "right").index(h0)
    near = [_cell_name(v, h) for v, h in _CELLS
            if max(abs(("top", "middle", "bottom").index(v) - vi), abs(("left", "center", "right").index(h) - hi)) == 1]
    where = "the center of the image" if pos == "center" else f"the {pos} of the image"
    cands["position"] = _Q("position", f"Where is [{x.id}] located in the image?", pos,
                           _pick(rng, [_cell_name(v, h) for v, h in _CELLS if _cell_name(v, h) != pos], 3, near),
                           f"[{x.id}] is at {where}.")
    if len(insts) >= 4:
        for word in [("leftmost", "rightmost", "topmost", "bottommost")[k] for k in rng.permutation(4)]:
            axis, sign = {"leftmost": (0, 1), "rightmost": (0, -1), "topmost": (1, 1), "bottommost": (1, -1)}[word]
            centre = sorted(insts, key=lambda i: sign * (i.cx, i.cy)[axis])
            edge = sorted(insts, key=lambda i: sign * (i.cx, i.cy)[axis] - i.er)
            span = (W, H)[axis]
            c0, c1 = (centre[0].cx, centre[0].cy)[axis], (centre[1].cx, centre[1].cy)[axis]
            if centre[0] is edge[0] and abs(c0 - c1) > 0.08 * span:
                win = centre[0]
                cands["extreme"] = _Q("extreme", f"Which instance is the {word} in the image?", f"[{win.id}]",
                                      _pick(rng, [f"[{i}]" for i in ids if i != win.id], 3),
                                      f"[{win.id}] is the {word} instance.")
                break
    pairs = [(a, b) for a in insts for b in insts if a is not b and _relation(a, b, W, H)]
    if pairs:
        a, b = pairs[int(rng.integers(0, len(pairs)))]
        rel = _relation(a, b, W, H)
        cands["relation"] = _Q("relation", f"Complete the sentence: [{a.id}] is ___ [{b.id}].", rel,
                               [r for r in ("to the left of", "to the right of", "above", "below") if r != rel],
                               f"[{a.id}] is {rel} [{b.id}].")
    if len(insts) >= 5:
        for k in rng.permutation(len(insts)):
            a = insts[int(k)]
            others = sorted((math.hypot(o.cx - a.cx, o.cy - a.cy), o.id) for o in insts if o is not a)
            if others[0][0] < 0.75 * others[1][0]:
                win = others[0][1]
                cands["nearest"] = _Q("nearest", f"Which instance is nearest to [{a.id}]?", f"[{win}]",
                                      _pick(rng, [f"[{o}]" for _, o in others[1:]], 3),
                                      f"[{win}] is the instance nearest to [{a.id}].")
                break
    if rng.random() < 0.5:
        present = rng.random() < 0.8  # mostly ask about something in the scene, sometimes about a 0 count
        value = (insts[int(rng.integers(0, len(insts)))].color if present
                 else list(COLORS)[int(rng.integers(0, len(COLORS)))])
        hits = [i.id for i in insts if i.color == value]
        q = f"How many {value} instances are there in the image?"
        one, many = f"{value} instance", f"{value} instances"
    else:
        present = rng.random() < 0.8
        value = (insts[int(rng.integers(0, len(insts)))].shape if present
                 else SHAPES[int(rng.integers(0, len(SHAPES)))])
        hits = [i.id for i in insts if i.shape == value]
        q = f"How many {_plural(value)} are there in the image?"
        one, many = value, _plural(value)
    cands["count"] = _Q("count", q, str(len(hits)), _nearest_numbers(rng, len(hits), 0, 7),
                        _count_answer(len(hits), one, many, hits, "in the image"))
    keys = list(cands)
    keys = [keys[i] for i in rng.permutation(len(keys))]
    k = min(len(keys), int(rng.integers(3, 5)))
    return [cands[c] for c in sorted(keys[:k], key=CATEGORIES_IMAGE.index)]


def _displacement(inst: _Inst, s: int, e: int) -> tuple[float, float]:
    (x0, y0), (x1, y1) = inst.pos[s], inst.pos[e]
    return x1 - x0, y1 - y0


def _video_questions(rng, s: _Scene) -> list[_Q]:
    n, tracks = s.n_frames, s.insts
    ids = [i.id for i in tracks]
    special: dict[str, _Q] = {}
    late = [i for i in tracks if i.a > 1]
    if late:
        x = late[int(rng.integers(0, len(late)))]
        frames = sorted((f for f in range(1, n + 1) if f != x.a), key=lambda f: (abs(f - x.a), rng.random()))[:5]
        special["appear"] = _Q("appear", f"In which frame does [{x.id}] first appear?", f"<{x.a}>",
                               [f"<{f}>" for f in _pick(rng, frames, 3)], f"[{x.id}] first appears in <{x.a}>.")
    gone = [i for i in tracks if i.b < n and sum(1 for o in tracks if o.b == i.b) == 1]
    if gone and len(tracks) >= 4:
        x = gone[int(rng.integers(0, len(gone)))]
        t = x.b + 1
        seen_before = [f"[{o.id}]" for o in tracks if o is not x and o.a <= t - 1 <= o.b]
        special["disappear"] = _Q("disappear", f"Which instance disappears at <{t}>?", f"[{x.id}]",
                                  _pick(rng, [f"[{i}]" for i in ids if i != x.id], 3, seen_before),
                                  f"[{x.id}] disappears at <{t}>; it is last seen in <{t - 1}>.")
    movers = []
    for i in tracks:
        if i.b - i.a < 1:
            continue
        side = s.width if i.direction in ("left", "right") else s.height
        if i.direction is None:
            movers.append((i, i.a, i.b))
            continue
        spans = [(p, q) for p in range(i.a, i.b + 1) for q in range(p + 1, i.b + 1)
                 if max(map(abs, _displacement(i, p, q))) >= 0.1 * side]
        if spans:
            p, q = spans[int(rng.integers(0, len(spans)))]
            movers.append((i, p, q))
    if movers:
        x, p, q = movers[int(rng.integers(0, len(movers)))]
        if x.direction is None and x.b - x.a >= 2:
            p = int(rng.integers(x.a, x.b))
            q = int(rng.integers(p + 1, x.b + 1))
        correct = x.direction or STILL
        oe = (f"[{x.id}] {_MOVE_TEXT[x.direction]} between <{p}> and <{q}>." if x.direction
              else f"[{x.id}] does not move between <{p}> and <{q}>.")
        special["movement"] = _Q("movement", f"In which direction does [{x.id}] move between <{p}> and <{q}>?",
                                 correct, _pick(rng, [d for d in (*DIRECTIONS, STILL) if d != correct], 3), oe)
    events = []
    for t in range(2, n + 1):
        ev = [(i, "appears") for i in tracks if i.a == t] + [(i, "disappears") for i in tracks if i.b == t - 1]
        if len(ev) == 1:
            events.append((t, *ev[0]))
    if events:
        t, x, what = events[int(rng.integers(0, len(events)))]
        false = [f"[{i.id}] appears" for i in tracks if i.a != t] + \
                [f"[{i.id}] disappears" for i in tracks if i.b != t - 1 and i is not x]
        oe = (f"[{x.id}] appears in <{t}>; it is not visible in <{t - 1}>." if what == "appears"
              else f"[{x.id}] disappears: it is visible in <{t - 1}> but not in <{t}>.")
        false = [f for f in false if f != f"[{x.id}] {what}"]
        if len(set(false)) >= 3:  # two tracks give only two false statements: no four-way question then
            special["change"] = _Q("change", f"What changes between <{t - 1}> and <{t}>?", f"[{x.id}] {what}",
                                   _pick(rng, false, 3), oe)
    generic: dict[str, _Q] = {}
    t = int(rng.integers(1, n + 1))
    vis = [i.id for i in _visible(s, t)]
    generic["count"] = _Q("count", f"How many instances are visible in <{t}>?", str(len(vis)),
                          _nearest_numbers(rng, len(vis), 1, 8),
                          _count_answer(len(vis), "instance", "instances", vis, f"visible in <{t}>"))
    x = tracks[int(rng.integers(0, len(tracks)))]
    generic["color"] = _Q("color", f"What is the color of [{x.id}]?", x.color,
                          _pick(rng, [c for c in COLORS if c != x.color], 3,
                                [i.color for i in tracks if i.color != x.color]),
                          f"[{x.id}] is {x.color}.")
    keys = list(special)
    keys = [keys[i] for i in rng.permutation(len(keys))]
    k = int(rng.integers(3, 6))
    chosen = keys[:k]
    for g in [list(generic)[i] for i in rng.permutation(len(generic))]:
        if len(chosen) < k:
            chosen.append(g)
    pool = {**special, **generic}
    return [pool[c] for c in sorted(chosen, key=CATEGORIES_VIDEO.index)]


def _assign_letters(rng, qs: list[_Q]) -> list[tuple[str, dict[str, str]]]:
    """Correct letters exactly balanced over A-D (up to rounding), shuffled; options filled around them."""
    letters = list(np.resize(np.array(list("ABCD")), len(qs)))
    order = rng.permutation(len(qs))
    letters = [str(letters[i]) for i in order]
    out = []
    for q, letter in zip(qs, letters):
        if len(q.distractors) != 3 or len({q.correct, *q.distractors}) != 4:
            raise AssertionError(f"bad options for {q.question!r}: {q.correct!r} {q.distractors!r}")
        rest = [q.distractors[i] for i in rng.permutation(3)]
        k = "ABCD".index(letter)
        opts = rest[:k] + [q.correct] + rest[k:]
        out.append((letter, dict(zip("ABCD", opts))))
    return out


# --------------------------------------------------------------------------
# captions (Inst-IT Dataset)
# --------------------------------------------------------------------------


def _interval(a: int, b: int) -> str:
    return f"<{a}>" if a == b else f"<{a}>-<{b}>"


def _image_captions(s: _Scene, t: int | None = None, what: str = "image") -> tuple[dict[str, str], str]:
    from instit_edge.prompting import format_ids

    W, H = s.width, s.height
    insts = s.insts if t is None else _visible(s, t)
    inst_caps = {}
    for i in insts:
        cx, cy = _at(i, t)
        pos = position_name(cx, cy, W, H)
        where = "the center" if pos == "center" else f"the {pos}"
        cap = f"A {i.desc()} at {where} of the {what}."
        if t is not None and i.direction and i.a < i.b:
            cap += f" It {_MOVE_TEXT[i.direction]}."
        others = sorted((math.hypot(o_x - cx, o_y - cy), o.id, o) for o in insts if o is not i
                        for (o_x, o_y) in [_at(o, t)])
        if others:
            rel = _relation(i, others[0][2], W, H, t)
            if rel:
                cap += f" It is {rel} [{others[0][1]}]."
        inst_caps[str(i.id)] = cap
    parts = []
    for i in insts:
        cx, cy = _at(i, t)
        pos = position_name(cx, cy, W, H)
        parts.append(f"[{i.id}] a {i.desc()} at {'the center' if pos == 'center' else 'the ' + pos}")
    n = len(insts)
    text = (f"The {what} shows {n} instance{'s' if n != 1 else ''} on a {s.background_name} background: "
            + "; ".join(parts) + ".")
    by_color: dict[str, list[int]] = {}
    for i in insts:
        by_color.setdefault(i.color, []).append(i.id)
    for color, group in sorted(by_color.items()):
        if len(group) > 1:
            text += f" {format_ids(group)} are {'both' if len(group) == 2 else 'all'} {color}."
    return inst_caps, text


def _temporal_change(s: _Scene, t: int) -> str:
    W, H = s.width, s.height
    parts = []
    for i in s.insts:
        if i.a == t:
            parts.append(f"[{i.id}] appears at the {position_name(*i.pos[t], W, H)}.")
        elif i.b == t - 1:
            parts.append(f"[{i.id}] disappears.")
        elif i.a <= t - 1 and t <= i.b and i.direction:
            parts.append(f"[{i.id}] {_MOVE_TEXT[i.direction]}.")
    return " ".join(parts) if parts else "Nothing changes."


def _video_caption(s: _Scene) -> str:
    parts = [f"The video has {s.n_frames} frames."]
    for i in s.insts:
        text = f"[{i.id}], a {i.desc()}, is visible in {_interval(i.a, i.b)}"
        if i.direction and i.a < i.b:
            text += f" and {_MOVE_TEXT[i.direction]}"
        elif i.a < i.b:
            text += " and stays still"
        if i.a > 1:
            text += f"; it appears at <{i.a}>"
        if i.b < s.n_frames:
            text += f"; it disappears at <{i.b + 1}>"
        parts.append(text + ".")
    return " ".join(parts)


# --------------------------------------------------------------------------
# the world
# --------------------------------------------------------------------------


def _scene_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), stream, index])


def _inst_gt(s: _Scene) -> dict:
    return {
        str(i.id): {"color": i.color, "shape": i.shape, "size": i.size, "appear": i.a,
                    "disappear": i.b + 1 if i.b < s.n_frames else None,
                    "last_visible": i.b, "direction": i.direction or "none"}
        for i in s.insts
    }


def world_units(n_images: int = 40, n_videos: int = 10, n_train_images=None, n_train_videos=None) -> int:
    """How many ``progress(1)`` calls :func:`build_world` makes (one per scene)."""
    return (n_images + n_videos + (n_images if n_train_images is None else n_train_images)
            + (n_videos if n_train_videos is None else n_train_videos))


def _write_video(tmp: Path, folder: Path, part: str, sid: str, s, style: str = "mask+id") -> tuple[list[Path], dict]:
    """Render, mark and save every frame of a video scene (and its masks); return frame paths and ground truth."""
    frames, fgt = [], []
    for t in range(1, s.n_frames + 1):
        img, lm, gts = _render(s, t, style)
        name = f"frame_{t:03d}"
        _save(folder / f"{name}.jpg", img, lm, tmp / "masks" / part / "videos" / sid / f"{name}.png")
        frames.append(folder / f"{name}.jpg")
        fgt.append({"timestamp": t, "frame_name": f"{name}.jpg",
                    "mask_path": f"masks/{part}/videos/{sid}/{name}.png", "instances": gts})
    gt = {"video_path": folder.relative_to(tmp).as_posix(), "width": s.width, "height": s.height,
          "n_frames": s.n_frames, "background": s.background_name, "tracks": _inst_gt(s), "frames": fgt}
    return frames, gt


def build_world(out, seed: int = 0, n_images: int = 40, n_videos: int = 10, image_size=None,
                progress=None, *, n_train_images: int | None = None, n_train_videos: int | None = None,
                force: bool = False, return_records: bool = False, mark_style: str = "mask+id"):
    """Write a synthetic Inst-IT world under ``out`` and return a summary dict.

    ``image_size``: ``(W, H)`` for every scene, or None for varied sizes.
    ``progress``: optional ``callable(advance: int)``, called once per scene
    (:func:`world_units` gives the total). ``n_train_*``: scenes for the
    training dataset (default: as many as the bench). ``force`` replaces an
    existing ``out`` (only after the new world is complete). With
    ``return_records`` returns ``(summary, bench_items, dataset_records)``.
    ``mark_style``: how the marks are drawn (the scenes, questions and answers
    do not depend on it, so one seed in several styles is a visual-prompt ablation).
    """
    from instit_edge.atomic import atomic_dir, guard_output, write_json
    from instit_edge.data.bench import write_bench_json, write_bench_parquet
    from instit_edge.data.dataset import write_instit_dataset
    from instit_edge.data.records import BenchItem, FrameCaption, ImageRecord, VideoRecord
    from instit_edge.marker.render import STYLES

    if mark_style not in STYLES:
        raise InstitError(f"unknown mark style {mark_style!r}; choose one of {', '.join(STYLES)}")
    if n_images < 0 or n_videos < 0 or n_images + n_videos == 0:
        raise InstitError(f"synth: need at least one image or video (got {n_images} images, {n_videos} videos)")
    if image_size is not None and (len(image_size) != 2 or min(image_size) < 64):
        raise InstitError(f"synth: image size {image_size} is too small (use W,H of at least 64)")
    n_train_images = n_images if n_train_images is None else n_train_images
    n_train_videos = n_videos if n_train_videos is None else n_train_videos
    out = guard_output(out, force=force, marker="ground_truth.json", what="synthetic world")
    if out.exists() and out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    start = time.perf_counter()
    tick = progress or (lambda advance: None)
    width = max(3, len(str(max(n_images, n_videos, n_train_images, n_train_videos, 1))))

    with atomic_dir(out, force=force) as tmp:
        tmp = tmp.resolve()
        gt: dict = {"seed": int(seed), "version": 1, "mark_style": mark_style,
                    "params": {"n_images": n_images, "n_videos": n_videos, "n_train_images": n_train_images,
                               "n_train_videos": n_train_videos,
                               "image_size": list(image_size) if image_size else None},
                    "bench": {"images": {}, "videos": {}},
                    "dataset": {"images": {}, "videos": {}}}
        image_qs: list[tuple[_Scene, Path, list[_Q]]] = []
        video_qs: list[tuple[_Scene, Path, list[Path], list[_Q]]] = []

        # ---- bench scenes
        for k in range(n_images):
            rng = _scene_rng(seed, 0, k)
            sid = f"{k + 1:0{width}d}"
            s = _image_scene(rng, sid, image_size)
            img, lm, gts = _render(s, None, mark_style)
            path = tmp / "bench" / "images_vpt" / f"{sid}.jpg"
            mpath = tmp / "masks" / "bench" / "images" / f"{sid}.png"
            _save(path, img, lm, mpath)
            gt["bench"]["images"][sid] = {
                "image_path": path.relative_to(tmp).as_posix(), "mask_path": mpath.relative_to(tmp).as_posix(),
                "width": s.width, "height": s.height, "background": s.background_name, "instances": gts}
            image_qs.append((s, path, _image_questions(rng, s)))
            tick(1)
        for k in range(n_videos):
            rng = _scene_rng(seed, 1, k)
            sid = f"{k + 1:0{width}d}"
            s = _video_scene(rng, sid, image_size)
            folder = tmp / "bench" / "videos_vpt" / sid
            frames, gt["bench"]["videos"][sid] = _write_video(tmp, folder, "bench", sid, s, mark_style)
            video_qs.append((s, folder, frames, _video_questions(rng, s)))
            tick(1)

        # ---- bench items: MC with balanced letters, OE with the same question ids
        items: list[BenchItem] = []
        for split, groups in (("image", image_qs), ("video", video_qs)):
            flat = [q for g in groups for q in g[-1]]
            letters = iter(_assign_letters(_scene_rng(seed, 10, 0 if split == "image" else 1), flat))
            mc, oe = [], []
            for g in groups:
                s = g[0]
                for j, q in enumerate(g[-1], 1):
                    letter, options = next(letters)
                    common = dict(question_id=f"{s.sid}-{j:02d}", split=split, question=q.question,
                                  source_id=s.sid, category=q.category)
                    if split == "image":
                        media = dict(image_path=g[1])
                    else:
                        media = dict(video_path=g[1], frame_paths=list(g[2]))
                    mc.append(BenchItem(format="mc", answer=letter, options=options, **common, **media))
                    oe.append(BenchItem(format="oe", answer=q.oe_answer, options=None, **common,
                                        **{k: (list(v) if isinstance(v, list) else v) for k, v in media.items()}))
            items += mc + oe
        if items:
            write_bench_json(items, tmp / "bench")
            write_bench_parquet(items, tmp / "bench_parquet", media_root=tmp / "bench")

        # ---- training dataset (separate scenes)
        records: list = []
        n_qa = 0
        for k in range(n_train_images):
            rng = _scene_rng(seed, 2, k)
            sid = f"{k + 1:0{width}d}"
            s = _image_scene(rng, sid, image_size)
            img, lm, gts = _render(s, None, mark_style)
            path = tmp / "dataset" / "images" / f"{sid}.jpg"
            _save(path, img, lm, tmp / "masks" / "dataset" / "images" / f"{sid}.png")
            inst_caps, caption = _image_captions(s)
            records.append(ImageRecord(sid, path, inst_caps, caption))
            gt["dataset"]["images"][sid] = {
                "image_path": path.relative_to(tmp).as_posix(), "mask_path": f"masks/dataset/images/{sid}.png",
                "width": s.width, "height": s.height, "background": s.background_name, "instances": gts}
            tick(1)
        for k in range(n_train_videos):
            rng = _scene_rng(seed, 3, k)
            sid = f"{k + 1:0{width}d}"
            s = _video_scene(rng, sid, image_size)
            folder = tmp / "dataset" / "videos" / sid
            frames, gt["dataset"]["videos"][sid] = _write_video(tmp, folder, "dataset", sid, s, mark_style)
            fcaps = []
            for t, f in enumerate(frames, 1):
                inst_caps, caption = _image_captions(s, t, what="frame")
                fcaps.append(FrameCaption(t, f.name, inst_caps, caption, None if t == 1 else _temporal_change(s, t)))
            qa = [(q.question, q.oe_answer) for q in _video_questions(rng, s)]
            n_qa += len(qa)
            records.append(VideoRecord(sid, folder, fcaps, qa, _video_caption(s)))
            tick(1)
        if records:
            write_instit_dataset(records, tmp / "dataset")

        counts = {f"{sp}_{fm}": sum(1 for it in items if (it.split, it.format) == (sp, fm))
                  for sp in ("image", "video") for fm in ("mc", "oe")}
        letters_count = {sp: {L: sum(1 for it in items if it.split == sp and it.format == "mc" and it.answer == L)
                              for L in "ABCD"} for sp in ("image", "video")}
        summary = {
            "out": str(out), "seed": int(seed),
            "bench": counts, "answer_letters": letters_count,
            "dataset": {"images": n_train_images, "videos": n_train_videos, "qa_pairs": n_qa},
            "frames": sum(len(v["frames"]) for part in ("bench", "dataset") for v in gt[part]["videos"].values()),
        }
        gt["summary"] = dict(summary, out=None)
        write_json(tmp / "ground_truth.json", gt)

    summary["seconds"] = round(time.perf_counter() - start, 3)
    if not return_records:
        return summary
    final = out.resolve()

    def move(p: Path) -> Path:
        return final / Path(p).relative_to(tmp)

    for it in items:
        it.image_path = move(it.image_path) if it.image_path else None
        it.video_path = move(it.video_path) if it.video_path else None
        it.frame_paths = [move(p) for p in it.frame_paths]
    for rec in records:
        if isinstance(rec, ImageRecord):
            rec.image_path = move(rec.image_path)
        else:
            rec.video_path = move(rec.video_path)
    return summary, items, records


def restyle_bench(bench: str | Path, style: str, dest: str | Path) -> Path:
    """The same synthetic bench with its marks drawn in ``style``: its world re-rendered from the seed.

    ``bench`` must be the ``bench/`` folder of a world written by :func:`build_world` (its
    ``ground_truth.json`` holds the seed and the generation parameters). The questions and answers are
    checked to be identical to the original's, so runs on both are paired question by question.
    Returns the new ``bench/`` folder (``dest/bench``); an existing complete copy is reused.
    """
    import json

    bench = Path(bench)
    world = bench.parent
    gt_path = world / "ground_truth.json"
    if not gt_path.is_file():
        raise InstitError(f"--mark-style needs a synthetic bench (made by `instit-edge synth`): {gt_path} not found")
    try:
        gt = json.loads(gt_path.read_text(encoding="utf-8"))
        params, seed = gt["params"], int(gt["seed"])
    except (OSError, ValueError, KeyError, TypeError):
        raise InstitError(f"{gt_path} has no generation parameters (a world from an older instit-edge?); "
                          "rebuild it with `instit-edge synth`") from None
    if gt.get("mark_style", "mask+id") == style:
        return bench
    dest = Path(dest)
    if not (dest / "ground_truth.json").is_file():
        size = params.get("image_size")
        build_world(dest, seed=seed, n_images=params["n_images"], n_videos=params["n_videos"],
                    image_size=tuple(size) if size else None, n_train_images=params["n_train_images"],
                    n_train_videos=params["n_train_videos"], mark_style=style, force=True)
    for name in ("image_multi_choices.json", "image_open_ended.json", "video_multi_choices.json",
                 "video_open_ended.json"):
        a, b = bench / name, dest / "bench" / name
        if a.is_file() and (not b.is_file() or json.loads(a.read_text()) != json.loads(b.read_text())):
            raise InstitError(f"re-rendering {bench} in style {style!r} did not reproduce {name} (the bench was "
                              "edited, or made by another instit-edge version); rebuild it with `instit-edge synth`")
    return dest / "bench"
