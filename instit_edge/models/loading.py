"""Load LLaVA / LLaVA-Next / LLaVA-OneVision checkpoints with their processors (local path or hub name)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import InstitError
from .families import SUPPORTED_LLMS, detect
from .parts_processor import PartsProcessor
from .safetensors_file import check_safetensors

SUPPORTED_VISION = ("clip_vision_model", "siglip_vision_model")


def check_checkpoint(path: str | Path) -> dict:
    """Validate a local checkpoint directory and return its config dict (one-line errors)."""
    p = Path(path)
    if not p.exists():
        if "/" in str(path) and not str(path).startswith((".", "/")) and len(p.parts) == 2:
            return {}  # looks like a hub name: transformers will resolve it (needs internet)
        raise InstitError(f"checkpoint not found: {p} (give a local HF checkpoint directory or a hub name)")
    if not p.is_dir():
        raise InstitError(f"checkpoint must be a directory, got a file: {p}")
    cfg_path = p / "config.json"
    if not cfg_path.is_file():
        raise InstitError(f"{p} has no config.json: not a Hugging Face checkpoint")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InstitError(f"{cfg_path} is not valid JSON ({e.msg}, line {e.lineno})") from None
    except UnicodeDecodeError:
        raise InstitError(f"{cfg_path} is not UTF-8 text; restore the checkpoint's config.json") from None
    except OSError as e:
        raise InstitError(f"cannot read {cfg_path}: {e.strerror or type(e).__name__}") from None
    from .original_layout import inspect_original, is_original_layout

    if is_original_layout(cfg):  # LLaVA-NeXT repo layout: validated here, converted by load_model
        inspect_original(p, cfg)
        return cfg
    if not isinstance(cfg, dict) or not all(isinstance(cfg.get(k, {}), dict) for k in ("text_config", "vision_config")):
        raise InstitError(f"{cfg_path} is not a model config (expected an object with text_config / vision_config)")
    detect(cfg, str(cfg_path))
    text_mt = cfg.get("text_config", {}).get("model_type", "llama")
    if text_mt not in SUPPORTED_LLMS:
        raise InstitError(f"unsupported text model {text_mt!r} in {cfg_path}; supported: {', '.join(SUPPORTED_LLMS)}")
    vis_mt = cfg.get("vision_config", {}).get("model_type", "clip_vision_model")
    if vis_mt not in SUPPORTED_VISION:
        raise InstitError(f"unsupported vision tower {vis_mt!r} in {cfg_path}; supported: CLIP, SigLIP")
    weights = list(p.glob("*.safetensors")) + list(p.glob("*.bin"))
    if not weights:
        raise InstitError(f"{p} has no weight files (*.safetensors); the checkpoint is incomplete")
    if not (p / "tokenizer.json").is_file() and not (p / "tokenizer.model").is_file():
        raise InstitError(f"{p} has no tokenizer (tokenizer.json); the checkpoint is incomplete")
    for w in weights:
        if w.suffix == ".safetensors":
            check_safetensors(w)
    return cfg


def _processor(path: Path):
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(str(path))
    except (AttributeError, ImportError, ValueError, TypeError) as e:
        cfg = json.loads((Path(path) / "config.json").read_text(encoding="utf-8")) if Path(path).is_dir() else {}
        if cfg.get("model_type") != "llava_onevision":
            raise
        if not (Path(path) / "preprocessor_config.json").is_file():
            raise InstitError(f"cannot load the processor of {path} ({type(e).__name__}); it has no "
                              "preprocessor_config.json to fall back to") from None
        return PartsProcessor(path)


def load_model(path: str | Path, dtype: str = "float32", device: str = "cpu"):
    """Return ``(model, processor)`` in eval mode."""
    import torch
    from transformers import AutoModelForImageTextToText

    from .original_layout import converted_for_loading

    check_checkpoint(path)
    path = converted_for_loading(path)  # an original-layout checkpoint: its HF copy (temporary folder)
    try:
        processor = _processor(path)
        model = AutoModelForImageTextToText.from_pretrained(str(path), dtype=getattr(torch, dtype))
    except OSError as e:
        raise InstitError(f"cannot load checkpoint {path}: {str(e).splitlines()[0]}") from None
    except Exception as e:
        if type(e).__module__.startswith("safetensors"):  # SafetensorError: a corrupt weight file
            raise InstitError(f"cannot load checkpoint {path}: corrupt weights ({str(e).splitlines()[0]})") from None
        raise
    return model.to(device).eval(), processor
