"""Stage 5's supervision (instit_edge.train.video_heads): frame labels and where a video answer looks.

References: the synthetic world's per-frame masks (read here pixel by pixel, not through InstanceRows), its
ground-truth tracks and official video questions, and the committed default model's real tokenizer.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import default_world

torch = pytest.importorskip("torch")

PER = 16  # the default model's pooled rows per 128 px frame (4 x 4)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return default_world(tmp_path_factory, "videoheads", seed=23, images=2, videos=10)


def _cover(mask: np.ndarray, cell: int, k: int) -> float:
    """Share of the 32 x 32 cell ``cell`` (raster order over the 4 x 4 grid) that instance k covers."""
    r, c = divmod(cell, 4)
    return float((mask[r * 32:(r + 1) * 32, c * 32:(c + 1) * 32] == k).mean())


def _in_frame(layout, mask, question, rows, t, k):
    """Every row lies in frame t's block and on instance k there (a quarter of the cell; else its best cell)."""
    lo = layout[t - 1][1]
    assert rows and all(lo <= r < lo + PER for r in rows), (question, t, rows)
    assert all(_cover(mask[t - 1], r - lo, k) >= 0.25 for r in rows) or len(rows) == 1


def test_positions_point_at_the_answering_frame(world, tok):
    from PIL import Image

    from instit_edge.train.default_model import bench_samples
    from instit_edge.train.encode import encode_text
    from instit_edge.train.video_heads import (
        _APPEAR,
        _CHANGE,
        _DISAPPEAR,
        _MOVE,
        VideoInstanceRows,
        block_layout,
        label_ids,
        video_positions,
    )

    gt = json.loads((world / "ground_truth.json").read_text())
    videos = {str((world / v["video_path"]).resolve()): v for v in gt["bench"]["videos"].values()}
    frames = VideoInstanceRows(world, 4)
    seen = set()
    for s in bench_samples(world, text_letter=True):
        if s.kind != "video-mc":
            continue
        v = videos[str(Path(s.frames[0]).parent.resolve())]
        layout = block_layout(label_ids(tok, range(1, len(s.frames) + 1)), PER)
        e = encode_text(s, tok, "vicuna_v1")
        p = video_positions(s, e.input_ids, tok, "vicuna_v1", frames, layout)
        q, ans = s.turns[0]
        if p is None:
            continue
        mask = [np.asarray(Image.open(world / f["mask_path"])) for f in v["frames"]]
        in_frame = partial(_in_frame, layout, mask, q)
        # the supervised position predicts the deciding answer token
        assert 0 < p.answer_pred < len(e.input_ids) - 1
        if p.answer_token is not None:
            assert e.input_ids[p.answer_pred + 1] == p.answer_token
        if m := _APPEAR.search(q):
            k, a = int(m.group("k")), int(ans.split(">")[0].lstrip("<"))
            assert v["tracks"][str(k)]["appear"] == a
            in_frame(p.rows, a, k)
            assert tok.convert_ids_to_tokens(p.answer_token) == str(a) and len(p.candidates) == 4
            assert tok.decode(e.input_ids[p.id_token]).strip() == str(k)
            seen.add("appear")
        elif m := _DISAPPEAR.search(q):
            t, k = int(m.group("t")), int(ans.split("]")[0].lstrip("["))
            in_frame(p.rows, t - 1, k)
            assert (mask[t - 2] == k).any() and not (mask[t - 1] == k).any()
            seen.add("disappear")
        elif m := _CHANGE.search(q):
            pp, qq = int(m.group("p")), int(m.group("q"))
            k = int(ans.split("]")[0].lstrip("["))
            t = qq if " appears " in ans + " " else pp
            in_frame(p.rows, t, k)
            assert (mask[t - 1] == k).any()
            assert tok.decode(e.input_ids[p.id_token]).strip() == str(pp)
            assert tok.decode(e.input_ids[p.id_token_b]).strip() == str(qq)
            seen.add("change")
        elif m := _MOVE.search(q):
            k, pp, qq = int(m.group("k")), int(m.group("p")), int(m.group("q"))
            in_frame(p.rows, pp, k)
            in_frame(p.rows_b, qq, k)
            seen.add("movement")
    assert {"appear", "movement"} <= seen, seen


