"""Per-frame marker output: the instances visible in a frame, and question checks against them.

An :class:`Instance` is what the marker knows about one tracked object in one
frame: its persistent ``id`` (the number drawn on it), its box, an optional
mask, the detector's label and score, and the first / last frame index
(0-based, counted over the frames the marker has seen) where the tracker
reported it. ``visible_ids`` gives the IDs for a prompt, ``check_question``
rejects a question that names an ID that is not on screen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from instit_edge.prompting import format_ids, validate_references


@dataclass
class Instance:
    """One tracked instance in one frame; ``box`` is ``(x0, y0, x1, y1)`` in pixels, x1/y1 exclusive."""

    id: int
    box: tuple[int, int, int, int]
    mask: np.ndarray | None = None
    label: str = "object"
    score: float = 1.0
    first_seen: int = 0
    last_seen: int = 0

    def to_dict(self) -> dict:
        """JSON-ready dict (the mask is summarised by its pixel count)."""
        d = {"id": int(self.id), "box": [int(v) for v in self.box], "label": self.label,
             "score": round(float(self.score), 4), "first_seen": int(self.first_seen),
             "last_seen": int(self.last_seen)}
        if self.mask is not None:
            d["mask_area"] = int(np.count_nonzero(self.mask))
        return d

    def to_mark(self):
        """The :class:`~instit_edge.marker.render.Mark` that draws this instance."""
        from instit_edge.marker.render import Mark

        return Mark(int(self.id), box=tuple(int(v) for v in self.box), mask=self.mask)


def visible_ids(instances: Iterable[Instance]) -> list[int]:
    """Sorted distinct IDs of ``instances`` (what a prompt may refer to)."""
    return sorted({int(i.id) for i in instances})


def describe_ids(instances: Iterable[Instance]) -> str:
    """``"[1] [3]"``: the visible IDs in the Inst-IT notation (empty string when none)."""
    return format_ids(visible_ids(instances))


def check_question(question: str, instances: Iterable[Instance] | Iterable[int], n_frames: int | None = None) -> None:
    """Raise InstitError when ``question`` names an ``[ID]`` that is not visible (or a ``<t>`` past ``n_frames``).

    ``instances``: the :class:`Instance` list of the frame (or frames) the
    question is about, or plain IDs. The message lists the visible IDs.
    """
    ids = [i.id if isinstance(i, Instance) else int(i) for i in instances]
    validate_references(question, valid_ids=ids, n_frames=n_frames)
