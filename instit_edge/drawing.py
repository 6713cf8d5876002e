"""Drawing primitives shared by the synthetic world (:mod:`instit_edge.data.synth`) and the marker
(:mod:`instit_edge.marker`): the world's colours and shapes, exact shape masks, and the fixed per-ID palette
of the Set-of-Marks labels. A leaf: it imports nothing from the package."""

from __future__ import annotations

import cv2
import numpy as np

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 35, 35),
    "green": (40, 175, 60),
    "blue": (45, 90, 235),
    "yellow": (245, 215, 35),
    "purple": (150, 55, 200),
    "orange": (250, 140, 20),
    "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle", "star", "ring", "cross")

# 20 well separated colours (RGB); ID i uses PALETTE[(i - 1) % 20].
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
    (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195),
    (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128), (255, 225, 25),
)


def shape_mask(shape: str, cx: float, cy: float, r: float, height: int, width: int) -> np.ndarray:
    """Exact bool mask of one shape centred at (cx, cy) with radius ``r``."""
    m = np.zeros((height, width), np.uint8)
    c = (int(round(cx)), int(round(cy)))
    ri = int(round(r))
    if shape == "circle":
        cv2.circle(m, c, ri, 1, -1)
    elif shape == "ring":
        cv2.circle(m, c, ri, 1, -1)
        cv2.circle(m, c, int(round(r * 0.55)), 0, -1)
    elif shape == "square":
        s = int(round(r * 0.82))
        cv2.rectangle(m, (c[0] - s, c[1] - s), (c[0] + s, c[1] + s), 1, -1)
    elif shape == "cross":
        a, w = ri, int(round(r * 0.3))
        cv2.rectangle(m, (c[0] - a, c[1] - w), (c[0] + a, c[1] + w), 1, -1)
        cv2.rectangle(m, (c[0] - w, c[1] - a), (c[0] + w, c[1] + a), 1, -1)
    elif shape in ("triangle", "star"):
        if shape == "triangle":
            ang = np.deg2rad([-90, 30, 150])
            rad = np.full(3, r * 1.1)
        else:
            ang = np.deg2rad(-90 + 36 * np.arange(10))
            rad = np.where(np.arange(10) % 2 == 0, r * 1.05, r * 0.5)
        pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1)
        cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 1)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return m.view(bool)


def color_for(instance_id: int) -> tuple[int, int, int]:
    """The fixed RGB colour of an instance ID."""
    return PALETTE[(int(instance_id) - 1) % len(PALETTE)]


def text_color_for(bg: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light backgrounds, white on dark ones (Rec. 601 luma)."""
    r, g, b = bg
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)
