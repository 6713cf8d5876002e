"""``EdgeSession``: answer instance questions from a bundle, without torch.

Vision runs in ONNX Runtime with exact Hugging Face preprocessing and packing
(numpy); the embeddings are injected into llama.cpp. Two caches make repeated
questions cheap: image embeddings by content hash, and the llama.cpp KV of
the longest common prompt prefix (system prompt, and the image rows when the
same image is asked about again).

    from instit_edge import EdgeSession
    s = EdgeSession.load("bundle/", llm="q4_k_m", vision="int8")
    for piece in s.stream("What is [2] holding?", image="frame.jpg"):
        print(piece, end="")
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..bundle import Bundle
from ..errors import InstitError
from .anyres import Preprocess, load_image, pack_anyres, pool_video_frame
from .llm_llamacpp import GenStats, LlamaCppLLM, Segment


@dataclass
class Answer:
    text: str
    stats: dict = field(default_factory=dict)


def build_user_prompt(question: str, template: str, media: str | None, image_token: str = "<image>") -> str:
    """The chat prompt with one image placeholder before the question (official Inst-IT layout)."""
    from ..prompting import render_chat

    content = f"{image_token}\n{question}" if media else question
    return render_chat(template, [("user", content)], add_generation_prompt=True)


_QUESTION_SLOT = "\x00instit-edge-question\x00"


def build_user_prompt_parts(question: str, template: str, media: str | None,
                            image_token: str = "<image>") -> list[tuple[str, bool]]:
    """:func:`build_user_prompt` as ``[(text, is_template), ...]``: the template's text around the question.

    Tokenizers parse special tokens (``</s>``, ``<|im_end|>``, ``<image>``) only
    in the template's parts; the question is always plain text, so a user who
    types ``</s>`` or ``<image>`` gets those characters, not the tokens.
    """
    before, after = build_user_prompt(_QUESTION_SLOT, template, media, image_token).split(_QUESTION_SLOT)
    return [(before, True), (question, False), (after, True)]


def _user_part(question: str) -> str:
    """The question without the official pre-prompts, whose examples ("[8]", "<7>-<8>") are not references."""
    from .. import prompting as P

    for pre in (P.IMAGE_MC_PRE_PROMPT, P.IMAGE_OE_PRE_PROMPT, P.VIDEO_MC_PRE_PROMPT, P.VIDEO_OE_PRE_PROMPT):
        question = question.replace(pre, "")
    return question


class EdgeSession:
    def __init__(self, bundle: Bundle, llm: LlamaCppLLM, vision, llm_variant: str, vision_variant: str):
        self.bundle = bundle
        self.llm = llm
        self.vision = vision
        self.llm_variant = llm_variant
        self.vision_variant = vision_variant
        self.pre = Preprocess.from_dict(bundle.preprocess)
        p = bundle.path("extra", "image_newline") if "image_newline" in bundle.variants("extra") else None
        self.newline = np.load(p) if p is not None else None
        self.prompt_cfg = bundle.prompt
        self._embd_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.cache_size = 64
        # bundles whose video config says frame_labels get "<t>" before each frame's rows: key -> (numbers,
        # rows per frame) of the videos embedded lately (segments() splits their rows there)
        self.frame_labels = bool(bundle.preprocess.get("video", {}).get("frame_labels", False))
        self._frame_layout: OrderedDict[str, tuple[list[int], list[int]]] = OrderedDict()
        self.last_stats: dict = {}
        # llama.cpp's context is not thread-safe: answers and background prefetches take turns. A plain Lock,
        # not an RLock: ``stream`` is a generator that Gradio / Starlette advance from different worker
        # threads, and an RLock may only be released by the thread that took it
        self._lock = threading.Lock()
        self._prefetch_pool = None
        self._prefetch_gen = 0
        self.max_tiles: int | None = None  # image token budget (AnyRes tiles); None = the bundle's pinpoints
        self.auto_choice: dict = {}  # why "auto" picked the variants, when it did

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        bundle: str | Path | Bundle,
        llm: str = "f16",
        vision: str = "fp32",
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        n_ctx: int | None = None,
        verify: bool = True,
        f32_kv: bool = False,
        verbose: bool = False,
    ) -> "EdgeSession":
        from .vision_onnx import OnnxVision

        b = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle, verify=False)
        auto = {}
        if llm == "auto" or vision == "auto":  # the variant for this device (runtime/auto.py)
            from .auto import choose

            if llm == "auto":
                llm, auto["llm"] = choose(b, "llm", n_gpu_layers=n_gpu_layers)
            if vision == "auto":
                vision, auto["vision"] = choose(b, "vision", n_gpu_layers=n_gpu_layers)
        llm_path = b.path("llm", llm)
        vision_path = b.path("vision", vision)
        if verify:  # only the files this session uses
            names = [b.entry("llm", llm)["path"], b.entry("vision", vision)["path"]]
            if "image_newline" in b.variants("extra"):
                names.append(b.entry("extra", "image_newline")["path"])
            b.verify(names)
        ctx = n_ctx or min(int(b.architecture.get("context_length", 4096)), 8192)
        lm = LlamaCppLLM(llm_path, n_ctx=ctx, n_threads=n_threads, n_gpu_layers=n_gpu_layers, f32_kv=f32_kv,
                         verbose=verbose)
        vis = OnnxVision(vision_path, n_threads=n_threads, prefer_gpu=n_gpu_layers != 0)
        s = cls(b, lm, vis, llm, vision)
        s.auto_choice = auto
        return s

    # ------------------------------------------------------------------ vision
    def _cached(self, key: str, compute) -> np.ndarray:
        if key in self._embd_cache:
            self._embd_cache.move_to_end(key)
            return self._embd_cache[key]
        rows = compute()
        self._embd_cache[key] = rows
        while len(self._embd_cache) > self.cache_size:
            self._embd_cache.popitem(last=False)
        return rows

    @staticmethod
    def _hash(arr: np.ndarray) -> str:
        h = hashlib.sha1(arr.tobytes())
        h.update(str(arr.shape).encode())
        return h.hexdigest()[:20]

    def set_max_tiles(self, max_tiles: int | None) -> None:
        """Spend fewer image tokens: keep only AnyRes grids of at most ``max_tiles`` tiles (0 = the base image
        alone, one newline row after it, as LLaVA-Next packs a single crop); None = every pinpoint of the
        bundle. Equivalent to the same model with ``image_grid_pinpoints`` restricted to those grids."""
        if max_tiles is not None and (not isinstance(max_tiles, int) or max_tiles < 0):
            raise InstitError(f"--max-tiles must be 0 or more, got {max_tiles!r}")
        self.max_tiles = max_tiles

    def _image_preprocess(self):
        """The preprocessing under the current tile budget (pinpoints None = base image only)."""
        import dataclasses

        if self.max_tiles is None or not self.pre.pinpoints:
            return self.pre
        s = self.pre.image_size
        keep = [p for p in self.pre.pinpoints if (p[0] // s) * (p[1] // s) <= self.max_tiles]
        return dataclasses.replace(self.pre, pinpoints=keep or None)

    def image_embeddings(self, image) -> tuple[np.ndarray, str]:
        """Packed image rows ``[n, d_text]`` (AnyRes + unpad + newline for LLaVA-Next) and a cache key."""
        arr = np.asarray(load_image(image))
        pre = self._image_preprocess()
        budget = "" if self.max_tiles is None else f":t{self.max_tiles}"
        key = f"img:{self.vision_variant}{budget}:{self._hash(arr)}"

        def compute():
            from PIL import Image

            crops, hw = pre.crops(Image.fromarray(arr), anyres=True)
            feats = self.vision(crops)
            if self.pre.pinpoints:  # LLaVA-Next packing (a single crop: base + newline)
                bp = self.bundle.preprocess
                return pack_anyres(feats, hw, pre.pinpoints or self.pre.pinpoints, pre.image_size, bp["patch_size"],
                                   self.newline, bp.get("unpad_rounding", "round7"), bp.get("anyres_max"))
            return feats[0]

        return self._cached(key, compute), key

    def frame_embeddings(self, frame: np.ndarray) -> np.ndarray:
        """One video frame: no AnyRes, pooled as the bundle's video config says."""
        vcfg = self.bundle.preprocess.get("video", {})
        key = f"frm:{self.vision_variant}:{self._hash(frame)}"

        def compute():
            from PIL import Image

            crops, _ = self.pre.crops(Image.fromarray(frame), anyres=False)
            feats = self.vision(crops)[0]
            return pool_video_frame(feats, int(vcfg.get("pool_stride", 1)), vcfg.get("pool_mode", "average"),
                                    bool(vcfg.get("pool_ceil", True)))

        return self._cached(key, compute)

    def video_embeddings(self, video) -> tuple[np.ndarray, str, int]:
        from .media import load_numbered_frames

        max_frames = int(self.bundle.preprocess.get("video", {}).get("max_frames", 32))
        frames, numbers = load_numbered_frames(video, max_frames=max_frames)
        return self.frames_embeddings(frames, numbers)

    def frames_embeddings(self, frames: list[np.ndarray], numbers: list[int] | None = None
                          ) -> tuple[np.ndarray, str, int]:
        """A video's rows from its (sampled) frames, ``numbers`` their 1-based places in the whole video (default
        1..N): the rows, their cache key and the frame count. For a bundle with frame labels the key also
        tells :meth:`segments` where each frame's rows start."""
        numbers = list(numbers) if numbers is not None else list(range(1, len(frames) + 1))
        if len(numbers) != len(frames):
            raise InstitError(f"{len(frames)} frames but {len(numbers)} frame numbers")
        blocks = self._video_blocks([self.frame_embeddings(f) for f in frames])
        key = "vid:" + hashlib.sha1("".join(self._hash(f) for f in frames).encode()).hexdigest()[:20]
        if self.frame_labels:
            key += ":" + ",".join(map(str, numbers))
            self._frame_layout[key] = (numbers, [len(b) for b in blocks])
            while len(self._frame_layout) > self.cache_size:
                self._frame_layout.popitem(last=False)
        return np.concatenate(blocks, 0), key, len(frames)

    def _video_newlines(self, rows: list[np.ndarray]) -> np.ndarray:
        """Frames' rows joined as :meth:`_video_blocks` packs them."""
        return np.concatenate(self._video_blocks(rows), 0)

    def _video_blocks(self, rows: list[np.ndarray]) -> list[np.ndarray]:
        """Each frame's rows with ``image_newline`` where the bundle's ``video.newline_position`` puts it
        (LLaVA-NeXT: ``no_token`` none, ``one_token`` one after the video (the last frame's), ``frame`` one per
        frame, ``grid`` one per row of each pooled frame); bundles without a newline vector never add one."""
        where = self.bundle.preprocess.get("video", {}).get("newline_position", "no_token")
        if self.newline is None or where == "no_token":
            return list(rows)
        nl = self.newline[None].astype(rows[0].dtype)
        if where == "one_token":
            return [*rows[:-1], np.concatenate([rows[-1], nl], 0)]
        if where == "frame":
            return [np.concatenate([r, nl], 0) for r in rows]
        out = []
        for r in rows:  # grid
            side = int(round(len(r) ** 0.5))
            out.append(np.concatenate([x for i in range(side) for x in (r[i * side:(i + 1) * side], nl)], 0))
        return out

    def media_segments(self, rows: np.ndarray, key: str = "") -> list[Segment]:
        """The rows as llama.cpp segments: one block, or for a labelled video (:meth:`frames_embeddings`) the
        tokens of ``<t>`` before each frame's rows."""
        from ..prompting import frame_label

        if key not in self._frame_layout:
            return [Segment(embd=rows, key=key)]
        numbers, lengths = self._frame_layout[key]
        if sum(lengths) != len(rows):
            raise InstitError(f"video rows {len(rows)} do not match their frames' {sum(lengths)}; embed it again")
        out, at = [], 0
        for n, size in zip(numbers, lengths):
            out.append(Segment(tokens=self.llm.tokenize_parts([(frame_label(n), False)], add_bos=False)))
            out.append(Segment(embd=rows[at:at + size], key=f"{key}#{n}"))
            at += size
        return out

    # ------------------------------------------------------------------ prompt
    def wrap_question(self, question: str, video: bool = False) -> str:
        """The question in the form the model was trained on: bundles whose manifest says
        ``prompt.question_format = "official_oe"`` get plain questions inside the official open-ended prompt
        (an official MC / OE prompt is left as it is)."""
        from .. import prompting as P

        if self.prompt_cfg.get("question_format", "raw") != "official_oe" or _user_part(question) != question:
            return question
        return P.build_oe_prompt(question, split="video" if video else "image")

    def segments(self, question: str, rows: np.ndarray | None, key: str = "") -> list[Segment]:
        from ..prompting import check_text

        p = self.prompt_cfg
        check_text(question)
        parts = build_user_prompt_parts(question, p["template"], "image" if rows is not None else None,
                                        p["image_token"])
        if rows is None:
            return [Segment(tokens=self.llm.tokenize_parts(parts, add_bos=p["add_bos"]))]
        (head, _), *rest = parts  # the image placeholder is in the template's text before the question
        before, after = head.split(p["image_token"], 1)
        return [
            Segment(tokens=self.llm.tokenize_parts([(before, True)], add_bos=p["add_bos"])),
            *self.media_segments(rows, key),
            Segment(tokens=self.llm.tokenize_parts([(after, True), *rest], add_bos=False)),
        ]

    def prepare(self, question: str, image=None, video=None, valid_ids=None) -> tuple[list[Segment], dict]:
        from ..prompting import check_text, validate_references

        check_text(question)
        if not question or not question.strip():
            raise InstitError("the question is empty")
        if image is not None and video is not None:
            raise InstitError("give an image or a video, not both")
        t0 = time.perf_counter()
        n_frames = None
        rows, key = None, ""
        if image is not None:
            rows, key = self.image_embeddings(image)
        elif video is not None:
            rows, key, n_frames = self.video_embeddings(video)
        validate_references(_user_part(question), valid_ids=valid_ids, n_frames=n_frames)
        question = self.wrap_question(question, video=video is not None)
        vision_s = time.perf_counter() - t0
        return self.segments(question, rows, key), {"vision_ms": round(vision_s * 1000, 3),
                                                     "image_rows": 0 if rows is None else len(rows),
                                                     "frames": n_frames}

    # ------------------------------------------------------------------ answer
    def stream(
        self,
        question: str,
        image=None,
        video=None,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        valid_ids=None,
    ) -> Iterator[str]:
        """Yield the answer piece by piece; ``last_stats`` holds timings afterwards."""
        segs, info = self.prepare(question, image, video, valid_ids)
        stats = GenStats(extra={"llm": self.llm_variant, "vision": self.vision_variant, **info})
        self.last_stats = {}
        mnt = max_new_tokens or int(self.prompt_cfg.get("max_new_tokens", 128))
        with self._lock:
            yield from self.llm.generate(segs, mnt, temperature, top_p, top_k, seed, self.prompt_cfg.get("stop", []),
                                         stats)
        self.last_stats = stats.as_dict()

    # ------------------------------------------------------------------ prefetch
    def prefetch(self, image=None, video=None, *, prefix: str | None = None, background: bool = True):
        """Compute the vision rows and the KV of everything before the question (system prompt + image rows)
        now, so a later ``ask`` / ``stream`` about the same media prefills only the question.

        ``prefix``: the start of the question text when it is known before the question (the official
        task pre-prompt, for example); its KV is computed too. Bundles trained on the official open-ended
        prompt (``question_format = "official_oe"``) prefetch that pre-prompt by default. A later question
        that does not start with it simply recomputes from where the texts differ.

        With ``background`` (default) the work runs on a helper thread and a ``Future`` is returned; a newer
        ``prefetch`` supersedes an older one that has not reached the LLM yet (its Future resolves to
        ``{"cancelled": True}``). Answers wait for a prefetch that is already in the LLM (at most the
        image rows' prefill). Returns ``{"cancelled": False, "vision_ms", "rows", "cached_tokens"}``.
        """
        if (image is None) == (video is None):
            raise InstitError("prefetch: give an image or a video")
        self._prefetch_gen += 1
        gen = self._prefetch_gen
        if prefix is None and self.prompt_cfg.get("question_format", "raw") == "official_oe":
            prefix = self.wrap_question("", video=video is not None)  # the official OE pre-prompt
        if not background:
            return self._prefetch(image, video, gen, prefix or "")
        if self._prefetch_pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._prefetch_pool = ThreadPoolExecutor(1, thread_name_prefix="instit-prefetch")
        return self._prefetch_pool.submit(self._prefetch, image, video, gen, prefix or "")

    def _prefetch(self, image, video, gen: int, prefix: str = "") -> dict:
        if gen != self._prefetch_gen:
            return {"cancelled": True}
        t0 = time.perf_counter()
        if image is not None:
            rows, key = self.image_embeddings(image)
        else:
            rows, key, _ = self.video_embeddings(video)
        vision_ms = round((time.perf_counter() - t0) * 1e3, 3)
        with self._lock:
            if gen != self._prefetch_gen:  # a newer frame arrived while the vision ran
                return {"cancelled": True, "vision_ms": vision_ms}
            head = self.segments("?", rows, key)[:-1]  # template text before the image, and the image rows
            if prefix:  # the template's text after the image, then the known start of the question
                p = self.prompt_cfg
                after = build_user_prompt_parts(prefix, p["template"], "image", p["image_token"])[0][0]
                after = after.split(p["image_token"], 1)[1]
                head.append(Segment(tokens=self.llm.tokenize_parts([(after, True), (prefix, False)], add_bos=False)))
            self.llm.prefill(head)
        return {"cancelled": False, "vision_ms": vision_ms, "rows": len(rows),
                "cached_tokens": sum(len(s) for s in head)}

    def cancel_prefetch(self) -> None:
        """Supersede any prefetch that has not reached the LLM yet (e.g. a question arrived)."""
        self._prefetch_gen += 1

    def close_prefetch(self) -> None:
        if self._prefetch_pool is not None:
            self.cancel_prefetch()
            self._prefetch_pool.shutdown(wait=True)
            self._prefetch_pool = None

    def ask(self, question: str, image=None, video=None, **kw) -> Answer:
        text = "".join(self.stream(question, image=image, video=video, **kw))
        return Answer(text.strip(), dict(self.last_stats))

    def logits(self, question: str, image=None, video=None) -> np.ndarray:
        """Logits of every text position of the prompt (image rows excluded), for parity tests."""
        segs, _ = self.prepare(question, image, video)
        with self._lock:
            out, _ = self.llm.prefill(segs, all_logits=True)
        return out

    def generated_ids(self, question: str, image=None, video=None, max_new_tokens: int = 16) -> list[int]:
        """Greedy token ids, ignoring end-of-generation (for parity against the torch reference)."""
        segs, _ = self.prepare(question, image, video)
        logits, _ = self.llm.prefill(segs)
        out = []
        for i in range(max_new_tokens):
            tok = int(np.argmax(logits))
            out.append(tok)
            if i + 1 < max_new_tokens:
                logits = self.llm.step(tok)
        return out
