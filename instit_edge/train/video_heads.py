"""Supervising video questions: each frame's rows after its ``<t>`` label, and where the answer looks.

Without frame labels a video is one block of ``frames x 16`` rows; the questions name frames by number
(``In which frame does [3] first appear?`` -> ``<7>``, ``What changes between <6> and <7>?``), and a 4-layer
LLM with rotary positions has no way to tell which block is frame 7 (the seventeenth session measured appear
28%, change 29%, disappear 27% on six unseen benches, chance 25). A model whose config says
``video_frame_labels`` gets the text ``<t>`` (its frame number in the video) before each frame's rows, at
training and at run time (:func:`instit_edge.runtime.session.EdgeSession.segments`), and the lookups of
:mod:`.lookup_heads` are told for video MC questions too:

- head ``HF`` of layer ``LF``, at every row of frame t, attends to the number token of its label, so the row
  carries its frame number (the value path the later lookups read);
- head ``HP`` of layer ``LP`` (the image lookup's), at the position that predicts the deciding answer token,
  attends to the asked instance's rows in the frame that answers: an ``appear`` question its first frame (the
  lens after layer LP and the head read pick the frame's number among the options'), a ``disappear`` one the
  frame before the named one (its ID digit), a ``change`` one the frame where the instance is seen (its ID
  digit), a ``movement`` one the instance in the first named frame and head ``HPB`` in the second, a colour
  question the instance's rows in its first frame (the colour word), a count its instances in the named frame;
- head ``HQ`` of layer ``LQ`` attends to the ID (or the first frame number) the question names, head ``HQB``
  to the second frame number where there is one;
- with ``MARKS``: head ``HM`` of layer ``LM``, at every row on an instance, attends to that instance's rows in
  earlier frames, or to the sink (position 0) in the frame where it is first seen, so that "first seen here" is
  something the rows carry (an ``appear`` answer's rows are exactly the marked rows of the asked instance).

The weights stay a plain Llama: the labels are ordinary tokens of the vocabulary.

Measured in the seventeenth session from the stage-4 weights (video MC scored by the model's choice, teacher
forced, on the unseen seed-6464 bench's 155 video questions; 48.4 before, appear 14%, change 48%):

- 400 steps of 16, video MC x3, no marks: 50.3 (appear 10, change 55); head HF put 0.99 of its attention on the
  label at once, head HP 0.07 on the answering rows (0.11 on training videos);
- 500 steps, video MC x10, marks: 47.1 (appear 14); on training videos head HP 0.23 on the answering rows, the
  marks 0.52 (first frame) / 0.77 (later frames) on their targets;
- continued 600 steps: 53.5 (appear 28, change 62), head HP 0.59, marks 0.73 / 0.86;
- continued 600 more (1,700 in all, the committed weights): 59.4 (appear 55, change 66). Through the f16 bundle
  (llama.cpp reading the labels as tokens, official MC rule, greedy) video MC on six large unseen benches
  49.4 -> 59.0 together (60.9 on seed 4242, 64.0 on 7373), image MC 81.9 -> 82.0.

The heads were still learning at the end: more steps may give more.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from ..prompting import frame_label
from .letter_heads import _OPTION, letter_answer, token_at
from .lookup_heads import InstanceRows, LookupPositions, deciding_place

LF, HF = 0, 1  # a frame's rows -> the number of its ``<t>`` label
LM, HM = 0, 0  # a row on an instance -> its rows in earlier frames, or the sink (position 0) in its first frame
MARKS = True  # the first-frame marks (above); False: the labels and lookups alone
_APPEAR = re.compile(r"In which frame does \[(?P<k>\d+)\] first appear\?")
_DISAPPEAR = re.compile(r"Which instance disappears at <(?P<t>\d+)>\?")
_CHANGE = re.compile(r"What changes between <(?P<p>\d+)> and <(?P<q>\d+)>\?")
_MOVE = re.compile(r"In which direction does \[(?P<k>\d+)\] move between <(?P<p>\d+)> and <(?P<q>\d+)>\?")
_FRAME_COUNT = re.compile(r"How many instances are visible in <(?P<t>\d+)>\?")
_COLOR = re.compile(r"What is the color of \[(?P<k>\d+)\]\?")
_NUMBER = re.compile(r"\d+")


def label_ids(tokenizer, numbers) -> list[list[int]]:
    """The token ids of each frame's label (no BOS)."""
    return [tokenizer(frame_label(n), add_special_tokens=False)["input_ids"] for n in numbers]


