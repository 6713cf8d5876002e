"""Per-frame marker output: the instances visible in a frame, and question checks against them.

An instance is a tracked :class:`~instit_edge.marker.base.Detection` (its ``id`` set by the tracker).
``visible_ids`` gives the IDs for a prompt, ``check_question`` rejects a question that names an ID that is
not on screen.
"""

from __future__ import annotations

from typing import Iterable

from instit_edge.marker.base import Detection
from instit_edge.prompting import format_ids, validate_references


def visible_ids(instances: Iterable[Detection]) -> list[int]:
    """Sorted distinct IDs of ``instances`` (what a prompt may refer to)."""
    return sorted({int(i.id) for i in instances})


def describe_ids(instances: Iterable[Detection]) -> str:
    """``"[1] [3]"``: the visible IDs in the Inst-IT notation (empty string when none)."""
    return format_ids(visible_ids(instances))


def check_question(question: str, instances: Iterable[Detection] | Iterable[int], n_frames: int | None = None) -> None:
    """Raise InstitError when ``question`` names an ``[ID]`` that is not visible (or a ``<t>`` past ``n_frames``).

    ``instances``: the :class:`~instit_edge.marker.base.Detection` list of the frame (or frames) the
    question is about, or plain IDs. The message lists the visible IDs.
    """
    ids = [i.id if isinstance(i, Detection) else int(i) for i in instances]
    validate_references(question, valid_ids=ids, n_frames=n_frames)
