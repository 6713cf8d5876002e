"""Set-of-Marks rendering: label placement inside instances, inside the image, no overlaps, styles."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from instit_edge.data.synth import build_world
from instit_edge.drawing import PALETTE, SHAPES, color_for, shape_mask, text_color_for
from instit_edge.errors import InstitError
from instit_edge.marker.base import Detection
from instit_edge.marker.render import (
    STYLES,
    draw_marks,
    label_anchor,
    label_rects,
    place_labels,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("render") / "world"
    build_world(out, seed=5, n_images=8, n_videos=3)
    return out


def _frames(world: Path):
    """(marked image path, label-map path, per-instance ground truth) for every image and frame."""
    gt = json.loads((world / "ground_truth.json").read_text())
    for part in ("bench", "dataset"):
        for rec in gt[part]["images"].values():
            yield world / rec["image_path"], world / rec["mask_path"], rec["instances"]
        for rec in gt[part]["videos"].values():
            for fr in rec["frames"]:
                yield world / rec["video_path"] / fr["frame_name"], world / fr["mask_path"], fr["instances"]


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_synth_labels_inside_masks_inside_image_and_disjoint(world):
    shapes_seen = set()
    n_frames = 0
    for image_path, mask_path, insts in _frames(world):
        n_frames += 1
        label_map = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
        assert label_map is not None and label_map.ndim == 2
        H, W = label_map.shape
        assert set(np.unique(label_map)) - {0} == {int(k) for k in insts}
        rects = []
        for key, inst in insts.items():
            mask = label_map == int(key)
            cx, cy = inst["label_center"]
            assert mask[cy, cx], f"{image_path}: label of [{key}] ({inst['shape']}) is not inside its mask"
            x0, y0, x1, y1 = inst["label_rect"]
            assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H, f"{image_path}: label [{key}] leaves the image"
            rects.append(inst["label_rect"])
            shapes_seen.add(inst["shape"])
            # the ground-truth box is the mask's bounding box
            ys, xs = np.nonzero(mask)
            assert inst["box"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            assert inst["area"] == int(mask.sum())
        for i in range(len(rects)):
            for j in range(i + 1, len(rects)):
                assert not _overlap(rects[i], rects[j]), f"{image_path}: labels overlap"
    assert n_frames > 16
    assert {"ring", "star", "cross"} <= shapes_seen, shapes_seen


def test_rendering_from_ground_truth_masks_matches_synth(world):
    """Re-placing labels from the ground-truth masks gives the placements the synth recorded."""
    checked = 0
    for _image_path, mask_path, insts in list(_frames(world))[:12]:
        label_map = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
        marks = [Detection(id=int(k), box=tuple(v["box"]), mask=label_map == int(k)) for k, v in insts.items()]
        labels = place_labels(marks, label_map.shape)
        for lab in labels:
            assert list(lab.rect) == insts[str(lab.id)]["label_rect"]
            checked += 1
    assert checked > 0


@pytest.mark.parametrize("shape", SHAPES)
def test_anchor_inside_every_shape(shape):
    H, W = 200, 260
    for r in (14, 22, 40):
        mask = shape_mask(shape, 120.3, 95.7, r, H, W)
        x, y = label_anchor(Detection(id=1, mask=mask), mask.shape)
        assert mask[y, x], (shape, r)


def test_anchor_non_convex_where_centroid_is_outside():
    H, W = 120, 160
    # a ring: its centroid (and box centre) lies in the hole
    ring = shape_mask("ring", 80, 60, 40, H, W)
    assert not ring[60, 80]
    x, y = label_anchor(Detection(id=3, mask=ring), ring.shape)
    assert ring[y, x]
    # a "C": thick arc open on the right, centroid outside the shape
    c = np.zeros((H, W), np.uint8)
    cv2.ellipse(c, (80, 60), (45, 45), 0, 40, 320, 1, 14)
    c = c.astype(bool)
    ys, xs = np.nonzero(c)
    assert not c[int(ys.mean()), int(xs.mean())]
    x, y = label_anchor(Detection(id=4, mask=c), c.shape)
    assert c[y, x]
    # the anchor is the deepest point: at least as deep as 80% of the maximum
    dist = cv2.distanceTransform(np.pad(c.view(np.uint8), 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    assert dist[y, x] >= 0.8 * dist.max()


def test_box_anchor_is_box_centre():
    assert label_anchor(Detection(id=1, box=(10, 20, 50, 40)), (100, 100, 3)) == (30, 30)


def test_labels_clamped_inside_image():
    H, W = 120, 160
    img = np.zeros((H, W, 3), np.uint8)
    corner = np.zeros((H, W), bool)
    corner[H - 6 :, W - 6 :] = True
    marks = [
        Detection(id=1, box=(0, 0, 4, 4)),
        Detection(id=22, box=(W - 3, 0, W, 3)),
        Detection(id=333, box=(0, H - 2, 2, H)),
        Detection(id=4, mask=corner),
    ]
    _, labels = draw_marks(img, marks, "box+id", return_labels=True)
    assert [lab.id for lab in labels] == [1, 22, 333, 4]
    for lab in labels:
        x0, y0, x1, y1 = lab.rect
        assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H


def test_crowded_labels_are_nudged_apart():
    H, W = 240, 320
    img = np.full((H, W, 3), 90, np.uint8)
    marks = [Detection(id=i, box=(140, 100, 180, 140)) for i in range(1, 9)]
    _, labels = draw_marks(img, marks, "id", return_labels=True)
    rects = [lab.rect for lab in labels]
    assert rects == label_rects(marks, img.shape)
    for i in range(len(rects)):
        for j in range(i + 1, len(rects)):
            assert not _overlap(rects[i], rects[j]), (rects[i], rects[j])
    # the first label keeps its anchor; later ones stay close to it
    assert labels[0].center == (160, 120)
    assert all(abs(lab.center[0] - 160) < 80 and abs(lab.center[1] - 120) < 80 for lab in labels)


def test_nudged_label_stays_inside_its_mask_when_possible():
    H, W = 200, 200
    big = np.zeros((H, W), bool)
    big[40:160, 40:160] = True
    small = np.zeros((H, W), bool)
    small[95:105, 95:105] = True  # sits on the big square's anchor
    labels = place_labels([Detection(id=1, mask=small), Detection(id=2, mask=big)], (H, W))
    assert not _overlap(labels[0].rect, labels[1].rect)
    cx, cy = labels[1].center
    assert big[cy, cx]


def test_each_style_draws_what_it_says():
    H, W = 160, 200
    img = np.full((H, W, 3), 100, np.uint8)
    before = img.copy()
    mask = shape_mask("ring", 70, 80, 40, H, W)
    box = (130, 30, 180, 70)
    marks = [Detection(id=1, mask=mask), Detection(id=2, box=box)]
    outs = {}
    for style in STYLES:
        out, labels = draw_marks(img, marks, style, return_labels=True)
        assert out.shape == img.shape and out.dtype == np.uint8
        outs[style] = out
        assert (len(labels) == 2) == style.endswith("id"), style
    assert np.array_equal(img, before), "draw_marks must not modify its input"
    assert np.array_equal(outs["none"], img)
    for style in STYLES[:-1]:
        assert not np.array_equal(outs[style], img), style
    # "box": a rectangle at the box edge, nothing at the label spot
    assert not np.array_equal(outs["box"][box[1], box[0] + 10], img[0, 0])
    assert np.array_equal(outs["box"][50, 155], img[0, 0])
    # "id": the label is filled with the instance colour, no box outline
    assert np.array_equal(outs["id"][box[1], box[0] + 10], img[0, 0])
    lab = place_labels(marks, img.shape)[1]
    x0, y0, x1, y1 = lab.rect
    patch = outs["id"][y0:y1, x0:x1].reshape(-1, 3)
    assert (patch == np.array(color_for(2))).all(1).mean() > 0.3
    # "mask+id" traces the ring's outer and inner contours; the mask interior stays untouched
    changed = (outs["mask+id"] != img).any(2)
    assert changed[80, 70 - 40] and changed[80, 70 - 22]  # outer and inner edge on the left
    assert not changed[80, 70 - 31]  # the middle of the band (the label sits at the top)
    assert not changed[80, 70]  # the hole
    # "contour+id" is bolder than "mask+id"
    assert (outs["contour+id"] != img).any(2).sum() > changed.sum()
    # "box+id": a mark without a box but with a mask gets the mask's bounding box
    box_changed = (outs["box+id"] != img).any(2)
    assert box_changed[80, 70 - 40] and box_changed[40, 70]


def test_bad_inputs_raise_one_line_errors():
    img = np.zeros((50, 60, 3), np.uint8)
    cases = [
        lambda: draw_marks(img, [Detection(id=1, box=(1, 1, 5, 5))], style="blobs"),
        lambda: draw_marks(img[..., 0], [Detection(id=1, box=(1, 1, 5, 5))]),
        lambda: draw_marks(img.astype(np.float32), []),
        lambda: draw_marks(img, [Detection(id=1, mask=np.ones((10, 10), bool))]),
        lambda: draw_marks(img, [Detection(id=7)]),
    ]
    for case in cases:
        with pytest.raises(InstitError) as e:
            case()
        assert "\n" not in str(e.value)
    with pytest.raises(InstitError, match=r"mark 7"):
        draw_marks(img, [Detection(id=7)])


def test_palette_and_text_contrast():
    assert color_for(1) == color_for(1) == PALETTE[0]
    assert color_for(21) == color_for(1)
    assert len({color_for(i) for i in range(1, 21)}) == 20
    assert text_color_for((255, 255, 255)) == (0, 0, 0)
    assert text_color_for((0, 0, 128)) == (255, 255, 255)
    for c in PALETTE:
        t = text_color_for(c)
        luma = 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]
        assert abs(luma - (0.299 * t[0] + 0.587 * t[1] + 0.114 * t[2])) > 100


def test_explicit_mark_colour_is_used():
    img = np.zeros((60, 80, 3), np.uint8)
    out, labels = draw_marks(img, [Detection(id=1, box=(10, 10, 50, 50), color=(1, 2, 3))], "id", return_labels=True)
    assert labels[0].color == (1, 2, 3)


def test_render_cost_is_bounded_per_mark(monkeypatch):
    """What keeps ``draw_marks`` at camera rate, counted instead of timed: one distance transform and one contour
    trace per mark, each on the mark's bounding crop (a few hundred pixels), never on the 640x480 frame."""
    import instit_edge.marker.render as render

    H, W = 480, 640
    img = np.full((H, W, 3), 80, np.uint8)
    marks = []
    for i in range(8):
        m = shape_mask(SHAPES[i % len(SHAPES)], 60 + 70 * i, 120 + 30 * (i % 3), 28, H, W)
        marks.append(Detection(id=i + 1, mask=m))
    calls = {"distanceTransform": [], "findContours": []}
    for name, seen in calls.items():
        real = getattr(render.cv2, name)
        monkeypatch.setattr(render.cv2, name, lambda a, *args, _real=real, _seen=seen, **kw: (
            _seen.append(a.shape), _real(a, *args, **kw))[1])
    out, labels = draw_marks(img, marks, "mask+id", return_labels=True)
    assert len(labels) == 8 and not np.array_equal(out, img)
    for name, shapes in calls.items():
        assert len(shapes) == len(marks), (name, shapes)
        assert all(h * w <= (2 * 28 * 1.2 + 3) ** 2 for h, w in shapes), (name, shapes)