def block_layout(labels: list[list[int]], rows_per_frame: int) -> list[tuple[int, int]]:
    """``(first label token, first row)`` of each frame, as offsets into the spliced block of labels and rows."""
    out, at = [], 0
    for ids in labels:
        out.append((at, at + len(ids)))
        at += len(ids) + rows_per_frame
    return out


class VideoInstanceRows(InstanceRows):
    """:class:`~.lookup_heads.InstanceRows` over the frames of a world's videos (``grid``: the pooled rows' side)."""

    def __init__(self, world: Path, grid: int, min_cover: float = 0.25):
        self.world, self.grid, self.min_cover = Path(world), grid, min_cover
        gt = json.loads((self.world / "ground_truth.json").read_text())
        self.masks, self.instances = {}, {}
        for part in ("dataset", "bench"):
            for v in gt[part]["videos"].values():
                for f in v["frames"]:
                    key = str((self.world / v["video_path"] / f["frame_name"]).resolve())
                    self.masks[key] = self.world / f["mask_path"]
                    self.instances[key] = f["instances"]
        self._cache = {}

    def visible(self, frame, instance: int) -> bool:
        return str(instance) in self.instances.get(str(Path(frame).resolve()), {})

    def owners(self, frame) -> dict[int, int]:
        """Row -> the instance covering most of it (at least ``min_cover``); rows on no instance are left out."""
        patches = self._patches(frame)
        if patches is None:
            return {}
        ids = [int(k) for k in self.instances.get(str(Path(frame).resolve()), {})]
        if not ids:
            return {}
        cover = np.stack([(patches == k).mean(1) for k in ids])  # [instances, rows]
        best = cover.argmax(0)
        return {r: ids[best[r]] for r in range(patches.shape[0]) if cover[best[r], r] >= self.min_cover}


def first_frame_marks(sample, frames: VideoInstanceRows, layout: list[tuple[int, int]]
                      ) -> tuple[tuple[int, tuple[int, ...]], ...]:
    """Per row on an instance (block offsets): the rows of the same instance in earlier frames (head HM's target;
    empty: the instance's first frame, where the target is the sink)."""
    seen: dict[int, list[int]] = {}
    out = []
    for (_, row0), path in zip(layout, sample.frames):
        here = {}
        for r, k in sorted(frames.owners(path).items()):
            out.append((row0 + r, tuple(seen.get(k, ()))))
            here.setdefault(k, []).append(row0 + r)
        for k, rows in here.items():
            seen.setdefault(k, []).extend(rows)
    return tuple(out)


