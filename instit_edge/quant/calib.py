"""Calibration prompts: marked images / videos with instance questions, in the official prompt format.

Sources: an Inst-IT Bench directory (JSON or parquet layout), or, by default,
a small synthetic world built on the fly. Prompts are split by source (image /
video id) into a calibration part and a held-out part, so fidelity is never
measured on the data that calibrated the quantization.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import InstitError
from ..prompting import official_prompt


@dataclass
class CalibPrompt:
    question: str  # full user text (official MC / OE prompt)
    image: Path | None = None
    frames: list[Path] | None = None
    source: str = ""

    def media(self) -> dict:
        return {"image": self.image} if self.image is not None else {"video": self.frames}


def load_calibration(calib: str | Path | None, n: int = 32, seed: int = 1234, holdout: float = 0.25,
                     workdir: str | Path | None = None) -> tuple[list[CalibPrompt], list[CalibPrompt]]:
    """``(calibration, held_out)`` prompts, at most ``n`` in all, from a bench dir or the synthetic world.

    The synthetic world is built under ``workdir`` (the caller removes it) or a new temporary folder.
    """
    from ..data.bench import load_bench

    if calib is None:
        from ..data.synth import build_world

        root = Path(workdir or tempfile.mkdtemp(prefix="instit-calib-")) / "world"
        build_world(root, seed=seed, n_images=12, n_videos=4, n_train_images=1, n_train_videos=1)
        calib = root / "bench"
    p = Path(calib)
    if not p.exists():
        raise InstitError(f"calibration data not found: {p} (give an Inst-IT Bench directory)")
    if (p / "bench").is_dir():
        p = p / "bench"
    items = load_bench(p)
    if not items:
        raise InstitError(f"calibration set {p} is empty (no bench questions found)")
    # interleave image / video and MC / OE; one prompt per source keeps the set diverse
    seen, prompts = set(), []
    for it in sorted(items, key=lambda i: (i.question_id.split("-")[-1], i.split, i.format, i.question_id)):
        key = (it.split, it.source_id, it.format)
        if key in seen:
            continue
        seen.add(key)
        prompts.append(CalibPrompt(official_prompt(it), it.image_path if it.split == "image" else None,
                                   list(it.frame_paths) if it.split == "video" else None, f"{it.split}:{it.source_id}"))
    prompts = prompts[:n]
    sources = sorted({c.source for c in prompts})
    n_hold = max(1, int(round(len(sources) * holdout)))
    hold = set(sources[-n_hold:])
    cal = [c for c in prompts if c.source not in hold]
    held = [c for c in prompts if c.source in hold]
    if not cal or not held:
        raise InstitError(f"calibration set {p} is too small: need questions about at least 2 images or videos")
    return cal, held
