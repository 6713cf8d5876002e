"""Checkpoints in the ORIGINAL LLaVA-NeXT repo layout -> Hugging Face LLaVA / LLaVA-Next.

Inst-IT's released models (and most LLaVA-NeXT fine-tunes) are saved by the
LLaVA-NeXT training code, not by transformers: ``LlavaLlamaForCausalLM`` /
``LlavaMistralForCausalLM`` / ``LlavaQwenForCausalLM`` with keys
``model.embed_tokens``, ``model.layers.N.*``, ``model.norm``, ``lm_head``,
``model.mm_projector.{0,2}`` (``model.mm_projector`` for ``linear``),
``model.image_newline`` and ``model.vision_tower.vision_tower.vision_model.*``,
and the multimodal settings as ``mm_*`` keys of one flat config.

This module detects that layout (``architectures`` + ``mm_*`` keys, never
``model_type`` alone), resolves the vision tower's configuration without any
download (a local path, the local HF cache, a table of known towers checked
against the weight shapes, or ``--vision-tower DIR``), and writes the
equivalent HF checkpoint. Semantics follow the LLaVA-NeXT source
(``llava/model/llava_arch.py``, ``llava/mm_utils.py``,
``llava/model/multimodal_encoder/*``); the choices HF's classes do not model
(video pooling, newline position, ``anyres_max_N``, ``int()`` unpad rounding)
are kept in the converted config under ``instit_original`` so that later
steps can honour them.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..bundle import POOL_MODES, VIDEO_NEWLINE_POSITIONS
from ..errors import InstitError
from .families import text_family

ORIGINAL_ARCHS = {
    "LlavaLlamaForCausalLM": "llama",
    "LlavaMistralForCausalLM": "mistral",
    "LlavaQwenForCausalLM": "qwen2",
}
PROJECTORS = ("linear", "mlp2x_gelu")
ASPECT_RATIOS = ("pad", "anyres", "anyres_max_N")
NEWLINE_POSITIONS = VIDEO_NEWLINE_POSITIONS
MERGE_TYPES = ("flat", "spatial_unpad")
# Inst-IT's eval (inst-it/inst-it inst-it-bench/inference_video.py) overrides these for video
INSTIT_VIDEO_OVERRIDES = {"mm_spatial_pool_stride": 2, "mm_spatial_pool_mode": "bilinear",
                          "mm_newline_position": "no_token"}
VISION_PREFIX = "model.vision_tower.vision_tower."

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# Towers whose configuration is known offline. SigLIP in this layout: LLaVA-NeXT hard-codes the
# so400m config and image processor (siglip_encoder.py) whatever the name says.
KNOWN_TOWERS = {
    "openai/clip-vit-large-patch14-336": dict(
        kind="clip", hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        image_size=336, patch_size=14, projection_dim=768, layer_norm_eps=1e-5, hidden_act="quick_gelu"),
    "openai/clip-vit-large-patch14": dict(
        kind="clip", hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        image_size=224, patch_size=14, projection_dim=768, layer_norm_eps=1e-5, hidden_act="quick_gelu"),
    "openai/clip-vit-base-patch16": dict(
        kind="clip", hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        image_size=224, patch_size=16, projection_dim=512, layer_norm_eps=1e-5, hidden_act="quick_gelu"),
    "google/siglip-so400m-patch14-384": dict(
        kind="siglip", hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
        image_size=384, patch_size=14, layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh"),
    "google/siglip-base-patch16-224": dict(
        kind="siglip", hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        image_size=224, patch_size=16, layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh"),
}


# --------------------------------------------------------------------------- detection
def is_original_layout(cfg: dict) -> bool:
    """True for a LLaVA-NeXT repo checkpoint config: a ``Llava*ForCausalLM`` architecture and ``mm_*`` keys."""
    if not isinstance(cfg, dict):
        return False
    archs = cfg.get("architectures") or []
    return (isinstance(archs, list) and any(a in ORIGINAL_ARCHS for a in archs)
            and "mm_vision_tower" in cfg and "mm_hidden_size" in cfg)


def read_config(path: str | Path) -> dict | None:
    """The checkpoint's config.json as a dict, or None when it cannot be read (the caller reports)."""
    p = Path(path) / "config.json"
    try:
        cfg = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return cfg if isinstance(cfg, dict) else None


def _one_of(value, allowed, key: str, where) -> str:
    if value not in allowed:
        raise InstitError(f"unsupported {key} {value!r} in {where}; supported: {', '.join(allowed)}")
    return value