def video_positions(sample, input_ids: list[int], tokenizer, template: str, frames: VideoInstanceRows,
                    layout: list[tuple[int, int]]) -> LookupPositions | None:
    """The supervision of one video MC question answered ``<option text> <letter>`` (the module's docstring);
    None for any other sample, or where the instance covers no row of the frame that answers."""
    if sample.frames is None or len(sample.turns) != 1:
        return None
    user, ans = sample.turns[0]
    opts = dict(_OPTION.findall(user + "\n"))
    if len(opts) != 4 or ans not in {letter_answer(v, k) for k, v in opts.items()}:
        return None
    text_right = opts[ans.rsplit(" ", 1)[1]]
    place = deciding_place(user, ans, opts, input_ids, tokenizer, template)
    if place is None:
        return None
    text, offs, first, decide, image_pos = place
    ids = list(input_ids)
    u0 = text.index(user)
    paths = list(sample.frames)

    def rows_in(t: int, k: int) -> list[int]:
        if not 1 <= t <= len(paths) or t > len(layout):
            return []
        return [layout[t - 1][1] + r for r in frames.rows(paths[t - 1], k)]

    def at(m, group: str) -> int:
        return token_at(offs, u0 + m.start(group), "video heads")

    def candidates() -> tuple[int, ...]:  # every option's token at the deciding place
        out = []
        for k, v in opts.items():
            a0 = text.rindex(ans)  # the same chat answered with this option
            t = tokenizer(text[:a0] + letter_answer(v, k) + text[a0 + len(ans):])["input_ids"]
            if first + decide < len(t):
                out.append(int(t[first + decide]))
        return tuple(dict.fromkeys(out)) if len(set(out)) == 4 else ()

    pred = first + decide - 1  # the position that predicts the deciding token
    deciding = int(ids[first + decide])
    deciding_is_number = bool(_NUMBER.fullmatch(tokenizer.convert_ids_to_tokens(deciding).lstrip("Ġ")))
    if m := _APPEAR.search(user):
        k, t = int(m.group("k")), int(_NUMBER.search(text_right).group())
        rows = rows_in(t, k)
        read = deciding if deciding_is_number else None
        return LookupPositions(at(m, "k"), pred, image_pos, rows, read, candidates() if read else ()) if rows else None
    if m := _DISAPPEAR.search(user):
        k, t = int(_NUMBER.search(text_right).group()), int(m.group("t"))
        rows = rows_in(t - 1, k)
        read = deciding if deciding_is_number else None
        return LookupPositions(at(m, "t"), pred, image_pos, rows, read, candidates() if read else ()) if rows else None
    if m := _CHANGE.search(user):
        k = int(_NUMBER.search(text_right).group())
        p, q = int(m.group("p")), int(m.group("q"))
        rows = rows_in(q, k) if text_right.endswith(" appears") else rows_in(p, k)
        read = deciding if deciding_is_number else None
        return LookupPositions(at(m, "p"), pred, image_pos, rows, read, (), id_token_b=at(m, "q")) if rows else None
    if m := _MOVE.search(user):
        k, p, q = int(m.group("k")), int(m.group("p")), int(m.group("q"))
        rows, rows_b = rows_in(p, k), rows_in(q, k)
        if not rows or not rows_b:
            return None
        return LookupPositions(at(m, "k"), pred, image_pos, rows, None, rows_b=tuple(rows_b))
    if m := _FRAME_COUNT.search(user):
        t = int(m.group("t"))
        if not 1 <= t <= len(paths):
            return None
        seen = frames.instances.get(str(Path(paths[t - 1]).resolve()), {})
        rows = sorted({r for k in seen for r in rows_in(t, int(k))})
        return LookupPositions(at(m, "t"), pred, image_pos, rows, None) if rows else None
    if m := _COLOR.search(user):
        k = int(m.group("k"))
        t = next((i for i, f in enumerate(paths, 1) if frames.visible(f, k)), None)
        rows = rows_in(t, k) if t else []
        return LookupPositions(at(m, "k"), pred, image_pos, rows, deciding, candidates()) \
            if rows else None
    return None


def frame_label_loss(out, layouts: list, image_pos: list[int], marks: list | None = None):
    """Head HF of layer LF at each frame's rows attends to the number token of the frame's label (the label's
    second token: ``<``, number, ``>``); ``layouts`` per batch row: :func:`block_layout` with the rows per frame
    as ``(layout, rows_per_frame)``, or None (no term). With ``marks`` (per batch row :func:`first_frame_marks`
    or None), head HM of layer LM at each row on an instance attends to that instance's rows in earlier frames,
    or to the sink in its first frame."""
    import torch

    att = out.attentions[LF][:, HF]
    terms = []
    for i, (lay, pos) in enumerate(zip(layouts, image_pos)):
        if lay is None:
            continue
        layout, n = lay
        for lab, row in layout:
            q = torch.arange(row, row + n, device=att.device) + pos
            terms.append(-torch.log(att[i, q, pos + lab + 1] + 1e-6).mean())
        if marks is None or not marks[i]:
            continue
        am = out.attentions[LM][i, HM]
        target = torch.zeros(len(marks[i]), am.shape[-1], dtype=torch.bool, device=am.device)
        for j, (_, earlier) in enumerate(marks[i]):
            target[j, [pos + e for e in earlier] if earlier else [0]] = True
        q = torch.tensor([pos + r for r, _ in marks[i]], device=am.device)
        terms.append(-torch.log((am[q] * target).sum(-1) + 1e-6).mean())
    return torch.stack(terms).mean() if terms else None