def test_frame_label_loss_is_low_only_where_rows_read_their_label():
    """Head HF's attention put on each frame's label number gives ~0; spread over the labels of every frame,
    log(frames); a batch row without labels adds nothing."""
    from instit_edge.train.video_heads import HF, LF, block_layout, frame_label_loss

    labels = [[5, 7, 6]] * 3  # "<", number, ">"
    layout = block_layout(labels, PER)
    n = 2 + layout[-1][1] + PER + 4  # two tokens before the block, four after
    pos = 2

    def out_with(att_rows):
        att = torch.full((2, 4, n, n), 1e-9)
        for lab, row in layout:
            for r in range(row, row + PER):
                att[0, HF, pos + r] = 0
                for tgt, w in att_rows(lab).items():
                    att[0, HF, pos + r, pos + tgt] = w
        return SimpleNamespace(attentions=[att if i == LF else None for i in range(4)])

    right = frame_label_loss(out_with(lambda lab: {lab + 1: 1.0}), [(layout, PER), None], [pos, pos])
    spread = frame_label_loss(out_with(lambda lab: {x[0] + 1: 1 / 3 for x in layout}), [(layout, PER), None],
                              [pos, pos])
    assert float(right) < 1e-4
    assert float(spread) == pytest.approx(np.log(3), rel=1e-3)
    assert frame_label_loss(out_with(lambda lab: {lab + 1: 1.0}), [None, None], [pos, pos]) is None


def test_first_frame_marks_point_back_at_the_instance_in_earlier_frames(world, tok):
    """Each row on an instance (the one covering most of its cell, from the masks read here) points at that
    instance's rows in earlier frames, never at its own frame or at another instance; in the frame where the
    instance is first seen, at nothing (the sink)."""
    from PIL import Image

    from instit_edge.train.default_model import bench_samples
    from instit_edge.train.video_heads import VideoInstanceRows, block_layout, first_frame_marks, label_ids

    gt = json.loads((world / "ground_truth.json").read_text())
    videos = {str((world / v["video_path"]).resolve()): v for v in gt["bench"]["videos"].values()}
    frames = VideoInstanceRows(world, 4)
    checked = set()
    for s in bench_samples(world, text_letter=True):
        key = str(Path(s.frames[0]).parent.resolve()) if s.frames else None
        if key is None or key in checked:
            continue
        checked.add(key)
        v = videos[key]
        layout = block_layout(label_ids(tok, range(1, len(s.frames) + 1)), PER)
        masks = [np.asarray(Image.open(world / f["mask_path"])) for f in v["frames"]]
        owner = {}
        for t, m in enumerate(masks):
            for cell in range(PER):
                ids = [k for k in np.unique(m) if k]
                covers = {int(k): _cover(m, cell, int(k)) for k in ids}
                best = max(covers, key=covers.get) if covers else None
                if best is not None and covers[best] >= 0.25:
                    owner[layout[t][1] + cell] = (t + 1, best)
        marks = dict(first_frame_marks(s, frames, layout))
        assert set(marks) == set(owner)
        for r, earlier in marks.items():
            t, k = owner[r]
            want = tuple(x for x in sorted(owner) if owner[x][1] == k and owner[x][0] < t)
            assert earlier == want
            first = v["tracks"][str(k)]["appear"]
            assert (earlier == ()) == all(owner[x][1] != k for x in owner if owner[x][0] < t)
            assert t >= first
    assert len(checked) >= 5


def test_mark_term_is_low_only_on_the_targets():
    from instit_edge.train.video_heads import HM, LM, block_layout, frame_label_loss

    layout = block_layout([[5, 7, 6]] * 2, PER)
    pos = 2
    n = pos + layout[-1][1] + PER + 3
    marks = [(layout[0][1] + 3, ()), (layout[1][1] + 5, (layout[0][1] + 3,))]  # first frame: sink; then back

    def out(right: bool):
        att = torch.full((1, 4, n, n), 1e-9)
        for lab, row in layout:  # the label head exactly right, so only the marks count
            for r in range(row, row + PER):
                att[0, 1, pos + r, pos + lab + 1] = 1.0
        for r, earlier in marks:
            tgt = [pos + e for e in earlier] if earlier else [0]
            att[0, HM, pos + r, tgt if right else [pos + r]] = 1.0
        return SimpleNamespace(attentions=[att if i == LM else None for i in range(4)])

    lay = [(layout, PER)]
    assert float(frame_label_loss(out(True), lay, [pos], [marks])) < 1e-4
    # the two label terms ~0 and the marks term -log(1e-6) (the floor): their mean
    assert float(frame_label_loss(out(False), lay, [pos], [marks])) == pytest.approx(-np.log(1e-6) / 3, rel=1e-2)