# --------------------------------------------------------------------------- pinpoints + packing (LLaVA-NeXT rules)
def parse_pinpoints(value, unit: int, where="config.json") -> list[list[int]]:
    """``image_grid_pinpoints`` as LLaVA-NeXT reads them: ``[[w, h], ...]`` in pixels.

    The string form ``(1x1),...,(6x6)`` spans every grid from the first to the last pair, in units of the
    tile size (``mm_utils.process_anyres_image``); a list (or its string repr) is taken as given.
    """
    if isinstance(value, str) and "x" in value:
        found = re.findall(r"\((\d+)x(\d+)\)", value)
        if not found:
            raise InstitError(f"image_grid_pinpoints {value!r} in {where} is not of the form '(1x1),...,(6x6)'")
        (a0, b0), (a1, b1) = map(int, found[0]), map(int, found[-1])
        return [[i * unit, j * unit] for i in range(a0, a1 + 1) for j in range(b0, b1 + 1)]
    if isinstance(value, str):
        import ast

        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise InstitError(f"image_grid_pinpoints {value!r} in {where} is neither a list nor '(AxB),...'") from None
    ok = isinstance(value, (list, tuple)) and value and all(
        isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(x, int) and x > 0 for x in p) for p in value)
    if not ok:
        raise InstitError(f"image_grid_pinpoints in {where} must be a list of [width, height] pairs, got {value!r}")
    return [list(map(int, p)) for p in value]


def select_best_resolution(size_wh, pinpoints_wh):
    """LLaVA-NeXT ``select_best_resolution``: most effective pixels, then least waste (sizes as (w, h))."""
    w0, h0 = size_wh
    best, best_eff, best_waste = None, 0, float("inf")
    for w, h in pinpoints_wh:
        scale = min(w / w0, h / h0)
        eff = min(int(w0 * scale) * int(h0 * scale), w0 * h0)
        waste = w * h - eff
        if eff > best_eff or (eff == best_eff and waste < best_waste):
            best, best_eff, best_waste = (w, h), eff, waste
    return best


def unpadded_shape(rows: int, cols: int, size_wh, rounding: str = "int") -> tuple[int, int]:
    """Feature-map shape after ``unpad_image``: ``int()`` in LLaVA-NeXT, ``int(round(x, 7))`` in HF."""
    w0, h0 = size_wh
    fix = (lambda x: int(x)) if rounding == "int" else (lambda x: int(round(x, 7)))
    if w0 / h0 > cols / rows:
        new = fix(h0 * (cols / w0))
        pad = (rows - new) // 2
        return rows - 2 * pad, cols
    new = fix(w0 * (rows / h0))
    pad = (cols - new) // 2
    return rows, cols - 2 * pad


