"""Set-of-Marks rendering: draw instance IDs (and boxes / contours) on a frame.

What is drawn is a list of :class:`~instit_edge.marker.base.Detection` with an ``id`` (the tracker's
output, or built by hand: ``Detection(box, mask, id=3)``).

Inst-IT visual prompts put each instance's numeric ID at the instance centre on
a small filled label box with contrasting text, plus a thin coloured contour
(or a box). This module draws them with OpenCV primitives only, so it runs at
camera rate:

* the label anchor is the distance-transform maximum of the mask (so it lies
  inside non-convex shapes such as rings, stars or crosses), or the box centre;
* labels are clamped inside the image, and a label that would overlap one
  placed before it is nudged (a small spiral search that keeps its centre
  inside its own mask when it can);
* every ID has a fixed colour, and the text is black or white by luminance.

Styles: ``"id"`` (labels only), ``"box"`` (boxes only), ``"box+id"``,
``"mask+id"`` (thin contour of the mask + ID; the Inst-IT look),
``"contour+id"`` (a bolder contour + ID, for busy camera frames) and
``"none"``. A mark without a mask is drawn with its box in the mask styles.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from instit_edge.drawing import color_for, text_color_for
from instit_edge.errors import InstitError
from instit_edge.marker.base import Detection

STYLES = ("id", "box", "box+id", "mask+id", "contour+id", "none")

_FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass(frozen=True)
class Label:
    """Where one ID label was placed: ``rect`` is ``(x0, y0, x1, y1)``, x1/y1 exclusive."""

    id: int
    rect: tuple[int, int, int, int]
    anchor: tuple[int, int]
    color: tuple[int, int, int]
    text_color: tuple[int, int, int]

    @property
    def center(self) -> tuple[int, int]:
        x0, y0, x1, y1 = self.rect
        return ((x0 + x1) // 2, (y0 + y1) // 2)


def _font_params(image_shape) -> tuple[float, int, int]:
    """(font scale, text thickness, padding) scaled with the image size."""
    side = min(image_shape[0], image_shape[1])
    scale = max(0.45, side / 800.0)
    thick = 1 if scale < 0.8 else 2
    pad = max(2, int(round(3 * scale)))
    return scale, thick, pad


def _label_size(text: str, image_shape) -> tuple[int, int]:
    scale, thick, pad = _font_params(image_shape)
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, thick)
    return tw + 2 * pad, th + base + 2 * pad


def _check_mask(mark: Detection, image_shape) -> np.ndarray | None:
    m = mark.mask
    if m is None:
        return None
    m = np.asarray(m)
    if m.shape != tuple(image_shape[:2]):
        raise InstitError(
            f"mark {mark.id}: mask shape {m.shape} does not match the image {tuple(image_shape[:2])} "
            "(give a mask of the frame's height x width)"
        )
    if m.dtype != np.bool_:
        m = m != 0
    return m


def _mask_crop(mask: np.ndarray):
    """Bounding rect of a bool mask and the crop padded by one zero pixel, or None if empty."""
    u8 = mask.view(np.uint8)
    x, y, w, h = cv2.boundingRect(u8)
    if w == 0 or h == 0:
        return None
    crop = np.zeros((h + 2, w + 2), np.uint8)
    crop[1:-1, 1:-1] = u8[y : y + h, x : x + w]
    return x, y, crop


def label_anchor(mark: Detection, image_shape) -> tuple[int, int]:
    """The (x, y) pixel where ``mark``'s ID label is centred before overlap nudging.

    For a mask: the distance-transform maximum (the point deepest inside the
    shape; among near-maximal points the one nearest the centroid), so it lies
    inside rings, stars and crosses. For a box: the box centre. Clamped to the image.
    """
    h, w = image_shape[:2]
    mask = _check_mask(mark, image_shape)
    if mask is not None:
        found = _mask_crop(mask)
        if found is not None:
            x, y, crop = found
            dist = cv2.distanceTransform(crop, cv2.DIST_L2, 5)
            peak = float(dist.max())
            ys, xs = np.nonzero(dist >= max(peak * 0.85, peak - 2.0))
            my, mx = np.nonzero(crop)
            cy, cx = my.mean(), mx.mean()
            k = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
            return int(xs[k] + x - 1), int(ys[k] + y - 1)
    if mark.box is not None:
        x0, y0, x1, y1 = (int(v) for v in mark.box)
        ax, ay = (x0 + x1) // 2, (y0 + y1) // 2
        return int(min(max(ax, 0), w - 1)), int(min(max(ay, 0), h - 1))
    if mask is not None:
        raise InstitError(f"mark {mark.id}: the mask is empty and there is no box (drop the mark or give a box)")
    raise InstitError(f"mark {mark.id}: has neither a box nor a mask (give one of them)")


_OFFSET_CACHE: dict[tuple[int, int], np.ndarray] = {}


def _offsets(step: int, n: int) -> np.ndarray:
    """Grid offsets within n steps, nearest first (deterministic order)."""
    key = (step, n)
    if key not in _OFFSET_CACHE:
        r = np.arange(-n, n + 1)
        gx, gy = np.meshgrid(r, r)
        gx, gy = gx.ravel(), gy.ravel()
        order = np.lexsort((np.arctan2(gy, gx), gx * gx + gy * gy))
        _OFFSET_CACHE[key] = np.stack([gx[order], gy[order]], 1) * step
    return _OFFSET_CACHE[key]


def place_labels(marks, image_shape) -> list[Label]:
    """Place one label per mark: clamped inside the image, nudged so labels never overlap."""
    H, W = image_shape[:2]
    placed: list[Label] = []
    rects = np.zeros((0, 4), np.int64)
    for mark in marks:
        ax, ay = label_anchor(mark, image_shape)
        lw, lh = _label_size(str(mark.id), image_shape)
        lw, lh = min(lw, W), min(lh, H)
        step = max(2, lh // 3)
        offs = _offsets(step, int(np.ceil(3 * max(lw, lh) / step)))
        cx = ax + offs[:, 0]
        cy = ay + offs[:, 1]
        x0 = np.clip(cx - lw // 2, 0, W - lw)
        y0 = np.clip(cy - lh // 2, 0, H - lh)
        cand = np.stack([x0, y0, x0 + lw, y0 + lh], 1)
        if len(rects):
            overlap = (
                (cand[:, None, 0] < rects[None, :, 2])
                & (rects[None, :, 0] < cand[:, None, 2])
                & (cand[:, None, 1] < rects[None, :, 3])
                & (rects[None, :, 1] < cand[:, None, 3])
            ).any(1)
        else:
            overlap = np.zeros(len(cand), bool)
        free = ~overlap
        mask = _check_mask(mark, image_shape)
        if mask is not None:
            inside = mask[(y0 + lh // 2).clip(0, H - 1), (x0 + lw // 2).clip(0, W - 1)]
        elif mark.box is not None:
            bx0, by0, bx1, by1 = mark.box
            mx, my = x0 + lw // 2, y0 + lh // 2
            inside = (mx >= bx0) & (mx < bx1) & (my >= by0) & (my < by1)
        else:
            inside = np.ones(len(cand), bool)
        good = np.flatnonzero(free & inside)
        if not len(good):
            good = np.flatnonzero(free)
        k = int(good[0]) if len(good) else 0
        color = tuple(int(c) for c in (mark.color if mark.color is not None else color_for(mark.id)))
        label = Label(int(mark.id), tuple(int(v) for v in cand[k]), (ax, ay), color, text_color_for(color))
        placed.append(label)
        rects = np.vstack([rects, cand[k : k + 1]])
    return placed


def _draw_label(img: np.ndarray, label: Label) -> None:
    scale, thick, pad = _font_params(img.shape)
    x0, y0, x1, y1 = label.rect
    cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), label.color, -1)
    # a 1-px frame in the text colour keeps the label apart from a same-coloured object
    cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), label.text_color, 1)
    text = str(label.id)
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, thick)
    tx = x0 + (x1 - x0 - tw) // 2
    ty = y0 + (y1 - y0 + th - base) // 2
    cv2.putText(img, text, (tx, ty), _FONT, scale, label.text_color, thick, cv2.LINE_AA)


def _line_thickness(image_shape) -> int:
    return max(1, int(round(min(image_shape[0], image_shape[1]) / 320)))


def draw_marks(image_rgb: np.ndarray, marks, style: str = "box+id", *, return_labels: bool = False):
    """Return a copy of ``image_rgb`` (uint8 HxWx3) with ``marks`` drawn in ``style``.

    With ``return_labels=True`` returns ``(image, labels)`` where ``labels`` is
    the list of :class:`Label` placements (empty for styles without IDs).
    """
    if style not in STYLES:
        raise InstitError(f"unknown mark style {style!r} (use one of: {', '.join(STYLES)})")
    img = np.asarray(image_rgb)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise InstitError(
            f"draw_marks: expected an RGB uint8 image of shape HxWx3, got {img.dtype} {img.shape} "
            "(convert the frame first)"
        )
    out = np.ascontiguousarray(img).copy()
    marks = list(marks)
    untracked = [m for m in marks if m.id is None]
    if untracked:
        raise InstitError(f"draw_marks: {len(untracked)} detection(s) without an id (run them through the tracker "
                          "or set id=N)")
    labels: list[Label] = []
    if style != "none":
        thick = _line_thickness(out.shape)
        if style == "contour+id":
            thick *= 2
        for mark in marks:
            color = tuple(int(c) for c in (mark.color if mark.color is not None else color_for(mark.id)))
            mask = _check_mask(mark, out.shape)
            use_mask = style in ("mask+id", "contour+id") and mask is not None
            if use_mask:
                found = _mask_crop(mask)
                if found is not None:
                    x, y, crop = found
                    contours, _ = cv2.findContours(crop, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE, offset=(x - 1, y - 1))
                    cv2.drawContours(out, contours, -1, color, thick, cv2.LINE_AA)
                    continue
            if style in ("box", "box+id") or (style in ("mask+id", "contour+id")):
                box = mark.box
                if box is None and mask is not None:
                    found = _mask_crop(mask)
                    if found is not None:
                        x, y, crop = found
                        box = (x, y, x + crop.shape[1] - 2, y + crop.shape[0] - 2)
                if box is not None:
                    x0, y0, x1, y1 = (int(v) for v in box)
                    cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), color, thick, cv2.LINE_AA)
        if style.endswith("id"):
            labels = place_labels(marks, out.shape)
            for label in labels:
                _draw_label(out, label)
    return (out, labels) if return_labels else out


def label_rects(marks, image_shape) -> list[tuple[int, int, int, int]]:
    """The label rectangles ``draw_marks`` would use for ``marks`` on an image of ``image_shape``."""
    return [label.rect for label in place_labels(marks, image_shape)]
