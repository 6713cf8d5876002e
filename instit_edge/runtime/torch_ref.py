"""The PyTorch reference backend: the same interface as ``EdgeSession``, on the HF checkpoint.

Used by parity tests and by users with a GPU. Images go through the HF
processor and ``model(...)`` / ``model.generate(...)`` exactly as transformers
runs them; video frames go through the family's own video path where
transformers has one (LLaVA-OneVision), otherwise the bundle's video settings
(the Inst-IT convention: no AnyRes, 2x2 pooling) in torch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from ..errors import InstitError
from .anyres import load_image
from .session import Answer


@dataclass
class TorchSession:
    model: object
    processor: object
    template: str
    video: dict
    device: str = "cpu"
    last_stats: dict = None
    _block_text: list = field(default_factory=list)  # label tokens in the last spliced rows (frame labels)

    @classmethod
    def load(cls, checkpoint: str, device: str = "cpu", dtype: str = "float32") -> "TorchSession":
        from ..models.families import chat_template_for, preprocess_for
        from ..models.loading import load_model

        model, processor = load_model(checkpoint, dtype=dtype, device=device)
        template = chat_template_for(model, processor)
        video = preprocess_for(model, processor)["video"]
        return cls(model, processor, template, video, device, {})

    # ------------------------------------------------------------------ inputs
    def prompt_ids(self, question: str, media: str | None) -> list[int]:
        """Token ids of the chat prompt, one ``<image>`` id for the media.

        As in ``EdgeSession``: the template's special tokens are parsed in the
        template's text only; the question is plain text even when it spells
        ``</s>`` or ``<image>`` (HF's ``split_special_tokens``). Text between
        special tokens is one run, so a plain question gets exactly the ids the
        HF processor gives the whole prompt.
        """
        import re

        from ..prompting import TEMPLATE_SPECIAL_TOKENS, check_text
        from .session import build_user_prompt_parts

        tok = self.processor.tokenizer
        check_text(question)
        added = tok.get_added_vocab()
        specials = [s for s in TEMPLATE_SPECIAL_TOKENS if s in added]
        pattern = re.compile("(" + "|".join(re.escape(s) for s in specials) + ")") if specials else None
        runs: list = []
        cur = ""
        for text, is_template in build_user_prompt_parts(question, self.template, media):
            if not is_template or pattern is None:
                cur += text
                continue
            for i, piece in enumerate(pattern.split(text)):
                if i % 2:
                    runs += [cur, added[piece]]
                    cur = ""
                else:
                    cur += piece
        runs.append(cur)
        ids = tok("", add_special_tokens=True)["input_ids"]  # BOS when the tokenizer adds one
        for r in runs:
            if isinstance(r, int):
                ids.append(r)
            elif r:
                ids += tok(r, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        return ids

    def _inputs(self, question: str, image=None, video=None):
        import torch

        self._block_text = []  # label tokens inside the spliced rows (frame labels): text positions for logits
        media = "image" if (image is not None or video is not None) else None
        ids = torch.tensor([self.prompt_ids(question, media)], device=self.device)
        with torch.no_grad():
            embeds = self.model.get_input_embeddings()(ids)
        if image is not None:
            img = load_image(image)
            inputs = self.processor.image_processor(images=img, return_tensors="pt").to(self.device)
            with torch.no_grad():
                kw = {k: v for k, v in inputs.items() if k in ("pixel_values", "image_sizes")}
                feats = self.model.get_image_features(**kw)
                rows = feats.pooler_output if hasattr(feats, "pooler_output") else feats
                rows = torch.cat(list(rows), 0) if isinstance(rows, (list, tuple)) else rows.reshape(-1, rows.shape[-1])
            return self._splice(ids, embeds, rows, expand=True)
        if video is not None:
            return self._splice(ids, embeds, self.video_rows(video), expand=True)
        return ids, embeds, 0

    def _splice(self, ids, embeds, rows, expand: bool = False):
        import torch

        img_id = self.model.config.image_token_id
        pos = (ids[0] == img_id).nonzero().flatten().tolist()
        if not pos:
            raise InstitError("prompt has no image placeholder")
        start = pos[0]
        n_placeholder = 1 if expand else len(pos)
        if not expand and n_placeholder != len(rows):
            raise InstitError(f"processor made {n_placeholder} image tokens but the model gives {len(rows)} rows")
        rows = rows.to(embeds.dtype)
        full = torch.cat([embeds[:, :start], rows[None], embeds[:, start + n_placeholder:]], 1)
        return ids, full, len(rows) - n_placeholder

    def video_rows(self, video):
        """Frames' rows as the checkpoint's family packs them (:func:`instit_edge.models.vision.video_rows`), with
        the frame labels of :func:`~instit_edge.models.vision.label_frames` where the model has them."""
        import torch
        from PIL import Image

        from ..models.families import processor_tile_size
        from ..models.vision import label_frames, video_rows
        from .anyres import Preprocess
        from .media import load_numbered_frames

        ip = self.processor.image_processor
        pre = Preprocess(processor_tile_size(ip), list(ip.image_mean), list(ip.image_std), None)
        frames, numbers = load_numbered_frames(video, self.video["max_frames"])
        crops = np.concatenate([pre.crops(Image.fromarray(f), anyres=False)[0] for f in frames])
        with torch.no_grad():
            rows = video_rows(self.model, torch.from_numpy(crops).to(self.device), self.video)
            if self.video.get("frame_labels"):  # "<t>" before each frame's rows, as the bundle's runtime does
                rows = label_frames(self.model, self.processor.tokenizer, rows, numbers, self._block_text)
            return rows

    # ------------------------------------------------------------------ API
    def logits(self, question: str, image=None, video=None) -> np.ndarray:
        """Logits at every text position (image rows excluded, frame labels kept), like ``EdgeSession.logits``."""
        import torch

        ids, embeds, extra = self._inputs(question, image, video)
        with torch.no_grad():
            out = self.model(inputs_embeds=embeds).logits[0].float().cpu().numpy()
        img_id = self.model.config.image_token_id
        pos = (ids[0] == img_id).nonzero().flatten().tolist()
        if not pos:
            return out
        n_rows = (len(pos) if extra == 0 else 1) + extra
        start = pos[0]
        labels = [start + i for i in self._block_text]  # frame labels are text, as the bundle's segments are
        return np.concatenate([out[:start], out[labels], out[start + n_rows:]], 0)

    def stream(self, question: str, image=None, video=None, max_new_tokens: int = 128, **_) -> Iterator[str]:
        import torch

        t0 = time.perf_counter()
        ids, embeds, _extra = self._inputs(question, image, video)
        tok = self.processor.tokenizer
        eos = tok.eos_token_id
        past = None
        out_ids: list[int] = []
        text = ""
        cur = embeds
        ttft = None
        with torch.no_grad():
            for _ in range(max_new_tokens):
                o = self.model(inputs_embeds=cur, past_key_values=past, use_cache=True)
                past = o.past_key_values
                nxt = int(o.logits[0, -1].argmax())
                if ttft is None:
                    ttft = time.perf_counter() - t0
                if nxt == eos:
                    break
                out_ids.append(nxt)
                new = tok.decode(out_ids, skip_special_tokens=True)
                piece, text = new[len(text):], new
                if piece:
                    yield piece
                cur = self.model.get_input_embeddings()(torch.tensor([[nxt]], device=self.device))
        self.last_stats = {"generated_tokens": len(out_ids), "ttft_s": ttft, "total_s": time.perf_counter() - t0,
                           "prompt_tokens": int(embeds.shape[1])}

    def generated_ids(self, question: str, image=None, video=None, max_new_tokens: int = 16) -> list[int]:
        import torch

        ids, embeds, _ = self._inputs(question, image, video)
        out = []
        past, cur = None, embeds
        with torch.no_grad():
            for _ in range(max_new_tokens):
                o = self.model(inputs_embeds=cur, past_key_values=past, use_cache=True)
                past = o.past_key_values
                nxt = int(o.logits[0, -1].argmax())
                out.append(nxt)
                cur = self.model.get_input_embeddings()(torch.tensor([[nxt]], device=self.device))
        return out

    def ask(self, question: str, image=None, video=None, **kw) -> Answer:
        text = "".join(self.stream(question, image=image, video=video, **kw))
        return Answer(text.strip(), dict(self.last_stats or {}))
