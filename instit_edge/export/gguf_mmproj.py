"""Write the vision tower + projector as an ``mmproj`` GGUF for upstream llama.cpp tools.

Our own runtime does not use this file (it runs vision in ONNX Runtime with
exact Hugging Face semantics); it is exported so that llama-server / libmtmd
users can load the bundle too. Tensor names follow llama.cpp's clip loader;
the gguf package's own name map gets the projector wrong, so names are
written here explicitly (``linear_1`` -> ``mm.0``, ``linear_2`` -> ``mm.2``).
``clip.vision.feature_layer`` is always written (as a non-negative index into
the HF hidden-state list) so llama.cpp does not fall back to its own
"n_layer - 1" default.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InstitError

_LAYER_MAP = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.out_proj": "attn_out",
    "layer_norm1": "ln1",
    "layer_norm2": "ln2",
    "mlp.fc1": "ffn_up",
    "mlp.fc2": "ffn_down",
}


def hf_feature_layer_index(feature_layer: int, n_layers: int) -> int:
    """HF ``hidden_states[feature_layer]`` as a non-negative index (0 = embeddings)."""
    return feature_layer if feature_layer >= 0 else n_layers + 1 + feature_layer


def write_mmproj_gguf(model, out: str | Path, preprocess: dict, dtype: str = "f16") -> dict:
    import gguf
    import torch

    cfg = model.config
    vcfg = cfg.vision_config
    vtype = vcfg.model_type
    if vtype not in ("clip_vision_model", "siglip_vision_model"):
        raise InstitError(f"vision tower {vtype!r} is not supported for mmproj (supported: CLIP, SigLIP)")
    sd = {k: v.detach().to(torch.float32).cpu().numpy() for k, v in model.state_dict().items()}

    def get(suffix: str) -> np.ndarray | None:
        for k, v in sd.items():
            if k.endswith(suffix) and "vision_tower" in k:
                return v
        return None

    w = gguf.GGUFWriter(str(out), "clip")
    w.add_type("mmproj")
    w.add_bool("clip.has_vision_encoder", True)
    w.add_bool("clip.has_text_encoder", False)
    w.add_bool("clip.has_llava_projector", True)
    w.add_string("clip.projector_type", "mlp")
    w.add_file_type(1 if dtype == "f16" else 0)
    w.add_uint32("clip.vision.image_size", vcfg.image_size)
    w.add_uint32("clip.vision.patch_size", vcfg.patch_size)
    w.add_uint32("clip.vision.embedding_length", vcfg.hidden_size)
    w.add_uint32("clip.vision.feed_forward_length", vcfg.intermediate_size)
    w.add_uint32("clip.vision.projection_dim", cfg.text_config.hidden_size)
    w.add_uint32("clip.vision.attention.head_count", vcfg.num_attention_heads)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", float(vcfg.layer_norm_eps))
    w.add_uint32("clip.vision.block_count", vcfg.num_hidden_layers)
    w.add_array("clip.vision.image_mean", [float(x) for x in preprocess["image_mean"]])
    w.add_array("clip.vision.image_std", [float(x) for x in preprocess["image_std"]])
    layer = hf_feature_layer_index(cfg.vision_feature_layer, vcfg.num_hidden_layers)
    w.add_array("clip.vision.feature_layer", [layer])
    w.add_bool("clip.use_gelu", vtype == "siglip_vision_model")
    if preprocess.get("pinpoints"):
        w.add_string("clip.vision.mm_patch_merge_type", "spatial_unpad")
        w.add_array("clip.vision.image_grid_pinpoints", [int(v) for hw in preprocess["pinpoints"] for v in hw])
    else:
        w.add_string("clip.vision.mm_patch_merge_type", "flat")

    def put(name: str, arr: np.ndarray) -> None:
        f32 = arr.ndim <= 1 or dtype == "f32" or name.endswith("position_embd.weight")
        w.add_tensor(name, arr.astype(np.float32 if f32 else np.float16))

    put("v.patch_embd.weight", get("embeddings.patch_embedding.weight"))
    if (b := get("embeddings.patch_embedding.bias")) is not None:
        put("v.patch_embd.bias", b)
    if (c := get("embeddings.class_embedding")) is not None:
        put("v.class_embd", c)
    put("v.position_embd.weight", get("embeddings.position_embedding.weight"))
    if (pre := get("pre_layrnorm.weight")) is not None:
        put("v.pre_ln.weight", pre)
        put("v.pre_ln.bias", get("pre_layrnorm.bias"))
    for i in range(vcfg.num_hidden_layers):
        for hf, gg in _LAYER_MAP.items():
            for kind in ("weight", "bias"):
                arr = get(f"encoder.layers.{i}.{hf}.{kind}")
                if arr is not None:
                    put(f"v.blk.{i}.{gg}.{kind}", arr)
    if layer == vcfg.num_hidden_layers and (post := get("post_layernorm.weight")) is not None:
        put("v.post_ln.weight", post)
        put("v.post_ln.bias", get("post_layernorm.bias"))
    for k, v in sd.items():
        if k.endswith("multi_modal_projector.linear_1.weight") or k.endswith("multi_modal_projector.linear_1.bias"):
            put("mm.0." + k.rsplit(".", 1)[1], v)
        elif k.endswith("multi_modal_projector.linear_2.weight") or k.endswith("multi_modal_projector.linear_2.bias"):
            put("mm.2." + k.rsplit(".", 1)[1], v)
        elif k.endswith("image_newline"):
            put("model.image_newline", v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"feature_layer": layer}
