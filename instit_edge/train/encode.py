"""Samples -> model inputs with loss on assistant turns only.

The chat is rendered with the model's template (``vicuna_v1`` / ``chatml``,
the same strings the runtime prompts with), tokenized once with offsets, and
every token inside an assistant answer (its end-of-turn marker included, so the
model learns to stop) gets a label; everything else is -100. The single
``<image>`` token is replaced by the image rows (AnyRes for images; no AnyRes
and 2x2 pooling for video frames), computed with gradients so the projector
and the unfrozen vision layers train.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InstitError
from ..prompting import IMAGE_TOKEN, render_chat, stop_strings

IGNORE = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    image_pos: int  # index of the <image> token, -1 when none


def encode_text(sample, tokenizer, template: str) -> Encoded:
    turns = []
    for k, (u, a) in enumerate(sample.turns):
        user = f"{IMAGE_TOKEN}\n{u}" if k == 0 and sample.media() else u
        turns += [("user", user), ("assistant", a)]
    text = render_chat(template, turns, add_generation_prompt=False)
    end = stop_strings(template)[0]
    spans, cursor = [], 0
    for k, (_, a) in enumerate(sample.turns):
        # the answer starts where the generation prompt of its turn ends (never inside the system or user text)
        cursor = max(cursor, len(render_chat(template, turns[: 2 * k + 1], add_generation_prompt=True)))
        i = text.find(a, cursor)
        if i < 0:
            raise InstitError(f"could not locate an answer in the rendered chat ({template})")
        j = i + len(a)
        if text.startswith(end, j):
            j += len(end)
        spans.append((i, j))
        cursor = j
    enc = tokenizer(text, return_offsets_mapping=True)
    ids = enc["input_ids"]
    labels = []
    for t, (s, e) in zip(ids, enc["offset_mapping"]):
        # byte-level BPE folds the space before a word into its token (" C"): judge a token by its visible
        # characters, or the first word of every answer (the MC letter itself) would never be learned
        v = s
        while v < e and text[v].isspace():
            v += 1
        if v == e:  # a whitespace-only token counts when it lies inside an answer
            v = s
        inside = e > v and any(v >= a and e <= b for a, b in spans)
        labels.append(t if inside else IGNORE)
    img_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    pos = [i for i, t in enumerate(ids) if t == img_id]
    if sample.media() and len(pos) != 1:
        raise InstitError(f"expected one {IMAGE_TOKEN} token in a training sample, found {len(pos)}")
    if not any(lbl != IGNORE for lbl in labels):
        raise InstitError("a training sample has no assistant tokens to learn from")
    return Encoded(ids, labels, pos[0] if pos else -1)


class MediaEncoder:
    """Image / video rows with gradients, matching the runtime's preprocessing."""

    def __init__(self, model, processor, max_frames: int = 32):
        from ..models.families import family_of, preprocess_for
        from ..runtime.anyres import Preprocess

        self.model = model
        self.processor = processor
        pre = preprocess_for(model, processor)  # the bundle's preprocessing: training sees what export packs
        self.pre = Preprocess(pre["image_size"], pre["image_mean"], pre["image_std"], pre["pinpoints"])
        self.video = pre["video"]
        self.max_frames = max_frames
        self.is_next = family_of(model.config).anyres

    def image_rows(self, image):
        import torch

        from ..runtime.anyres import load_image

        img = load_image(image)
        crops, hw = self.pre.crops(img, anyres=True)
        dev = next(self.model.parameters()).device
        pv = torch.from_numpy(crops).to(dev)
        if self.is_next:
            out = self.model.model.get_image_features(pixel_values=pv[None], image_sizes=torch.tensor([hw], device=dev))
        else:
            out = self.model.model.get_image_features(pixel_values=pv)
        rows = out.pooler_output if hasattr(out, "pooler_output") else out
        return torch.cat(list(rows), 0) if isinstance(rows, (list, tuple)) else rows.reshape(-1, rows.shape[-1])

    def video_rows(self, frames):
        import torch
        from PIL import Image

        from ..models.vision import label_frames, video_rows
        from ..runtime.media import load_numbered_frames

        arrs, numbers = load_numbered_frames(frames, self.max_frames)
        crops = np.concatenate([self.pre.crops(Image.fromarray(f), anyres=False)[0] for f in arrs])
        dev = next(self.model.parameters()).device
        rows = video_rows(self.model, torch.from_numpy(crops).to(dev), self.video)
        if self.video.get("frame_labels"):  # the model reads "<t>" before each frame's rows
            rows = label_frames(self.model, self.processor.tokenizer, rows, numbers)
        return rows

    def rows(self, sample):
        m = sample.media()
        if "image" in m:
            return self.image_rows(m["image"])
        if "video" in m:
            return self.video_rows(m["video"])
        return None


def build_batch(model, media: MediaEncoder, samples, encoded: list[Encoded]):
    """Padded ``inputs_embeds``, ``attention_mask`` and ``labels`` for one batch."""
    import torch

    emb = model.get_input_embeddings()
    dev = emb.weight.device
    seqs, labs = [], []
    for s, e in zip(samples, encoded):
        ids = torch.tensor(e.input_ids, device=dev)
        x = emb(ids)
        lab = torch.tensor(e.labels, device=dev)
        if e.image_pos >= 0:
            rows = media.rows(s).to(x.dtype)
            x = torch.cat([x[: e.image_pos], rows, x[e.image_pos + 1:]], 0)
            lab = torch.cat([lab[: e.image_pos], torch.full((len(rows),), IGNORE, device=dev), lab[e.image_pos + 1:]])
        seqs.append(x)
        labs.append(lab)
    n = max(len(x) for x in seqs)
    d = seqs[0].shape[-1]
    embeds = torch.zeros(len(seqs), n, d, dtype=seqs[0].dtype, device=dev)
    mask = torch.zeros(len(seqs), n, dtype=torch.long, device=dev)
    labels = torch.full((len(seqs), n), IGNORE, dtype=torch.long, device=dev)
    for i, (x, lab) in enumerate(zip(seqs, labs)):
        embeds[i, : len(x)] = x
        mask[i, : len(x)] = 1
        labels[i, : len(lab)] = lab
    return embeds, mask, labels