def image_rows(info: "OriginalInfo", size_wh, rounding: str = "int", anyres_max: bool = True) -> int:
    """Rows one image of ``size_wh`` gives the LLM (LLaVA-NeXT ``prepare_inputs_labels_for_multimodal``)."""
    n = info.tower.image_size // info.tower.patch_size
    per_tile = n * n + (1 if info.select_feature == "cls_patch" and info.tower.kind == "clip" else 0)
    if info.aspect == "pad":
        return per_tile
    w, h = select_best_resolution(size_wh, info.pinpoints)
    rows, cols = unpadded_shape((h // info.tower.image_size) * n, (w // info.tower.image_size) * n, size_wh, rounding)
    if anyres_max and info.anyres_max:
        times = math.sqrt(rows * cols / (info.anyres_max * n * n))
        if times > 1.1:
            rows, cols = int(rows // times), int(cols // times)
    return per_tile + rows * (cols + 1)


def video_rows(info: "OriginalInfo", frames: int, video: dict | None = None) -> int:
    """Rows ``frames`` video frames give the LLM (``get_2dPool`` stride 2 + the newline position)."""
    v = video or info.video
    n = info.tower.image_size // info.tower.patch_size
    p = math.ceil(n / 2) if v["pool_mode"] == "bilinear" else n // 2
    extra = {"grid": frames * p, "frame": frames, "one_token": 1 if "unpad" in info.merge_type else 0,
             "no_token": 0}[v["newline_position"]]
    return frames * p * p + extra


# --------------------------------------------------------------------------- weights
def weight_files(path: Path) -> list[Path]:
    files = sorted(path.glob("*.safetensors"))
    if not files:
        files = sorted(f for f in path.glob("*.bin") if f.name != "training_args.bin")
    if not files:
        raise InstitError(f"{path} has no weight files (*.safetensors); the checkpoint is incomplete")
    return files


def read_shapes(path: Path) -> dict[str, tuple[list[int], Path]]:
    """Tensor name -> (shape, file), from the safetensors headers only (checked for truncation)."""
    from .safetensors_file import check_safetensors

    out: dict[str, tuple[list[int], Path]] = {}
    for f in weight_files(path):
        if f.suffix == ".safetensors":
            check_safetensors(f)
            with open(f, "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                header = json.loads(fh.read(n).decode("utf-8"))
            for name, t in header.items():
                if name != "__metadata__":
                    out[name] = (list(t["shape"]), f)
        else:
            for name, t in _load_bin(f).items():
                out[name] = (list(t.shape), f)
    return out


def _load_bin(f: Path) -> dict:
    import torch

    try:
        return torch.load(f, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a corrupt file
        raise InstitError(f"{f} is truncated or corrupt ({type(e).__name__}); re-download the checkpoint") from None


def load_tensors(path: Path) -> dict:
    from safetensors import safe_open

    out = {}
    for f in weight_files(path):
        if f.suffix == ".safetensors":
            try:
                with safe_open(str(f), framework="pt") as fh:
                    for k in fh.keys():
                        out[k] = fh.get_tensor(k)
            except Exception as e:  # noqa: BLE001 - SafetensorError and friends
                raise InstitError(f"{f} is truncated or corrupt ({str(e).splitlines()[0]}); re-download it") from None
        else:
            out.update(_load_bin(f))
    return out


# --------------------------------------------------------------------------- vision tower
@dataclass
class TowerSpec:
    kind: str  # clip | siglip
    name: str  # mm_vision_tower as written in the config
    source: str  # where the configuration came from
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int  # as stored in the checkpoint
    num_attention_heads: int
    image_size: int
    patch_size: int
    layer_norm_eps: float
    hidden_act: str
    projection_dim: int = 0
    image_mean: list = field(default_factory=list)
    image_std: list = field(default_factory=list)

    def hf_config(self):
        common = dict(hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
                      num_hidden_layers=self.num_hidden_layers, num_attention_heads=self.num_attention_heads,
                      image_size=self.image_size, patch_size=self.patch_size, layer_norm_eps=self.layer_norm_eps,
                      hidden_act=self.hidden_act)
        if self.kind == "clip":
            from transformers import CLIPVisionConfig

            return CLIPVisionConfig(projection_dim=self.projection_dim or self.hidden_size, **common)
        from transformers import SiglipVisionConfig

        return SiglipVisionConfig(vision_use_head=False, **common)


def _tower_shapes(shapes: dict, where) -> dict:
    """What the weights say about the tower: kind, hidden, patch, image size, intermediate, layer count."""
    pre = VISION_PREFIX + "vision_model."
    pe = shapes.get(pre + "embeddings.patch_embedding.weight")
    pos = shapes.get(pre + "embeddings.position_embedding.weight")
    if pe is None or pos is None:
        raise InstitError(f"{where} has no vision tower weights ({pre}embeddings.*); LLaVA-NeXT checkpoints "
                          f"store the tower (Inst-IT fine-tuned it)")
    kind = "clip" if (pre + "embeddings.class_embedding") in shapes else "siglip"
    hidden, patch = pe[0][0], pe[0][-1]
    n_pos = pos[0][0] - (1 if kind == "clip" else 0)
    side = math.isqrt(n_pos)
    if side * side != n_pos:
        raise InstitError(f"{pre}embeddings.position_embedding.weight has {pos[0][0]} rows: not a square grid")
    layers = {int(m.group(1)) for k in shapes if (m := re.match(re.escape(pre) + r"encoder\.layers\.(\d+)\.", k))}
    fc1 = shapes.get(pre + "encoder.layers.0.mlp.fc1.weight")
    return dict(kind=kind, hidden_size=hidden, patch_size=patch, image_size=side * patch, grid=side,
                num_hidden_layers=len(layers), intermediate_size=fc1[0][0] if fc1 else None)


def _local_tower_dir(name: str) -> Path | None:
    """A local folder for ``name``: a path, or a snapshot in the local HF cache (never a download)."""
    p = Path(os.path.expanduser(name))
    if p.is_dir():
        return p
    if name.count("/") != 1 or name.startswith((".", "/")):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        cache_dir = os.environ.get("HF_HUB_CACHE") or None
        hit = try_to_load_from_cache(name, "config.json", cache_dir=cache_dir)
    except Exception:  # noqa: BLE001 - a broken cache is the same as no cache
        return None
    return Path(hit).parent if isinstance(hit, str) else None


def _tower_from_dir(d: Path) -> tuple[dict, dict]:
    """(vision config dict, preprocessor dict) of a local tower folder."""
    try:
        cfg = json.loads((d / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise InstitError(f"vision tower folder {d} has no readable config.json") from None
    if isinstance(cfg.get("vision_config"), dict):
        cfg = cfg["vision_config"]
    mt = cfg.get("model_type", "")
    kind = "siglip" if "siglip" in mt else "clip" if "clip" in mt else None
    if kind is None:
        raise InstitError(f"vision tower folder {d}: model_type {mt!r} is neither CLIP nor SigLIP")
    cfg = dict(cfg, kind=kind)
    pre = {}
    try:
        pre = json.loads((d / "preprocessor_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    return cfg, pre if isinstance(pre, dict) else {}


def resolve_tower(cfg: dict, shapes: dict, where, vision_tower: str | Path | None = None) -> TowerSpec:
    """The tower's configuration: ``--vision-tower``, a local path / HF cache, or the known-tower table."""
    name = str(cfg.get("mm_vision_tower") or "")
    got = _tower_shapes(shapes, where)
    src_cfg, pre, source = None, {}, None
    if vision_tower is not None:
        d = Path(vision_tower)
        if not d.is_dir():
            raise InstitError(f"--vision-tower {d} is not a folder (give the tower's HF folder with config.json)")
        src_cfg, pre = _tower_from_dir(d)
        source = f"--vision-tower {d}"
    elif (d := _local_tower_dir(name)) is not None:
        src_cfg, pre = _tower_from_dir(d)
        source = f"local {d}"
    elif name in KNOWN_TOWERS:
        src_cfg, source = dict(KNOWN_TOWERS[name]), f"known tower {name}"
    else:
        for known, spec in KNOWN_TOWERS.items():
            if all(spec[k] == got[k] for k in ("kind", "hidden_size", "patch_size", "intermediate_size")) \
                    and spec["image_size"] // spec["patch_size"] == got["grid"]:
                src_cfg, source = dict(spec), f"known tower {known} (matched by weight shapes)"
                break
    if src_cfg is None:
        raise InstitError(
            f"vision tower {name!r} ({where} mm_vision_tower) is not a local folder, not in the local HF cache and "
            f"matches no known tower ({got['kind']}, hidden {got['hidden_size']}, patch {got['patch_size']}, "
            f"image {got['image_size']}); pass --vision-tower DIR (the tower's HF folder with config.json)")
    if src_cfg["kind"] != got["kind"]:
        t = VISION_PREFIX + "vision_model.embeddings.class_embedding"
        raise InstitError(f"weights contradict the vision tower config: {source} is {src_cfg['kind']} but the "
                          f"checkpoint {'has' if got['kind'] == 'clip' else 'lacks'} {t}")
    pe = VISION_PREFIX + "vision_model.embeddings.patch_embedding.weight"
    checks = (("hidden_size", pe), ("patch_size", pe),
              ("image_size", VISION_PREFIX + "vision_model.embeddings.position_embedding.weight"),
              ("intermediate_size", VISION_PREFIX + "vision_model.encoder.layers.0.mlp.fc1.weight"))
    image_size = int(src_cfg.get("image_size", got["image_size"]))  # so400m: 384 px, 27 patches of 14 (378 used)
    if image_size // int(src_cfg.get("patch_size", got["patch_size"])) == got["grid"]:
        got["image_size"] = image_size
    for key, tensor in checks:
        if key in src_cfg and got[key] is not None and int(src_cfg[key]) != int(got[key]):
            raise InstitError(f"weights contradict the vision tower config: {tensor} has shape "
                              f"{shapes[tensor][0]} (-> {key} {got[key]}), {source} says {key} {src_cfg[key]}")
    layers = got["num_hidden_layers"]
    if got["kind"] == "clip" and "num_hidden_layers" in src_cfg and int(src_cfg["num_hidden_layers"]) != layers:
        raise InstitError(f"weights contradict the vision tower config: the checkpoint has {layers} CLIP layers "
                          f"({VISION_PREFIX}vision_model.encoder.layers.N), {source} says "
                          f"{src_cfg['num_hidden_layers']}")
    heads = int(src_cfg.get("num_attention_heads") or 0)
    if heads <= 0 or got["hidden_size"] % heads:
        raise InstitError(f"vision tower config ({source}) has num_attention_heads {heads}, which does not divide "
                          f"hidden size {got['hidden_size']}; pass --vision-tower DIR")
    clip = got["kind"] == "clip"
    if clip:
        mean, std = pre.get("image_mean") or CLIP_MEAN, pre.get("image_std") or CLIP_STD
    else:  # LLaVA-NeXT's SigLipImageProcessor: mean = std = 0.5 whatever the tower folder says
        mean, std = [0.5] * 3, [0.5] * 3
    return TowerSpec(
        kind=got["kind"], name=name, source=source, hidden_size=got["hidden_size"],
        intermediate_size=got["intermediate_size"] or int(src_cfg.get("intermediate_size", 4 * got["hidden_size"])),
        num_hidden_layers=layers, num_attention_heads=heads, image_size=got["image_size"],
        patch_size=got["patch_size"],
        layer_norm_eps=float(src_cfg.get("layer_norm_eps", 1e-5 if clip else 1e-6)),
        hidden_act=str(src_cfg.get("hidden_act", "quick_gelu" if clip else "gelu_pytorch_tanh")),
        projection_dim=int(src_cfg.get("projection_dim", 0) or 0),
        image_mean=[float(x) for x in mean], image_std=[float(x) for x in std])


# --------------------------------------------------------------------------- the whole checkpoint
@dataclass
class OriginalInfo:
    path: Path
    cfg: dict
    arch: str
    llm: str  # llama | mistral | qwen2
    tower: TowerSpec
    projector: str
    aspect: str  # pad | anyres
    anyres_max: int | None
    pinpoints: list  # [[w, h], ...] pixels (LLaVA-NeXT order)
    merge_type: str
    select_layer: int
    select_feature: str
    video: dict  # effective video packing
    video_config: dict  # as written in config.json
    instit: bool
    tokenizer_kind: str
    template: str
    shapes: dict

    @property
    def hf_arch(self) -> str:
        return "llava_next" if self.aspect == "anyres" else "llava"

    def original_record(self) -> dict:
        """What HF's classes do not model, for later steps (stored as ``instit_original`` in config.json)."""
        return {
            "source_arch": self.arch,
            "llm": self.llm,
            "template": self.template,
            "mm_vision_tower": self.tower.name,
            "tower_source": self.tower.source,
            "image_aspect_ratio": self.cfg.get("image_aspect_ratio"),
            "anyres_max": self.anyres_max,
            "unpad_rounding": "int",
            "mm_patch_merge_type": self.merge_type,
            "image_grid_pinpoints_wh": self.pinpoints,
            "image_resize": "squash" if self.tower.kind == "siglip" else "shortest_edge_center_crop",
            "video": self.video,
            "video_config": self.video_config,
            "inst_it_eval_overrides": self.instit,
            "projector": self.projector,
        }


def _tokenizer_kind(path: Path) -> str:
    tj = path / "tokenizer.json"
    if tj.is_file():
        try:
            model = json.loads(tj.read_text(encoding="utf-8")).get("model", {})
        except (OSError, ValueError):
            return "unreadable tokenizer.json"
        if model.get("type") == "BPE" and model.get("byte_fallback"):
            return "SentencePiece-style BPE (tokenizer.json, byte fallback)"
        return f"{model.get('type', '?')} (tokenizer.json, byte-level)" if model.get("type") == "BPE" \
            else f"{model.get('type', '?')} (tokenizer.json)"
    if (path / "tokenizer.model").is_file():
        return "SentencePiece (tokenizer.model, slow)"
    return "none"


def inspect_original(path: str | Path, cfg: dict | None = None, vision_tower=None) -> OriginalInfo:
    """Validate an original-layout checkpoint (config keys, weight shapes, tower) and describe it."""
    p = Path(path)
    where = p / "config.json"
    cfg = cfg if cfg is not None else read_config(p)
    if not is_original_layout(cfg):
        raise InstitError(f"{p} is not a LLaVA-NeXT repo checkpoint (no Llava*ForCausalLM with mm_* keys)")
    arch = next(a for a in cfg["architectures"] if a in ORIGINAL_ARCHS)
    llm = ORIGINAL_ARCHS[arch]
    projector = _one_of(cfg.get("mm_projector_type", "linear"), PROJECTORS, "mm_projector_type", where)
    ar = cfg.get("image_aspect_ratio", "pad")
    m = re.fullmatch(r"anyres_max_(\d+)", str(ar))
    if m:
        anyres_max, aspect = int(m.group(1)), "anyres"
    elif ar in ("pad", "anyres"):
        anyres_max, aspect = None, ar
    else:
        raise InstitError(f"unsupported image_aspect_ratio {ar!r} in {where}; supported: {', '.join(ASPECT_RATIOS)}")
    merge = cfg.get("mm_patch_merge_type", "flat")
    merge = _one_of(merge, MERGE_TYPES, "mm_patch_merge_type", where)
    if aspect == "anyres" and merge != "spatial_unpad":
        raise InstitError(f"image_aspect_ratio {ar!r} needs mm_patch_merge_type 'spatial_unpad' in {where} "
                          f"(got {merge!r}); supported: spatial_unpad with anyres, flat with pad")
    if aspect == "pad" and merge != "flat":
        raise InstitError(f"image_aspect_ratio 'pad' with mm_patch_merge_type {merge!r} (a newline after the image) "
                          f"is not supported in {where}; supported: flat with pad, spatial_unpad with anyres")
    feature = cfg.get("mm_vision_select_feature", "patch")
    _one_of(feature, ("patch", "cls_patch"), "mm_vision_select_feature", where)
    sel = cfg.get("mm_vision_select_layer", -2)
    if not isinstance(sel, int):
        raise InstitError(f"mm_vision_select_layer in {where} must be an integer, got {sel!r}")
    video_config = {k: cfg[k] for k in ("mm_spatial_pool_stride", "mm_spatial_pool_mode", "mm_newline_position",
                                         "mm_pooling_position") if k in cfg}
    if "mm_spatial_pool_mode" in cfg:
        _one_of(cfg["mm_spatial_pool_mode"], POOL_MODES, "mm_spatial_pool_mode", where)
    if "mm_newline_position" in cfg:
        _one_of(cfg["mm_newline_position"], NEWLINE_POSITIONS, "mm_newline_position", where)
    name_hint = f"{p.name} {cfg.get('_name_or_path', '')}".lower().replace("_", "-")
    instit = "inst-it" in name_hint
    if instit:
        video = {"pool_mode": "bilinear", "pool_stride": 2, "newline_position": "no_token"}
    else:  # llava_arch.py calls get_2dPool(feature) with its default stride 2, whatever mm_spatial_pool_stride says
        video = {"pool_mode": cfg.get("mm_spatial_pool_mode", "average"), "pool_stride": 2,
                 "newline_position": cfg.get("mm_newline_position", "one_token")}
    video["max_frames"] = 32
    shapes = read_shapes(p)
    tower = resolve_tower(cfg, shapes, where, vision_tower)
    if aspect == "anyres":
        pin = cfg.get("image_grid_pinpoints")
        if pin is None:
            raise InstitError(f"image_aspect_ratio {ar!r} needs image_grid_pinpoints in {where}")
        pinpoints = parse_pinpoints(pin, tower.image_size, where)
        bad = [q for q in pinpoints if q[0] % tower.image_size or q[1] % tower.image_size]
        if bad:
            raise InstitError(f"image_grid_pinpoints {bad[0]} in {where} are not multiples of the tile size "
                              f"{tower.image_size}")
    else:
        pinpoints = []
    if int(cfg["mm_hidden_size"]) != tower.hidden_size:
        raise InstitError(f"weights contradict config: {VISION_PREFIX}vision_model.embeddings.patch_embedding.weight "
                          f"gives vision hidden size {tower.hidden_size}, {where} says mm_hidden_size "
                          f"{cfg['mm_hidden_size']}")
    return OriginalInfo(
        path=p, cfg=cfg, arch=arch, llm=llm, tower=tower, projector=projector, aspect=aspect,
        anyres_max=anyres_max, pinpoints=pinpoints, merge_type=merge,
        select_layer=-1 if tower.kind == "siglip" else sel, select_feature=feature, video=video,
        video_config=video_config, instit=instit, tokenizer_kind=_tokenizer_kind(p), template=text_family(llm).repo_template,
        shapes=shapes)


# --------------------------------------------------------------------------- conversion
_TEXT_DROP = ("architectures", "model_type", "transformers_version", "_name_or_path", "auto_map", "torch_dtype",
              "dtype", "use_cache", "tokenizer_model_max_length", "tokenizer_padding_side")


def _text_config(info: OriginalInfo, vocab: int):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    cfg = info.cfg
    llm = info.llm
    if llm == "mistral" and (cfg.get("sliding_window") in (None, 0)
                             or cfg.get("sliding_window", 0) >= cfg.get("max_position_embeddings", 0)):
        llm = "llama"  # Mistral without an effective sliding window is exactly Llama
    cls = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}[llm]
    known = set(cls().to_dict()) | {"rope_theta", "rope_scaling", "sliding_window", "use_sliding_window",
                                    "max_window_layers"}
    kw = {k: v for k, v in cfg.items()
          if k in known and k not in _TEXT_DROP and not k.startswith("mm_") and v is not None}
    kw["vocab_size"] = vocab
    if llm == "qwen2":
        kw.setdefault("use_sliding_window", False)
    return cls(**kw)


def _hf_key(orig: str, info: OriginalInfo, hf_keys: set) -> list[str]:
    """The HF name(s) of an original tensor ([] for tensors with no HF counterpart)."""
    if orig.endswith(".rotary_emb.inv_freq"):
        return []
    if orig.startswith(VISION_PREFIX):
        rest = orig[len(VISION_PREFIX):]
        for cand in ("model.vision_tower." + rest, "model.vision_tower." + rest.removeprefix("vision_model.")):
            if cand in hf_keys:
                return [cand]
        return ["?" + orig]
    if orig.startswith("model.mm_projector."):
        rest = orig[len("model.mm_projector."):]
        if info.projector == "linear":
            return ["model.multi_modal_projector.linear_1." + rest]
        m = re.fullmatch(r"(\d+)\.(weight|bias)", rest)
        idx = {"0": "linear_1", "2": "linear_2"}.get(m.group(1)) if m else None
        return [f"model.multi_modal_projector.{idx}.{m.group(2)}"] if idx else ["?" + orig]
    if orig == "model.image_newline":
        return ["model.image_newline"]
    if orig.startswith("lm_head."):
        return [orig]
    if orig.startswith("model."):
        return ["model.language_model." + orig[len("model."):]]
    return ["?" + orig]


def build_hf(info: OriginalInfo, progress=None):
    """Return ``(config, state_dict, tokenizer, processor)`` of the equivalent HF checkpoint."""
    import warnings

    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # 'model of type llava_llama ...': expected here, noise for the user
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _build_hf(info, progress)
    finally:
        hf_logging.set_verbosity(level)


def _build_hf(info: OriginalInfo, progress=None):
    import torch
    from tokenizers import AddedToken
    from transformers import (
        AutoTokenizer,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
    )

    step = progress or (lambda name: None)
    p = info.path
    step("tokenizer")
    try:
        tok = AutoTokenizer.from_pretrained(str(p))
    except Exception as e:  # noqa: BLE001 - report, one line
        raise InstitError(f"cannot load the tokenizer of {p}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if "<image>" not in tok.get_vocab():
        tok.add_tokens(AddedToken("<image>", special=True, normalized=False), special_tokens=True)
    if tok.pad_token is None:
        tok.add_special_tokens({"pad_token": "<pad>"})
    image_token_id = tok.convert_tokens_to_ids("<image>")

    emb_name = "model.embed_tokens.weight"
    if emb_name not in info.shapes:
        raise InstitError(f"{p} has no {emb_name}; not a complete LLaVA-NeXT checkpoint")
    rows, hidden = info.shapes[emb_name][0]
    if int(info.cfg.get("hidden_size", hidden)) != hidden or int(info.cfg.get("vocab_size", rows)) != rows:
        raise InstitError(f"weights contradict config: {emb_name} has shape {[rows, hidden]}, config.json says "
                          f"vocab_size {info.cfg.get('vocab_size')} x hidden_size {info.cfg.get('hidden_size')}")
    vocab = max(rows, len(tok))
    text = _text_config(info, vocab)
    vision = info.tower.hf_config()
    common = dict(
        text_config=text, vision_config=vision, image_token_id=image_token_id,
        vision_feature_layer=info.select_layer,
        vision_feature_select_strategy="default" if info.tower.kind == "clip" and info.select_feature == "patch"
        else "full",
        projector_hidden_act="gelu" if info.projector == "mlp2x_gelu" else "linear",
        tie_word_embeddings=bool(info.cfg.get("tie_word_embeddings", False)),
    )
    if info.aspect == "anyres":
        config = LlavaNextConfig(image_grid_pinpoints=[[h, w] for w, h in info.pinpoints], **common)
        cls = LlavaNextForConditionalGeneration
    else:
        config = LlavaConfig(**common)
        cls = LlavaForConditionalGeneration
    config.instit_original = info.original_record()
    config.pad_token_id = tok.pad_token_id
    with torch.device("meta"):
        meta = cls(config)
    expected = {k: tuple(v.shape) for k, v in meta.state_dict().items()}
    if common["tie_word_embeddings"]:
        expected.pop("lm_head.weight", None)

    step("weights")
    src = load_tensors(p)
    sd = {}
    for name, t in src.items():
        for k in _hf_key(name, info, set(expected)):
            if k.startswith("?"):
                raise InstitError(f"unexpected tensor {name} in {p}: not part of a {info.arch} checkpoint")
            sd[k] = t
    grow = vocab - rows
    for k in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        if grow > 0 and k in sd:  # new rows (<image>, <pad>): the mean row, as a neutral start (never read for <image>)
            sd[k] = torch.cat([sd[k], sd[k].float().mean(0, keepdim=True).to(sd[k].dtype).expand(grow, -1)])
    if info.projector == "linear":
        w = sd.get("model.multi_modal_projector.linear_1.weight")
        if w is not None:  # HF always has two linears: the second is the identity (act 'linear'), exact
            sd["model.multi_modal_projector.linear_2.weight"] = torch.eye(w.shape[0], dtype=w.dtype)
            sd["model.multi_modal_projector.linear_2.bias"] = torch.zeros(w.shape[0], dtype=w.dtype)
    inverse = {}
    for name in src:
        for k in _hf_key(name, info, set(expected)):
            inverse[k] = name
    for k, shape in expected.items():
        if k not in sd:
            orig = _original_name(k)
            raise InstitError(f"{p} is missing tensor {orig} (config.json implies it: check num_hidden_layers / "
                              f"mm_* keys)")
        if tuple(sd[k].shape) != shape:
            orig = inverse.get(k, k)
            raise InstitError(f"weights contradict config: {orig} has shape {list(src[orig].shape)}, config.json "
                              f"implies {list(shape)}")
    extra = sorted(set(sd) - set(expected))
    if extra:
        raise InstitError(f"weights contradict config: {inverse.get(extra[0], extra[0])} is not expected by "
                          f"config.json (check num_hidden_layers and the vision tower)")
    dtype = next(iter(sd.values())).dtype
    config.dtype = str(dtype).removeprefix("torch.")
    step("processor")
    processor = _processor(info, tok, config)
    return config, sd, tok, processor


def _original_name(hf_key: str) -> str:
    if hf_key.startswith("model.language_model."):
        return "model." + hf_key[len("model.language_model."):]
    if hf_key.startswith("model.vision_tower."):
        rest = hf_key[len("model.vision_tower."):]
        return VISION_PREFIX + ("" if rest.startswith("vision_model.") else "vision_model.") + rest
    if hf_key.startswith("model.multi_modal_projector."):
        return "model.mm_projector." + hf_key.split(".")[-2].replace("linear_1", "0").replace("linear_2", "2") + \
            "." + hf_key.split(".")[-1]
    return hf_key


def _chat_template(info: OriginalInfo, tok) -> str:
    from .tiny import CHATML_TEMPLATE, VICUNA_TEMPLATE

    if getattr(tok, "chat_template", None):
        return tok.chat_template  # the checkpoint's own template wins
    if info.llm == "qwen2":
        return CHATML_TEMPLATE  # LLaVA-NeXT qwen_1_5: ChatML with "You are a helpful assistant."
    if info.llm == "mistral":
        return ("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
                "[INST] {{ message['content'] }} [/INST]{% else %}{{ message['content'] }}</s>{% endif %}"
                "{% endfor %}")
    return VICUNA_TEMPLATE


def _processor(info: OriginalInfo, tok, config):
    s = info.tower.image_size
    kw = dict(size={"shortest_edge": s}, crop_size={"height": s, "width": s}, do_center_crop=True,
              image_mean=info.tower.image_mean, image_std=info.tower.image_std, resample=3)
    common = dict(tokenizer=tok, patch_size=info.tower.patch_size,
                  vision_feature_select_strategy=config.vision_feature_select_strategy,
                  num_additional_image_tokens=1 if info.tower.kind == "clip" else 0, image_token="<image>",
                  chat_template=_chat_template(info, tok))
    if info.aspect == "anyres":
        from transformers import LlavaNextProcessor
        from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

        ip = LlavaNextImageProcessorPil(image_grid_pinpoints=config.image_grid_pinpoints, **kw)
        return LlavaNextProcessor(image_processor=ip, **common)
    from transformers import LlavaProcessor
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    # LLaVA-NeXT 'pad': expand to a square with the mean colour, then the tower's processor
    return LlavaProcessor(image_processor=LlavaImageProcessorPil(do_pad=True, **kw), **common)


def _save_weights(sd: dict, out: Path, shard_bytes: int = 4 << 30) -> None:
    from safetensors.torch import save_file

    shards, cur, size = [], {}, 0
    for k in sorted(sd):
        t = sd[k].contiguous()
        n = t.numel() * t.element_size()
        if cur and size + n > shard_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[k] = t
        size += n
    shards.append(cur)
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map, total = {}, 0
    for i, sh in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(sh, str(out / fname), metadata={"format": "pt"})
        for k, t in sh.items():
            weight_map[k] = fname
            total += t.numel() * t.element_size()
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")


def convert_original(src: str | Path, out: str | Path, vision_tower=None, force: bool = False,
                     progress=None, guard: bool = True) -> Path:
    """Write the HF-format equivalent of an original-layout checkpoint to ``out`` (atomically); return ``out``."""
    import shutil

    from ..atomic import atomic_dir, guard_output

    src = Path(src)
    info = inspect_original(src, vision_tower=vision_tower)
    out = guard_output(out, force=force, marker="config.json", what="checkpoint", inputs=[src]) if guard else Path(out)
    config, sd, tok, processor = build_hf(info, progress)
    step = progress or (lambda name: None)
    with atomic_dir(out, force=force) as tmp:
        step("write")
        _save_weights(sd, tmp)
        config.architectures = ["LlavaNextForConditionalGeneration" if info.aspect == "anyres"
                                else "LlavaForConditionalGeneration"]
        config.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        gen = src / "generation_config.json"
        if gen.is_file():
            shutil.copy2(gen, tmp / gen.name)
        if (src / "tokenizer.model").is_file() and not (tmp / "tokenizer.model").is_file():
            shutil.copy2(src / "tokenizer.model", tmp / "tokenizer.model")  # SentencePiece: keep the real model
    return out


# --------------------------------------------------------------------------- loading hook
_CONVERTED: dict = {}


def converted_for_loading(path: str | Path) -> str | Path:
    """``path`` itself, or (for an original-layout checkpoint) a converted HF copy in a temporary folder."""
    import atexit
    import shutil
    import tempfile

    p = Path(path)
    cfg = read_config(p) if p.is_dir() else None
    if not is_original_layout(cfg):
        return path
    key = (os.path.realpath(p), (p / "config.json").stat().st_mtime_ns)
    if key not in _CONVERTED:
        tmp = Path(tempfile.mkdtemp(prefix="instit-original-"))
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)
        try:
            _CONVERTED[key] = str(convert_original(p, tmp / "hf", guard=False))
        except InstitError as e:
            if "--vision-tower" in e.message:
                raise InstitError(e.message + "; then run `instit-edge convert CKPT --out DIR --vision-tower DIR` "
                                              "and use DIR") from None
            raise
    return _CONVERTED[key]
