"""Write the text LLM of a LLaVA checkpoint as a llama.cpp GGUF.

The LLM kind's entry in ``models.families.TEXT_FAMILIES`` says how: Llama /
Vicuna become arch ``llama`` (q / k rows permuted into the rotary layout
llama.cpp's converter uses); Qwen2 becomes arch ``qwen2`` (with q/k/v biases,
NEOX rotary, no permutation). Tensor names come from gguf-py's ``TensorNameMap``. The tokenizer, special tokens and chat
template are embedded so llama.cpp tokenizes exactly like Hugging Face.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InstitError
from ..models.families import text_family


def gguf_tensor_names(gguf_arch: str, n_blocks: int):
    """HF parameter name -> GGUF tensor name, by gguf-py's ``TensorNameMap`` for ``gguf_arch`` (the registry
    llama.cpp's own converter uses); a parameter it does not know is a one-line error."""
    import gguf

    arch = next((a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == gguf_arch), None)
    if arch is None:
        raise InstitError(f"gguf-py has no architecture {gguf_arch!r}; update the gguf package")
    tmap = gguf.get_tensor_name_map(arch, n_blocks)

    def name(hf: str) -> str:
        out = tmap.get_name(hf, try_suffixes=(".weight", ".bias"))
        if out is None:
            raise InstitError(f"no GGUF tensor for the {gguf_arch} parameter {hf!r}; this checkpoint has a layer "
                              f"llama.cpp's {gguf_arch} architecture does not have")
        return out

    return name


def rotary_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF (rotate-half) q/k rows -> llama.cpp (interleaved pairs) rows."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _rope_theta(cfg) -> float:
    rp = getattr(cfg, "rope_parameters", None) or {}
    if isinstance(rp, dict) and "rope_theta" in rp:
        return float(rp["rope_theta"])
    return float(getattr(cfg, "rope_theta", 10000.0))


def text_state_dict(model) -> dict:
    """The LLM's parameters keyed like a plain HF causal LM (model.layers.N..., lm_head)."""
    sd = {}
    for name, t in model.state_dict().items():
        for prefix in ("model.language_model.", "language_model.model.", "language_model."):
            if name.startswith(prefix):
                sd["model." + name[len(prefix):]] = t
                break
        else:
            if name.startswith("lm_head.") or name.startswith("language_model.lm_head."):
                sd["lm_head." + name.split("lm_head.", 1)[1]] = t
    return sd


def write_llm_gguf(model, tokenizer, out: str | Path, dtype: str = "f16", name: str = "instit-edge", progress=None,
                   overrides: dict | None = None, model_dir: str | Path | None = None,
                   pre_tokenizer: str | None = None) -> dict:
    """Write ``model``'s text LLM to ``out`` as GGUF in ``dtype`` (f16 or f32). Returns a summary.

    The vocabulary is written by :func:`.gguf_vocab.gguf_vocab` (SentencePiece or byte-level BPE with its
    pre-tokenizer); ``model_dir`` is where ``tokenizer.model`` is looked for, ``pre_tokenizer`` overrides
    the detected BPE pre-tokenizer name.

    ``overrides`` maps an HF linear prefix (``model.layers.0.self_attn.q_proj``) to ``(raw block bytes,
    GGML type name)``: already-quantized weights (GPTQ) written as they are.
    """
    import gguf
    import torch

    cfg = model.config.text_config
    fam = text_family(cfg.model_type)
    arch = fam.gguf_arch
    if dtype not in ("f16", "f32"):
        raise InstitError(f"GGUF dtype {dtype!r} not supported here (f16, f32); use `instit-edge quantize` for others")
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head

    sd = {k: v.detach().to(torch.float32).cpu().numpy() for k, v in text_state_dict(model).items()}
    n_vocab = sd["model.embed_tokens.weight"].shape[0]
    from .gguf_vocab import gguf_vocab

    vocab = gguf_vocab(tokenizer, n_vocab, model_dir=model_dir, pre=pre_tokenizer)

    out = Path(out)
    w = gguf.GGUFWriter(str(out), arch)
    w.add_name(name)
    w.add_context_length(fam.context_length(cfg))
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(_rope_theta(cfg))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)
    w.add_vocab_size(n_vocab)
    vocab.write(w)
    if tokenizer.bos_token_id is not None:
        w.add_bos_token_id(tokenizer.bos_token_id)
    if tokenizer.eos_token_id is not None:
        w.add_eos_token_id(tokenizer.eos_token_id)
    if tokenizer.pad_token_id is not None:
        w.add_pad_token_id(tokenizer.pad_token_id)
    if tokenizer.unk_token_id is not None:
        w.add_unk_token_id(tokenizer.unk_token_id)
    add_bos, add_eos = vocab.details["add_bos"], vocab.details["add_eos"]
    w.add_add_bos_token(add_bos)
    w.add_add_eos_token(add_eos)
    if tokenizer.chat_template:
        w.add_chat_template(tokenizer.chat_template)

    def put(gname: str, arr: np.ndarray) -> None:
        keep_f32 = arr.ndim == 1 or dtype == "f32"
        w.add_tensor(gname, arr.astype(np.float32 if keep_f32 else np.float16))

    names = gguf_tensor_names(fam.gguf_arch, cfg.num_hidden_layers)
    heads = {"self_attn.q_proj.weight": n_head, "self_attn.k_proj.weight": n_kv}  # rows to permute, by heads
    put(names("model.embed_tokens.weight"), sd["model.embed_tokens.weight"])
    for i in range(cfg.num_hidden_layers):
        prefix = f"model.layers.{i}."
        for key in [k for k in sd if k.startswith(prefix)]:
            gname = names(key)
            arr = sd[key]
            n_perm = heads.get(key[len(prefix):]) if fam.rotary_permute else None
            ov = (overrides or {}).get(key[: -len(".weight")]) if key.endswith(".weight") else None
            if ov is not None:
                raw, ty = ov
                raw = rotary_permute(raw, n_perm) if n_perm else raw
                w.add_tensor(gname, np.ascontiguousarray(raw), raw_dtype=getattr(gguf.GGMLQuantizationType, ty))
                continue
            put(gname, rotary_permute(arr, n_perm) if n_perm else arr)
        if progress:
            progress(1)
    put(names("model.norm.weight"), sd["model.norm.weight"])
    lm_head = sd.get("lm_head.weight", sd["model.embed_tokens.weight"])
    put(names("lm_head.weight"), lm_head)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"arch": arch, "n_vocab": n_vocab, "add_bos": add_bos, "dtype": dtype, "tokenizer": vocab.model,
            "pre_tokenizer": vocab.pre}
