"""The checkpoint families export and the runtime understand, one entry each.

A family says how it is detected (the HF ``architectures`` entry, checked
against ``model_type``), whether images are packed with AnyRes, how the tiles
are unpadded (``round7`` = HF's ``round(x, 7)``, ``int`` = LLaVA-NeXT's
``int()``), whether large grids are shrunk (``anyres_max_N``), how video
frames are pooled and where the newline row goes, and whether the torch
reference can run the family's own video path (``model.get_video_features``)
or follows the Inst-IT video convention. The bundle's ``preprocess`` block is
built from it (:func:`preprocess_for`), so the runtime never guesses.

Original-layout checkpoints (``LlavaLlamaForCausalLM`` and friends,
:mod:`instit_edge.models.original_layout`) are converted to one of these
families first; their own packing settings travel in ``config.instit_original``
and override the family's defaults.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import InstitError


@dataclass(frozen=True)
class Family:
    name: str  # the HF model_type, and the bundle's architecture.arch
    architecture: str  # the HF ``architectures[0]`` class
    title: str
    anyres: bool  # AnyRes tiles + unpad + newline per row
    unpad_rounding: str = "round7"
    # where the anyres_max_N limit is read from (a config key holding "anyres_max_N"), None = never shrinks
    anyres_max_key: str | None = None
    # video packing the family's own code applies (pool_mode, pool_stride, pool_ceil, newline_position)
    video: dict = field(default_factory=lambda: {"pool_mode": "average", "pool_stride": 2, "pool_ceil": True,
                                                 "newline_position": "no_token"})
    hf_video: bool = False  # the torch model has get_video_features with these semantics

    def anyres_max(self, cfg) -> int | None:
        if not self.anyres_max_key:
            return None
        value = cfg.get(self.anyres_max_key) if isinstance(cfg, dict) else getattr(cfg, self.anyres_max_key, None)
        return parse_anyres_max(value)


def parse_anyres_max(value) -> int | None:
    """``"anyres_max_9"`` -> 9; ``None`` / ``"anyres"`` -> None; anything else is refused in one line."""
    if value in (None, "", "anyres", "pad", "square"):
        return None
    m = re.fullmatch(r"anyres_max_(\d+)", str(value))
    if not m or int(m.group(1)) < 1:
        raise InstitError(f"unsupported vision_aspect_ratio {value!r}; expected anyres_max_N (N >= 1) or anyres")
    return int(m.group(1))


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("llava", "LlavaForConditionalGeneration", "LLaVA-1.5 (HF)", anyres=False),
    Family("llava_next", "LlavaNextForConditionalGeneration", "LLaVA-1.6 / LLaVA-NeXT (HF)", anyres=True),
    # HF modeling_llava_onevision: base tile first, tiles unpadded with round(x, 7), newline per row, grids
    # larger than N tiles shrunk bilinearly (vision_aspect_ratio "anyres_max_9"); video frames resized
    # bilinearly to ceil(side / 2) (apply_pooling) and one newline row after the whole video
    Family("llava_onevision", "LlavaOnevisionForConditionalGeneration", "LLaVA-OneVision (HF)", anyres=True,
           anyres_max_key="vision_aspect_ratio",
           video={"pool_mode": "bilinear", "pool_stride": 2, "pool_ceil": True, "newline_position": "one_token"},
           hf_video=True),
)}
SUPPORTED_ARCHS = tuple(FAMILIES)


@dataclass(frozen=True)
class TextFamily:
    """The LLM inside a LLaVA checkpoint, by its ``text_config.model_type``: the llama.cpp architecture it is
    written as, whether q / k rows are permuted from HF's rotate-half layout to llama.cpp's interleaved pairs
    (what llama.cpp's own converter does for ``llama``; ``qwen2`` uses NEOX rotary, no permutation), the chat
    template when the checkpoint has none of its own (``template``: HF checkpoints; ``repo_template``: the
    LLaVA-NeXT ``conv_templates`` name its original-layout checkpoints are evaluated with), and where the
    family's attention window is configured (``gguf_arch`` has none: the GGUF's context is capped to it).
    Tensor names come from gguf-py's ``TensorNameMap`` for ``gguf_arch``."""

    model_type: str
    gguf_arch: str
    rotary_permute: bool
    template: str
    repo_template: str
    sliding_window_key: str | None = None  # the config key of an attention window (caps the GGUF context)

    def context_length(self, cfg) -> int:
        """The context the GGUF may claim: ``max_position_embeddings``, or the attention window when one applies
        and is shorter (within its window, windowed attention is full attention; llama.cpp's ``gguf_arch`` has
        no window, so the context is capped there instead)."""
        get = cfg.get if isinstance(cfg, dict) else (lambda k, d=None: getattr(cfg, k, d))
        n = int(get("max_position_embeddings") or 0)
        if self.sliding_window_key is None or (self.model_type == "qwen2" and not get("use_sliding_window", False)):
            return n
        window = get(self.sliding_window_key)
        return min(n, int(window)) if window else n


