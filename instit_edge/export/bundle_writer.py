"""``instit-edge export``: a HF LLaVA / LLaVA-Next / LLaVA-OneVision checkpoint -> an edge bundle directory.

Everything is written into a temporary directory beside the output and
renamed into place at the end, so a failed export leaves nothing half-written
(and, with ``--force``, the previous bundle survives until the new one is whole).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..bundle import FORMAT_VERSION, MANIFEST, Bundle
from ..errors import InstitError
from ..models.families import SUPPORTED_ARCHS, chat_template_for, preprocess_for, text_family
from ..models.loading import load_model


def export_bundle(
    model_path: str,
    out: str | Path,
    force: bool = False,
    llm_types: tuple[str, ...] = ("f16",),
    vision_types: tuple[str, ...] = ("fp32", "fp16"),
    mmproj: bool = True,
    progress=None,
    template: str | None = None,
    pre_tokenizer: str | None = None,
) -> Bundle:
    """Export ``model_path`` to a bundle at ``out``. ``progress(step_name)`` is called per step.

    ``template``: the chat template name (default: the checkpoint's own ``chat_template``, else the LLM
    family's); ``pre_tokenizer``: the llama.cpp BPE pre-tokenizer name (default: detected).
    """
    from ..atomic import atomic_dir, guard_output
    from .gguf_llm import write_llm_gguf
    from .gguf_mmproj import write_mmproj_gguf
    from .gguf_vocab import add_flags
    from .onnx_vision import convert_fp16, export_vision_onnx

    local_src = [model_path] if Path(model_path).exists() else []
    out = guard_output(out, force=force, marker=MANIFEST, what="bundle", inputs=local_src)
    bad = [t for t in llm_types if t not in ("f16", "f32")]
    if bad:
        raise InstitError(f"export writes llm types f16 / f32 only, got {bad}; use `instit-edge quantize` for the rest")
    bad = [t for t in vision_types if t not in ("fp32", "fp16")]
    if bad or "fp32" not in vision_types:
        raise InstitError(f"export writes vision types fp32 (required) and fp16, got {list(vision_types)}")

    step = progress or (lambda name: None)
    step("load checkpoint")
    model, processor = load_model(model_path)
    cfg = model.config
    arch = cfg.model_type
    llm_arch = cfg.text_config.model_type
    pre = preprocess_for(model, processor)
    tok = processor.tokenizer
    image_token = getattr(processor, "image_token", "<image>")
    image_token_id = int(cfg.image_token_id)
    template = chat_template_for(model, processor, template)
    tok_dir = Path(model_path) if Path(model_path).is_dir() else None

    with atomic_dir(out, force=force) as tmp:
        b = Bundle(tmp, {})
        for t in llm_types:
            step(f"llm.{t}.gguf")
            write_llm_gguf(model, tok, tmp / f"llm.{t}.gguf", dtype=t, name=Path(str(model_path)).name,
                           model_dir=tok_dir, pre_tokenizer=pre_tokenizer)
            b.add_file("llm", t, f"llm.{t}.gguf", recipe={"type": t})
        step("vision.onnx")
        export_vision_onnx(model, tmp / "vision.onnx", pre["image_size"])
        b.add_file("vision", "fp32", "vision.onnx", recipe={"type": "fp32"})
        if "fp16" in vision_types:
            step("vision.fp16.onnx")
            convert_fp16(tmp / "vision.onnx", tmp / "vision.fp16.onnx")
            b.add_file("vision", "fp16", "vision.fp16.onnx", recipe={"type": "fp16", "io": "float32"})
        newline = getattr(model.model, "image_newline", None)
        if newline is not None:
            np.save(tmp / "image_newline.npy", newline.detach().float().cpu().numpy())
            b.add_file("extra", "image_newline", "image_newline.npy")
        if mmproj:
            step("mmproj.f16.gguf")
            info = write_mmproj_gguf(model, tmp / "mmproj.f16.gguf", pre)
            b.add_file("extra", "mmproj", "mmproj.f16.gguf", recipe={"type": "f16", **info})
        add_bos, _ = add_flags(tok)
        from ..prompting import stop_strings

        b.manifest = {
            "format_version": FORMAT_VERSION,
            "source": {"model": str(model_path), "arch": arch},
            "architecture": {
                "arch": arch,
                "llm": llm_arch,
                "vision": cfg.vision_config.model_type,
                "text_hidden": int(cfg.text_config.hidden_size),
                "vocab_size": int(cfg.text_config.vocab_size),
                "context_length": text_family(llm_arch).context_length(cfg.text_config),
                "vision_hidden": int(cfg.vision_config.hidden_size),
                "vision_layers": int(cfg.vision_config.num_hidden_layers),
            },
            "preprocess": pre,
            "prompt": {
                "template": template,
                "image_token": image_token,
                "image_token_id": image_token_id,
                "add_bos": bool(add_bos),
                "stop": stop_strings(template),
                "max_new_tokens": 128,
                # "official_oe": the model was trained on questions inside the official Inst-IT Bench
                # open-ended prompt (the embedded default model); the runtime wraps plain questions in it
                "question_format": str(getattr(cfg, "instit_question_format", None) or "raw"),
            },
            "files": b.manifest.get("files", {}),
            "quant_recipes": {},
        }
        (tmp / MANIFEST).write_text(json.dumps(b.manifest, indent=2) + "\n")
        step("verify")
        Bundle.load(tmp, verify=True)
    return Bundle.load(out, verify=False)


__all__ = ["export_bundle", "SUPPORTED_ARCHS"]
