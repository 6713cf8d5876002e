"""Oracle image rows and a retrieval-head initialisation for the default model's curriculum.

A from-scratch LLM left the default model at chance: to answer "What is the
colour of [2]?" it has to find the image rows of instance 2 (a content lookup
from the question into the image). With rows from the frozen vision tower it
did not learn to in 22,400 samples (held-out first-token accuracy 0.19-0.22,
chance by prior ~0.2); with perfect rows it does (0.63 after 22,400 samples,
0.91 after 64,000; ~98 samples/s; docs/default-model-lookup.png). Hence a
curriculum:

* :class:`OracleRows` replaces the vision rows by *oracle rows* built from the
  synthetic world's ground truth: the row of a patch is the sum of the LLM's
  own input embeddings of the covering instance's ID digit, colour, shape and
  position words (zero for background; video frames are 2x2-pooled like the
  real rows). The LLM learns the question -> row lookup on clean inputs
  (stage 2a); the tower's own rows are made the same kind of sum by the
  projector's code (``default_model.pretrain_codes`` + ``TiedCodeRows``), and
  stage 2b trains on those.

Tried and dropped: initialising one first-layer head as an ID matcher (query
and key projected onto the span of the ID-digit embeddings on the slowest RoPE
frequencies); on the short lookup task it learned no faster (held-out 0.31 vs
0.33 after 300 steps of 32).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import InstitError

PATCH_GRID = 8  # 128 px / 16 px patches


def _token_ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def id_token(tok, k: int) -> int:
    """The token that carries the ID digit(s) in ``[k]`` as the questions write it."""
    ids = _token_ids(tok, f" [{k}]")
    digits = [t for t in ids if tok.convert_ids_to_tokens(t).strip("Ġ[]?.").isdigit()]
    if not digits:
        raise InstitError(f"the tokenizer has no digit token inside ' [{k}]': {tok.convert_ids_to_tokens(ids)}")
    return digits[0]


class SceneTable:
    """Per image / frame path: the token ids that make up each patch's oracle row (padded with -1)."""

    def __init__(self, world: Path, tok, grid: int = PATCH_GRID, width: int = 8):
        from PIL import Image

        gt = json.loads((world / "ground_truth.json").read_text())
        self.grid, self.width = grid, width
        self.table: dict[str, np.ndarray] = {}
        cache: dict[str, list[int]] = {}

        def words(v: dict, k: str) -> list[int]:
            key = f"{k}|{v['color']}|{v['shape']}|{v['position']}"
            if key not in cache:
                ids = [id_token(tok, int(k)), _token_ids(tok, " " + v["color"])[0],
                       _token_ids(tok, " " + v["shape"])[0]] + _token_ids(tok, " " + v["position"])
                cache[key] = ids[:width]
            return cache[key]

        def add(image_path: Path, mask_path: Path, instances: dict) -> None:
            m = np.asarray(Image.open(mask_path))
            step = m.shape[0] // grid
            c = np.arange(grid) * step + step // 2
            ids = m[np.ix_(c, c)].reshape(-1)
            rows = np.full((grid * grid, width), -1, np.int64)
            for j, k in enumerate(ids):
                if k and str(int(k)) in instances:
                    w = words(instances[str(int(k))], str(int(k)))
                    rows[j, : len(w)] = w
            self.table[str(image_path.resolve())] = rows

        for part in ("dataset", "bench"):
            for e in gt[part]["images"].values():
                add(world / e["image_path"], world / e["mask_path"], e["instances"])
            for v in gt[part]["videos"].values():
                for f in v["frames"]:
                    add(world / v["video_path"] / f["frame_name"], world / f["mask_path"], f["instances"])

    def ids(self, path) -> np.ndarray:
        key = str(Path(path).resolve())
        if key not in self.table:
            raise InstitError(f"no ground truth for {path}: oracle rows exist only for the training world")
        return self.table[key]


def embed_rows(embedding, ids: np.ndarray):
    """Sum of the embeddings of each row's token ids (rows of -1 give zeros)."""
    import torch

    t = torch.from_numpy(ids)
    mask = (t >= 0).to(embedding.weight.dtype)
    return (embedding(t.clamp(min=0)) * mask[..., None]).sum(-2)


def pool_frames(rows, grid: int = PATCH_GRID, pool: int = 2):
    """[frames * grid * grid, d] -> 2x2 average-pooled rows, as the runtime pools video frames."""
    import torch.nn.functional as F

    d = rows.shape[-1]
    g = rows.reshape(-1, grid, grid, d).permute(0, 3, 1, 2)
    g = F.avg_pool2d(g, pool, pool, ceil_mode=True)
    return g.permute(0, 2, 3, 1).reshape(-1, d)


class OracleRows:
    """``rows(sample)`` like :class:`~instit_edge.train.default_model.FrozenVisionRows`, from the ground truth."""

    def __init__(self, model, scenes: SceneTable, max_frames: int = 32):
        self.emb = model.get_input_embeddings()
        self.scenes = scenes
        self.max_frames = max_frames

    def rows(self, sample):
        import torch

        from ..runtime.media import sample_indices

        if sample.image is not None:
            return embed_rows(self.emb, self.scenes.ids(sample.image))
        frames = list(sample.frames)
        keep = sample_indices(len(frames), self.max_frames) if len(frames) > self.max_frames else range(len(frames))
        ids = np.concatenate([self.scenes.ids(frames[i]) for i in keep])
        return pool_frames(embed_rows(self.emb, ids), self.scenes.grid).to(torch.get_default_dtype())
