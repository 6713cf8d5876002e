"""The teacher prompts of ``instit-edge annotate``, kept here as data.

Provenance. The Inst-IT paper (arXiv 2412.03565, section 3 and its appendix) describes the annotation
pipeline: Set-of-Marks frames go to GPT-4o, which writes per frame instance-level captions, an image-level
caption and the temporal change from the previous frame; then a chronological video-level summary; then
open-ended QA pairs that refer to instances by ``[ID]`` and to frames by ``<t>``. The appendix shows its
prompts only as figures, and the public repository inst-it/inst-it ships no annotation code, so the text
below is **our own**, written to that structure. Two things are taken from the public protocol instead of
invented: the way references are written (``[ID]``, ``[ID1] [ID2]``, ``<t>``, ``<s>-<e>``, no commas or
ranges), which follows the rules of the official open-ended prompts (inst-it/inst-it,
``inst-it-bench/prompts.py``, kept verbatim in :mod:`instit_edge.prompting`), and the dataset fields the
replies fill (``instance_level``, ``image_level``, ``temporal_change``, ``video_level_caption``,
``question_answer_pairs``: the released Inst-IT Dataset layout).

Every prompt asks for one JSON object. Changing any string here changes the cache key of the requests that
use it, so a rerun re-asks exactly those (and what depends on their answers).
"""

from __future__ import annotations

import json
import re

# ---------------------------------------------------------------- shared rules (system message of every request)

SYSTEM_PROMPT = (
    "You are an expert annotator of images and videos for instance-level understanding. Every object of "
    "interest is marked on the image with a unique numeric ID drawn on it, and the ID stays the same across "
    "the frames of a video.\n"
    "- Object references: refer to an object only by its ID in square brackets, [ID] for one object (e.g. "
    "[8]) or [ID1] [ID2] ... for several (e.g. [3] [4] [5]). Avoid commas, ranges, or phrases like "
    "[1, 2, 3] or [1] to [3]. Use only the IDs you are given.\n"
    "- Time references: frames of a video are numbered from <1>; refer to a moment as <t> (e.g. at <3>) and "
    "to an interval as <start>-<end> (e.g. during <5>-<7>). Always enclose timestamps in <>.\n"
    "- Output: reply with a single JSON object exactly as asked, with no text before or after it."
)

# ---------------------------------------------------------------- per frame (one request per annotated frame)

_INSTANCE_TASK = (
    '"instance_level": for every listed ID, a detailed caption of that object in {where}: what it is, its '
    "appearance (colour, shape, size, material, clothing, ...), where it is in the frame, what it is doing or "
    "its state, and how it relates to other marked objects (by ID)."
)
_IMAGE_TASK = (
    '"image_level": a caption of the whole {what}: the scene and setting, the marked objects (by ID), what '
    "they are doing and how they relate to each other."
)
_CHANGE_TASK = (
    '"temporal_change": what changed from the previous frame (first image) to the current frame (second image): '
    "which objects "
    "(by ID) moved and in which direction, appeared, disappeared, or changed their action, state or "
    'appearance; write "No visible change." when nothing changed.'
)
_NO_IDS = "No object is marked in {where}; give an empty \"instance_level\" object."

IMAGE_PROMPT = (
    "The image shows marked objects with the IDs {ids}.\n"
    "Annotate the image:\n"
    "1. " + _INSTANCE_TASK.format(where="the image") + "\n"
    "2. " + _IMAGE_TASK.format(what="image") + "\n"
    "Reply with only this JSON object (the keys of \"instance_level\" are exactly {keys}):\n{example}"
)

FIRST_FRAME_PROMPT = (
    "The image is the first frame of a video. The marked objects visible in it have the IDs {ids}.\n"
    "Annotate this frame:\n"
    "1. " + _INSTANCE_TASK.format(where="this frame") + "\n"
    "2. " + _IMAGE_TASK.format(what="frame") + "\n"
    "Reply with only this JSON object (the keys of \"instance_level\" are exactly {keys}):\n{example}"
)

NEXT_FRAME_PROMPT = (
    "The two images are consecutive annotated frames of a video: the first image is the previous frame, the "
    "second image is the current frame. The marked objects visible in the current frame have the IDs {ids}.\n"
    "Annotate the current frame:\n"
    "1. " + _INSTANCE_TASK.format(where="the current frame") + "\n"
    "2. " + _IMAGE_TASK.format(what="current frame") + "\n"
    "3. " + _CHANGE_TASK + "\n"
    "Reply with only this JSON object (the keys of \"instance_level\" are exactly {keys}):\n{example}"
)

# ---------------------------------------------------------------- per video (text only, from the frame annotations)