TEXT_FAMILIES: dict[str, TextFamily] = {f.model_type: f for f in (
    TextFamily("llama", "llama", rotary_permute=True, template="vicuna_v1", repo_template="vicuna_v1"),
    # Mistral is Llama with an optional attention window; llama.cpp's converter writes it as llama
    TextFamily("mistral", "llama", rotary_permute=True, template="mistral_instruct",
               repo_template="mistral_instruct", sliding_window_key="sliding_window"),
    # LLaVA-NeXT's qwen_1_5 is ChatML with the default system prompt: it renders exactly like chatml
    TextFamily("qwen2", "qwen2", rotary_permute=False, template="chatml", repo_template="qwen_1_5",
               sliding_window_key="sliding_window"),
)}
SUPPORTED_LLMS = tuple(TEXT_FAMILIES)


def text_family(model_type: str) -> TextFamily:
    if model_type not in TEXT_FAMILIES:
        raise InstitError(f"text model type {model_type!r} is not supported (supported: {', '.join(SUPPORTED_LLMS)})")
    return TEXT_FAMILIES[model_type]


def detect(cfg: dict, where: str = "config.json") -> Family:
    """The family of a HF config dict: by ``architectures`` (the class transformers would build), which must
    agree with ``model_type``; a config without ``architectures`` falls back to ``model_type``."""
    archs = cfg.get("architectures") or []
    by_class = {f.architecture: f for f in FAMILIES.values()}
    mt = cfg.get("model_type")
    if archs:
        fam = by_class.get(archs[0])
        if fam is None:
            raise InstitError(f"unsupported architecture {archs[0]!r} in {where}; supported: "
                              f"{', '.join(by_class)} (and the LLaVA-NeXT repo layout: LlavaLlamaForCausalLM, "
                              "LlavaMistralForCausalLM, LlavaQwenForCausalLM)")
        if mt is not None and mt != fam.name:
            raise InstitError(f"{where} says architectures {archs[0]} but model_type {mt!r}; fix one of them "
                              f"(expected model_type {fam.name!r})")
        return fam
    if mt in FAMILIES:
        return FAMILIES[mt]
    raise InstitError(f"unsupported architecture {mt!r} in {where}; supported: {', '.join(SUPPORTED_ARCHS)}")


def chat_template_for(model, processor, override: str | None = None) -> str:
    """The chat template a loaded model is prompted with (and its bundle records): ``override``, else the
    checkpoint's own ``chat_template``, else its LLM family's default."""
    from ..prompting import pick_template

    return pick_template(processor, text_family(model.config.text_config.model_type).template, override)


def family_of(config) -> Family:
    """The family of a loaded transformers config (already validated by :func:`detect` at load)."""
    return FAMILIES[config.model_type]


def processor_tile_size(image_processor) -> int:
    """The square tile the vision tower sees: ``crop_size`` (CLIP-style processors), else ``size`` given as
    height x width (OneVision, SigLIP) or as a shortest edge."""
    crop = getattr(image_processor, "crop_size", None) or {}
    size = getattr(image_processor, "size", None) or {}
    if crop.get("height"):
        if size.get("shortest_edge") not in (None, crop["height"]):
            raise InstitError(f"image processor resizes to {dict(size)} but crops to {crop['height']}; only equal "
                              "sizes are supported")
        return int(crop["height"])
    if size.get("height"):
        if size.get("width") not in (None, size["height"]):
            raise InstitError(f"image processor size {dict(size)} is not square; only square tiles are supported")
        return int(size["height"])
    if size.get("shortest_edge"):
        return int(size["shortest_edge"])
    raise InstitError("the image processor states no tile size (crop_size / size); re-save the checkpoint's "
                      "preprocessor_config.json")


def preprocess_for(model, processor) -> dict:
    """The bundle's ``preprocess`` block for a loaded model: the family's packing, overridden by the settings an
    original-layout checkpoint recorded in ``config.instit_original``."""
    ip = processor.image_processor
    cfg = model.config
    fam = family_of(cfg)
    orig = getattr(cfg, "instit_original", None) or {}
    vid = {**fam.video, **(orig.get("video") or {})}
    if orig and "pool_ceil" not in (orig.get("video") or {}):
        # get_2dPool's avg / max pooling drops an odd side's remainder; bilinear rounds up
        vid["pool_ceil"] = vid["pool_mode"] == "bilinear"
    anyres_max = orig.get("anyres_max") if orig else fam.anyres_max(cfg)
    return {
        "image_size": processor_tile_size(ip),
        "image_mean": [float(x) for x in ip.image_mean],
        "image_std": [float(x) for x in ip.image_std],
        "resample": int(getattr(ip, "resample", 3)),
        "pinpoints": [list(map(int, p)) for p in cfg.image_grid_pinpoints] if fam.anyres else None,
        "patch_size": int(cfg.vision_config.patch_size),
        "feature_layer": int(cfg.vision_feature_layer),
        "select_strategy": cfg.vision_feature_select_strategy,
        "unpad_rounding": str(orig.get("unpad_rounding", fam.unpad_rounding)),
        "anyres_max": int(anyres_max) if anyres_max else None,
        # frames without AnyRes, pooled and joined as the family (or the original checkpoint) does
        "video": {"anyres": False, "pool_stride": int(vid["pool_stride"]), "pool_mode": str(vid["pool_mode"]),
                  "max_frames": int(vid.get("max_frames", 32)), "newline": False,
                  "newline_position": str(vid["newline_position"]), "pool_ceil": bool(vid["pool_ceil"]),
                  # the text "<t>" before each frame's rows (a model trained so: train/video_heads.py)
                  "frame_labels": bool(getattr(cfg, "video_frame_labels", False))},
    }
