"""Inst-IT Dataset records -> instruction samples (the paper's instruction types), and general LLaVA data.

Image records give: list every instance ([ID] + description), describe the
scene. Video records give, per frame: list the instances at <t>; per pair of
consecutive frames: describe the change between <t-1> and <t>; per video:
summarise the video, and the multi-turn QA. A sample is a list of
(user, assistant) turns about one image or one list of frames; the first
user turn carries the image placeholder.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InstitError
from ..prompting import IMAGE_TOKEN


@dataclass
class Sample:
    turns: list[tuple[str, str]]  # (user, assistant)
    image: Path | None = None
    frames: list[Path] = field(default_factory=list)
    kind: str = ""

    def media(self) -> dict:
        if self.image is not None:
            return {"image": self.image}
        if self.frames:
            return {"video": self.frames}
        return {}


def _list_instances(captions: dict[str, str]) -> str:
    return " ".join(f"[{k}] {v}" for k, v in sorted(captions.items(), key=lambda kv: int(kv[0])))


def instit_samples(records, max_frame_samples: int = 4, seed: int = 0) -> list[Sample]:
    from ..data.records import ImageRecord, VideoRecord

    rng = random.Random(seed)
    out: list[Sample] = []
    for r in records:
        if isinstance(r, ImageRecord):
            out.append(Sample([("List every marked instance in the image with its ID and a description.",
                                _list_instances(r.instance_level_caption))], image=r.image_path, kind="list"))
            out.append(Sample([("Describe the scene.", r.image_level_caption)], image=r.image_path, kind="scene"))
        elif isinstance(r, VideoRecord):
            paths = r.frame_paths
            frames = r.frames
            picks = sorted(rng.sample(range(len(frames)), min(max_frame_samples, len(frames))))
            for i in picks:
                f = frames[i]
                out.append(Sample([(f"List every marked instance at <{f.timestamp}>.", _list_instances(f.instance_level))],
                                  frames=paths, kind="frame_list"))
                if f.temporal_change and i > 0:
                    prev = frames[i - 1].timestamp
                    out.append(Sample([(f"What changed between <{prev}> and <{f.timestamp}>?", f.temporal_change)],
                                      frames=paths, kind="change"))
            out.append(Sample([("Summarise the video.", r.video_level_caption)], frames=paths, kind="summary"))
            if r.question_answer_pairs:
                out.append(Sample(list(r.question_answer_pairs), frames=paths, kind="qa"))
        else:  # pragma: no cover - readers only produce the two record types
            raise InstitError(f"unknown record type {type(r).__name__}")
    return out


def general_samples(path: str | Path, with_images: bool = True) -> list[Sample]:
    """LLaVA conversation format: [{"image": rel, "conversations": [{"from": "human"|"gpt", "value"}]}]."""
    p = Path(path)
    if not p.is_file():
        raise InstitError(f"general data not found: {p} (a LLaVA-format JSON list)")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise InstitError(f"{p} is not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(data, list):
        raise InstitError(f"{p} must hold a JSON list of samples")
    out = []
    for i, s in enumerate(data):
        sid = s.get("id", i) if isinstance(s, dict) else i
        conv = s.get("conversations") if isinstance(s, dict) else None
        if not conv or len(conv) % 2:
            raise InstitError(f"{p}: sample {sid} needs an even list of conversations (human, gpt, ...)")
        image = s.get("image")
        first = conv[0].get("value", "")
        if image and IMAGE_TOKEN not in first:
            raise InstitError(f"{p}: sample {sid} has an image but its first turn has no {IMAGE_TOKEN}")
        if image and with_images:
            ip = (p.parent / image).resolve()
            if not ip.is_file():
                raise InstitError(f"{p}: sample {sid} image not found: {ip}")
        else:
            ip = None
        turns = []
        for a, b in zip(conv[::2], conv[1::2]):
            if a.get("from") not in ("human", "user") or b.get("from") not in ("gpt", "assistant"):
                raise InstitError(f"{p}: sample {sid} turns must alternate human / gpt")
            turns.append((a["value"].replace(IMAGE_TOKEN, "").strip(), b["value"]))
        out.append(Sample(turns, image=ip, kind="general"))
    return out


def mix(instit: list[Sample], general: list[Sample], ratio: float, seed: int = 0) -> list[Sample]:
    """Mix so that a fraction ``ratio`` of samples is Inst-IT (the paper: ~155K / 920K = 0.17)."""
    if not 0 < ratio <= 1:
        raise InstitError(f"--ratio must be in (0, 1] (the share of Inst-IT samples in the mix), got {ratio}")
    rng = random.Random(seed)
    if not general or ratio == 1:
        out = list(instit)
    else:
        n_general = int(round(len(instit) * (1 - ratio) / ratio))
        pool = general * (n_general // len(general) + 1)
        out = list(instit) + rng.sample(pool, n_general) if n_general else list(instit)
    rng.shuffle(out)
    return out