FRAME_ANNOTATION_LINE = "<{t}>: scene: {image_level}\n{instances}{change}"

SUMMARY_PROMPT = (
    "Below are the frame-by-frame annotations of a video with {n} frames (<1>-<{n}>), in order. An object keeps "
    "its ID in every frame.\n\n{annotations}\n\n"
    "Write a chronological summary of the whole video: what happens from the beginning to the end, following "
    "the objects by their IDs and placing each event in time with timestamps (<t> or <s>-<e>). Use only the "
    "IDs {ids} and timestamps between <1> and <{n}>.\n"
    'Reply with only this JSON object:\n{{"summary": "..."}}'
)

QA_PROMPT = (
    "Below are the annotations of a video with {n} frames (<1>-<{n}>): its frame-by-frame captions and a "
    "summary. An object keeps its ID in every frame.\n\n{annotations}\n\nSummary: {summary}\n\n"
    "Write {k} open-ended question-answer pairs about the marked objects of this video: their attributes, "
    "actions, positions, relations to other objects, and how they change over time. Every question refers to "
    "at least one object by its ID; refer to moments and intervals with timestamps (<t>, <s>-<e>). Answers are "
    "specific, grounded in the annotations, and also refer to objects by [ID] and to time by <t>. Use only the "
    "IDs {ids} and timestamps between <1> and <{n}>.\n"
    'Reply with only this JSON object:\n{{"qa": [{{"question": "...", "answer": "..."}}]}}'
)

# ---------------------------------------------------------------- the fix-up turn after a malformed reply

FIX_PROMPT = (
    "Your reply could not be used: {error}\n"
    "Reply again with only the JSON object asked for above, following the rules about IDs and timestamps."
)


# ---------------------------------------------------------------- builders


def ids_text(ids) -> str:
    ids = sorted(int(i) for i in ids)
    return " ".join(f"[{i}]" for i in ids) if ids else "(none)"


def _keys_text(ids) -> str:
    return ", ".join(f'"{int(i)}"' for i in sorted(ids)) or "(none: an empty object)"


def _example(ids, change: bool) -> str:
    inst = {str(i): f"caption of [{i}]" for i in sorted(int(i) for i in ids)}
    ex: dict = {"instance_level": inst, "image_level": "caption of the whole frame"}
    if change:
        ex["temporal_change"] = "what changed since the previous frame"
    return json.dumps(ex, ensure_ascii=False)


def frame_prompt(ids, t: int | None = None, prev: int | None = None) -> str:
    """The request text for one image (``t`` None), a first frame (``prev`` None) or a later frame.

    No ``<t>`` in a request that carries images: an Inst-IT server reads the images of a request as the frames
    ``<1>``.. of a video, so "the previous frame <4>" would name a frame the request does not have.
    """
    ids = sorted(int(i) for i in ids)
    fields = dict(ids=ids_text(ids), keys=_keys_text(ids), example=_example(ids, change=prev is not None),
                  t=t, prev=prev)
    if t is None:
        text = IMAGE_PROMPT.format(**fields)
        where = "the image"
    elif prev is None:
        text = FIRST_FRAME_PROMPT.format(**fields)
        where = "this frame"
    else:
        text = NEXT_FRAME_PROMPT.format(**fields)
        where = "the current frame"
    if not ids:
        text += "\n" + _NO_IDS.format(where=where)
    return text


def format_annotations(frames) -> str:
    """Frame annotations (dicts with ``t``, ``instance_level``, ``image_level``, ``temporal_change``) as text."""
    lines = []
    for f in frames:
        inst = "".join(f"  [{k}] {v}\n" for k, v in sorted(f["instance_level"].items(), key=lambda kv: int(kv[0])))
        change = f"  change since the previous frame: {f['temporal_change']}\n" if f.get("temporal_change") else ""
        lines.append(FRAME_ANNOTATION_LINE.format(t=f["t"], image_level=f["image_level"], instances=inst,
                                                  change=change).rstrip("\n"))
    return "\n".join(lines)


def summary_prompt(frames, ids) -> str:
    return SUMMARY_PROMPT.format(n=len(frames), annotations=format_annotations(frames), ids=ids_text(ids))


def qa_prompt(frames, summary: str, ids, k: int) -> str:
    return QA_PROMPT.format(n=len(frames), annotations=format_annotations(frames), summary=summary,
                            ids=ids_text(ids), k=int(k))


def fix_prompt(error: str, with_images: bool = False) -> str:
    """The retry turn; with images, ``<t>`` in the error becomes "frame t" (see :func:`frame_prompt`)."""
    if with_images:
        error = re.sub(r"<(\d+)>", r"frame \1", error)
    return FIX_PROMPT.format(error=error)
