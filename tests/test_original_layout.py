"""Checkpoints in the original LLaVA-NeXT repo layout: detect, convert to HF, match the original forward, export.

Tiny replicas are written with the real config schema (field names and value forms of
llava-v1.6-vicuna-7b / Inst-IT Vicuna and of the LLaVA-OneVision-style Qwen2 + SigLIP configs),
small dimensions and random weights. The reference forward below re-implements
``llava/model/llava_arch.py`` + ``llava/mm_utils.py`` of the LLaVA-NeXT repo directly on the
original tensors (no conversion involved).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from instit_edge.errors import InstitError

VICUNA_CFG = {  # llava-v1.6-vicuna-7b schema
    "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava_llama",
    "_name_or_path": "Inst-IT/LLaVA-Next-Inst-It-Vicuna-7B", "hidden_act": "silu",
    "image_aspect_ratio": "anyres", "image_crop_resolution": 224, "image_split_resolution": 224,
    "image_grid_pinpoints": [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]],
    "initializer_range": 0.02, "mm_patch_merge_type": "spatial_unpad", "mm_projector_lr": None,
    "mm_projector_type": "mlp2x_gelu", "mm_resampler_type": None, "mm_use_im_patch_token": False,
    "mm_use_im_start_end": False, "mm_vision_select_feature": "patch", "mm_vision_select_layer": -2,
    "mm_vision_tower": "openai/clip-vit-large-patch14-336", "mm_vision_tower_lr": 2e-06, "pretraining_tp": 1,
    "rope_scaling": None, "rope_theta": 10000.0, "tie_word_embeddings": False, "tokenizer_model_max_length": 4096,
    "tokenizer_padding_side": "right", "torch_dtype": "float32", "transformers_version": "4.40.0.dev0",
    "tune_mm_mlp_adapter": False, "unfreeze_mm_vision_tower": True, "use_cache": True, "use_mm_proj": True,
}
QWEN_CFG = {  # lmms-lab llava-onevision-qwen2 schema (model_type "llava": detection must not rely on it)
    "architectures": ["LlavaQwenForCausalLM"], "model_type": "llava", "_name_or_path": "my-qwen-llava",
    "attention_dropout": 0.0, "hidden_act": "silu", "image_aspect_ratio": "anyres_max_2",
    "image_crop_resolution": None, "image_grid_pinpoints": "(1x1),...,(3x3)", "image_split_resolution": None,
    "max_window_layers": 28, "mm_newline_position": "grid", "mm_patch_merge_type": "spatial_unpad",
    "mm_projector_type": "mlp2x_gelu", "mm_spatial_pool_mode": "bilinear", "mm_spatial_pool_stride": 2,
    "mm_tunable_parts": "mm_vision_tower,mm_mlp_adapter,mm_language_model", "mm_use_im_patch_token": False,
    "mm_use_im_start_end": False, "mm_vision_select_feature": "patch", "mm_vision_select_layer": -2,
    "mm_vision_tower": "google/siglip-so400m-patch14-384", "rope_scaling": None, "rope_theta": 1000000.0,
    "sliding_window": 131072, "tie_word_embeddings": False, "torch_dtype": "float32", "use_cache": True,
    "use_mm_proj": True, "use_sliding_window": False, "vision_tower_pretrained": None,
}


def _rename_image_token(d: Path) -> None:
    """Real Vicuna / Qwen2 tokenizers have no `<image>`: rename the tiny tokenizer's one away."""
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        f = d / name
        if f.is_file():
            f.write_text(f.read_text().replace('"<image>"', '"<unused_0>"'))
    tc = json.loads((d / "tokenizer_config.json").read_text())
    tc.pop("extra_special_tokens", None)
    tc.pop("image_token", None)
    tc.pop("chat_template", None)
    tc.pop("processor_class", None)
    (d / "tokenizer_config.json").write_text(json.dumps(tc))


def make_replica(hf_dir: Path, out: Path, base_cfg: dict, pad_vocab_to: int = 0) -> Path:
    """Rewrite a tiny HF checkpoint in the LLaVA-NeXT repo layout (keys, flat config, tokenizer)."""
    from safetensors.torch import load_file, save_file

    hf_cfg = json.loads((hf_dir / "config.json").read_text())
    tx, vis = hf_cfg["text_config"], hf_cfg["vision_config"]
    sd = load_file(str(hf_dir / "model.safetensors"))
    siglip = "siglip" in vis["model_type"]
    n_vis = vis["num_hidden_layers"]
    new = {}
    for k, v in sd.items():
        k = k.removeprefix("model.")  # transformers saves the hub names: language_model.model.*, vision_tower.*
        if k.startswith("language_model.lm_head."):
            new[k[len("language_model."):]] = v
        elif k.startswith(("language_model.model.", "language_model.")):
            new["model." + k.removeprefix("language_model.").removeprefix("model.")] = v
        elif k.startswith("vision_tower."):
            rest = k[len("vision_tower."):]
            rest = rest if rest.startswith("vision_model.") else "vision_model." + rest
            if siglip and (rest.startswith("vision_model.head.") or f"encoder.layers.{n_vis - 1}." in rest):
                continue  # LLaVA-NeXT's SigLipVisionTower deletes the last layer and the head
            new["model.vision_tower.vision_tower." + rest] = v
        elif k.startswith("multi_modal_projector."):
            new[k.replace("multi_modal_projector.linear_1", "model.mm_projector.0")
                 .replace("multi_modal_projector.linear_2", "model.mm_projector.2")] = v
        elif k == "image_newline":
            new["model.image_newline"] = v
        else:
            new[k] = v
    rows = new["model.embed_tokens.weight"].shape[0]
    if pad_vocab_to and rows % pad_vocab_to:
        g = torch.Generator().manual_seed(7)
        extra = pad_vocab_to - rows % pad_vocab_to
        for k in ("model.embed_tokens.weight", "lm_head.weight"):
            new[k] = torch.cat([new[k], 0.02 * torch.randn(extra, new[k].shape[1], generator=g)])
        rows += extra
    out.mkdir(parents=True)
    save_file(new, str(out / "model.safetensors"), metadata={"format": "pt"})
    keep = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "max_position_embeddings", "rms_norm_eps", "bos_token_id", "eos_token_id", "pad_token_id")
    cfg = dict(base_cfg, **{k: tx[k] for k in keep if tx.get(k) is not None})
    cfg.update(vocab_size=rows, mm_hidden_size=vis["hidden_size"])
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        if (hf_dir / name).is_file():
            shutil.copy2(hf_dir / name, out / name)
    _rename_image_token(out)
    return out


def tower_dir(hf_dir: Path, out: Path) -> Path:
    """A local 'HF folder' for the tiny tower (what --vision-tower / the HF cache would hold)."""
    vis = json.loads((hf_dir / "config.json").read_text())["vision_config"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(vis))
    return out


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    from instit_edge.models.tiny import TinySpec, build_tiny

    root = tmp_path_factory.mktemp("orig")
    v_hf = build_tiny(root / "hf-vicuna", TinySpec(arch="llava-next", llm="llama", vision="clip", seed=11))
    q_hf = build_tiny(root / "hf-qwen", TinySpec(arch="llava-next", llm="qwen2", vision="siglip", seed=12))
    vicuna = make_replica(v_hf, root / "LLaVA-Next-Inst-It-Vicuna-7B", VICUNA_CFG)
    qwen = make_replica(q_hf, root / "qwen-siglip", QWEN_CFG, pad_vocab_to=64)
    # The CLIP tower resolves through the local HF cache (as after `huggingface-cli download`), never the network
    cache = root / "hf-cache"
    snap = cache / "models--openai--clip-vit-large-patch14-336" / "snapshots" / "0123abcd"
    tower_dir(v_hf, snap)
    (cache / "models--openai--clip-vit-large-patch14-336" / "refs").mkdir(parents=True)
    (cache / "models--openai--clip-vit-large-patch14-336" / "refs" / "main").write_text("0123abcd")
    siglip_dir = tower_dir(q_hf, root / "towers" / "tiny-siglip")
    return {"vicuna": vicuna, "qwen": qwen, "cache": cache, "siglip_dir": siglip_dir, "root": root}


@pytest.fixture(autouse=True)
def _offline_cache(replicas, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(replicas["cache"]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# --------------------------------------------------------------------------- the reference (LLaVA-NeXT semantics)
def ref_preprocess(img: Image.Image, info) -> tuple[torch.Tensor, tuple[int, int]]:
    """mm_utils.process_anyres_image: base squashed to the tile, best pinpoint, resize_and_pad (ceil), tiles."""
    from instit_edge.models.original_layout import select_best_resolution

    S = info.tower.image_size
    mean, std = np.array(info.tower.image_mean), np.array(info.tower.image_std)
    w0, h0 = img.size
    tw, th = select_best_resolution(img.size, info.pinpoints)
    sw, sh = tw / w0, th / h0
    if sw < sh:
        nw, nh = tw, min(math.ceil(h0 * sw), th)
    else:
        nw, nh = min(math.ceil(w0 * sh), tw), th
    canvas = Image.new("RGB", (tw, th), (0, 0, 0))
    canvas.paste(img.resize((nw, nh)), ((tw - nw) // 2, (th - nh) // 2))
    tiles = [img.resize((S, S))] + [canvas.crop((x, y, x + S, y + S)) for y in range(0, th, S) for x in range(0, tw, S)]
    arr = [((np.asarray(t, dtype=np.float64) / 255.0 - mean) / std).transpose(2, 0, 1) for t in tiles]
    return torch.tensor(np.stack(arr), dtype=torch.float32), img.size


def ref_projected(orig: Path, info, pixels: torch.Tensor) -> torch.Tensor:
    """encode_images on the original tensors: the tower's selected layer, then mm_projector ([crops, n*n, D])."""
    from safetensors.torch import load_file
    from transformers import CLIPVisionModel, SiglipVisionModel

    sd = load_file(str(orig / "model.safetensors"))
    pre = "model.vision_tower.vision_tower."
    cls = CLIPVisionModel if info.tower.kind == "clip" else SiglipVisionModel
    tower = cls(info.tower.hf_config()).eval()
    want = set(tower.state_dict())
    vs = {k[len(pre):]: v for k, v in sd.items() if k.startswith(pre)}
    tower.load_state_dict({(k if k in want else k.removeprefix("vision_model.")): v for k, v in vs.items()})
    with torch.no_grad():
        hs = tower(pixel_values=pixels, output_hidden_states=True).hidden_states
        x = hs[info.cfg["mm_vision_select_layer"]][:, 1:] if info.tower.kind == "clip" else hs[-1]
        x = torch.nn.functional.gelu(x @ sd["model.mm_projector.0.weight"].T + sd["model.mm_projector.0.bias"])
        return x @ sd["model.mm_projector.2.weight"].T + sd["model.mm_projector.2.bias"]


def ref_image_features(orig: Path, info, pixels: torch.Tensor, size_wh) -> torch.Tensor:
    """encode_images + the spatial_unpad branch of prepare_inputs_labels_for_multimodal, on the original tensors."""
    from safetensors.torch import load_file

    from instit_edge.models.original_layout import select_best_resolution

    sd = load_file(str(orig / "model.safetensors"))
    x = ref_projected(orig, info, pixels)
    S, n = info.tower.image_size, info.tower.image_size // info.tower.patch_size
    base, tiles = x[0], x[1:]
    tw, th = select_best_resolution(size_wh, info.pinpoints)
    t = tiles.view(th // S, tw // S, n, n, -1).permute(4, 0, 2, 1, 3).flatten(1, 2).flatten(2, 3)
    w0, h0 = size_wh
    ch, cw = t.shape[1:]
    if w0 / h0 > cw / ch:
        pad = (ch - int(h0 * (cw / w0))) // 2
        t = t[:, pad:ch - pad, :]
    else:
        pad = (cw - int(w0 * (ch / h0))) // 2
        t = t[:, :, pad:cw - pad]
    if info.anyres_max:
        c, h, w = t.shape
        times = math.sqrt(h * w / (info.anyres_max * n * n))
        if times > 1.1:
            t = torch.nn.functional.interpolate(t[None], [int(h // times), int(w // times)], mode="bilinear")[0]
    nl = sd["model.image_newline"]
    t = torch.cat([t, nl[:, None, None].expand(*t.shape[:-1], 1)], dim=-1).flatten(1, 2).transpose(0, 1)
    return torch.cat([base, t], dim=0)


def ref_logits(orig: Path, info, feats: torch.Tensor, prefix: list[int], suffix: list[int]) -> torch.Tensor:
    """LlavaLlama/QwenForCausalLM forward: text embeddings around the image rows (IMAGE_TOKEN_INDEX spliced out)."""
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    sd = load_file(str(orig / "model.safetensors"))
    cfg = {k: v for k, v in info.cfg.items() if not k.startswith("mm_") and k not in ("architectures", "model_type")}
    cls, ccls = (Qwen2ForCausalLM, Qwen2Config) if info.llm == "qwen2" else (LlamaForCausalLM, LlamaConfig)
    lm = cls(ccls(**cfg)).eval()
    lm.load_state_dict({k: v for k, v in sd.items() if not k.startswith(("model.vision_tower", "model.mm_projector",
                                                                          "model.image_newline"))}, strict=True)
    emb = lm.get_input_embeddings()
    with torch.no_grad():
        x = torch.cat([emb(torch.tensor(prefix)), feats, emb(torch.tensor(suffix))])[None]
        return lm(inputs_embeds=x).logits[0]


def _convert(src: Path, out: Path, **kw) -> Path:
    from instit_edge.models.original_layout import convert_original

    return convert_original(src, out, **kw)


@pytest.fixture(scope="module")
def converted(replicas, tmp_path_factory):
    os.environ["HF_HUB_CACHE"] = str(replicas["cache"])
    root = tmp_path_factory.mktemp("conv")
    return {"vicuna": _convert(replicas["vicuna"], root / "vicuna"),
            "qwen": _convert(replicas["qwen"], root / "qwen", vision_tower=replicas["siglip_dir"])}


@pytest.mark.parametrize("which,size", [("vicuna", (50, 30)), ("vicuna", (37, 71)), ("qwen", (60, 20))])
def test_converted_forward_matches_original(replicas, converted, which, size):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from instit_edge.models.original_layout import image_rows, inspect_original

    kw = {"vision_tower": replicas["siglip_dir"]} if which == "qwen" else {}
    info = inspect_original(replicas[which], **kw)
    img = Image.fromarray(np.random.default_rng(sum(size)).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    # preprocessing: the converted processor gives LLaVA-NeXT's tiles
    ref_px, _ = ref_preprocess(img, info)
    proc = AutoProcessor.from_pretrained(str(converted[which]))
    model = AutoModelForImageTextToText.from_pretrained(str(converted[which]), dtype=torch.float32).eval()
    prompt = "USER: <image>\nWhat is [1] doing? ASSISTANT:"
    inputs = proc(text=prompt, images=img, return_tensors="pt")
    px = inputs["pixel_values"][0][: ref_px.shape[0]]
    assert px.shape == ref_px.shape
    pdiff = (px - ref_px).abs().max().item()
    print(f"{which} {size}: max |pixel diff| vs mm_utils preprocessing {pdiff:.2e}")
    assert pdiff < 2e-2  # uint8 resampling may differ by one level
    # image rows: same pixels in, original packing vs HF packing
    ref = ref_image_features(replicas[which], info, px, size)
    with torch.no_grad():
        ours = model.get_image_features(pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"])
    ours = ours.pooler_output[0] if hasattr(ours, "pooler_output") else ours[0]
    assert ours.shape == ref.shape and ref.shape[0] == image_rows(info, size)
    diff = (ours - ref).abs().max().item()
    print(f"{which} {size}: {ref.shape[0]} rows, max |features diff| {diff:.2e}")
    assert diff < 1e-5
    # whole forward: logits at every position
    ids = inputs["input_ids"][0].tolist()
    img_id = model.config.image_token_id
    first, last = ids.index(img_id), len(ids) - ids[::-1].index(img_id)
    with torch.no_grad():
        logits = model(**inputs).logits[0]
    rl = ref_logits(replicas[which], info, ref, ids[:first], ids[last:])
    ld = (logits[:, : rl.shape[1]] - rl).abs().max().item()
    print(f"{which} {size}: max |logits diff| {ld:.2e}")
    assert ld < 1e-4


def test_anyres_max_downsizing_is_recorded(replicas, converted):
    """anyres_max_N: the original packs fewer rows for a large image; HF LlavaNext does not downsize (recorded)."""
    from instit_edge.models.original_layout import image_rows, inspect_original

    info = inspect_original(replicas["qwen"], vision_tower=replicas["siglip_dir"])
    size = (90, 90)
    img = Image.fromarray(np.random.default_rng(3).integers(0, 256, (90, 90, 3), dtype=np.uint8))
    px, _ = ref_preprocess(img, info)
    ref = ref_image_features(replicas["qwen"], info, px, size)
    assert ref.shape[0] == image_rows(info, size) == 16 + 5 * 6  # 12x12 merged -> 5x5 (+ newline per row)
    assert image_rows(info, size, anyres_max=False) == 16 + 12 * 13
    cfg = json.loads((converted["qwen"] / "config.json").read_text())
    assert cfg["instit_original"]["anyres_max"] == 2
    assert cfg["instit_original"]["video"]["pool_mode"] == "bilinear"
    assert cfg["model_type"] == "llava_next" and cfg["vision_config"]["num_hidden_layers"] == 2
    assert cfg["vision_feature_layer"] == -1 and cfg["vision_feature_select_strategy"] == "full"
    # the string pinpoints (1x1),...,(3x3) in tile units -> 9 pixel pairs
    assert sorted(map(tuple, cfg["image_grid_pinpoints"])) == [(a * 32, b * 32) for a in (1, 2, 3) for b in (1, 2, 3)]


def test_inspect_and_inst_it_video_defaults(replicas):
    from instit_edge.models.commands import inspect_path

    rows = dict(inspect_path(replicas["vicuna"]))
    assert "LlavaLlamaForCausalLM" in rows["layout"] and rows["template"] == "vicuna_v1"
    assert "local" in rows["vision tower"] and "clip" in rows["vision tower"]
    assert "Inst-IT eval overrides: pool bilinear" in rows["video packing"]
    # 4x4 grid per tile: bilinear to ceil(4/2)=2 -> 8 frames x 4 rows, no newline
    assert rows["rows: 8 frames"] == "32"
    q = dict(inspect_path(replicas["qwen"], vision_tower=replicas["siglip_dir"]))
    assert q["template"] == "qwen_1_5" and "newline grid" in q["video packing"]
    assert q["rows: 8 frames"] == str(8 * 4 + 8 * 2)


def test_known_tower_table_matches_by_shape(tmp_path):
    from instit_edge.models.original_layout import VISION_PREFIX, resolve_tower

    pre = VISION_PREFIX + "vision_model."
    shapes = {pre + "embeddings.patch_embedding.weight": ([1152, 3, 14, 14], None),
              pre + "embeddings.position_embedding.weight": ([729, 1152], None),
              pre + "encoder.layers.0.mlp.fc1.weight": ([4304, 1152], None)}
    shapes.update({pre + f"encoder.layers.{i}.layer_norm1.weight": ([1152], None) for i in range(26)})
    t = resolve_tower({"mm_vision_tower": "/nonexistent/siglip-finetuned"}, shapes, "cfg")
    assert (t.kind, t.num_hidden_layers, t.num_attention_heads, t.image_size) == ("siglip", 26, 16, 384)
    assert "google/siglip-so400m-patch14-384" in t.source
    t = resolve_tower({"mm_vision_tower": "google/siglip-so400m-patch14-384"}, shapes, "cfg")
    assert t.source == "known tower google/siglip-so400m-patch14-384"


def test_export_and_ask_on_original_layout(replicas, tmp_path):
    env = dict(os.environ, COLUMNS="200", HF_HUB_CACHE=str(replicas["cache"]), HF_HUB_OFFLINE="1")
    cli = [sys.executable, "-m", "instit_edge.cli"]
    out = tmp_path / "bundle"
    r = subprocess.run([*cli, "export", str(replicas["vicuna"]), "--out", str(out), "--no-mmproj",
                        "--vision-types", "fp32"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    man = json.loads((out / "bundle.json").read_text())
    assert man["architecture"]["arch"] == "llava_next" and man["prompt"]["template"] == "vicuna_v1"
    img = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 70, 3), dtype=np.uint8)).save(img)
    r = subprocess.run([*cli, "ask", str(out), "--image", str(img), "-q", "What is [1]?", "--max-new-tokens", "4"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.strip(), r.stderr[-2000:]
    r = subprocess.run([*cli, "inspect", str(replicas["vicuna"])], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and "rows: 640x480 image" in r.stdout, r.stderr


# --------------------------------------------------------------------------- bad input: one line, exit 2
def _bad_copy(src: Path, dst: Path, **cfg_changes) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    for k, v in cfg_changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def _cli(*args, env_extra=None):
    env = dict(os.environ, COLUMNS="200", HF_HUB_OFFLINE="1", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "instit_edge.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_bad_inputs_one_line_exit_2(replicas, tmp_path):
    from safetensors.torch import load_file, save_file

    v = replicas["vicuna"]
    cases = [
        (_bad_copy(v, tmp_path / "tower", mm_vision_tower="acme/unknown-vit"), "--vision-tower DIR"),
        (_bad_copy(v, tmp_path / "proj", mm_projector_type="mlp3x_res2x_gelu"), "supported: linear, mlp2x_gelu"),
        (_bad_copy(v, tmp_path / "ar", image_aspect_ratio="crop_split"), "supported: pad, anyres, anyres_max_N"),
        (_bad_copy(v, tmp_path / "pool", mm_spatial_pool_mode="median"), "supported: average, max, bilinear"),
        (_bad_copy(v, tmp_path / "layers", num_hidden_layers=3), "model.layers.2."),
        (_bad_copy(v, tmp_path / "hid", mm_hidden_size=96), "mm_hidden_size"),
    ]
    shp = _bad_copy(v, tmp_path / "shape")
    sd = load_file(str(shp / "model.safetensors"))
    sd["model.mm_projector.2.weight"] = sd["model.mm_projector.2.weight"][:, :128].contiguous()
    save_file(sd, str(shp / "model.safetensors"))
    cases.append((shp, "model.mm_projector.2.weight"))
    trunc = _bad_copy(v, tmp_path / "trunc")
    data = (trunc / "model.safetensors").read_bytes()
    (trunc / "model.safetensors").write_bytes(data[: len(data) - 1000])
    cases.append((trunc, "truncated"))
    env = {"HF_HUB_CACHE": str(replicas["cache"])}
    for i, (ckpt, needle) in enumerate(cases):
        r = _cli("convert", str(ckpt), "--out", str(tmp_path / f"out{i}"), env_extra=env)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], (needle, r.stderr[-1500:])
        assert not (tmp_path / f"out{i}").exists()
    # the same through export (converts first) and inspect
    r = _cli("export", str(cases[0][0]), "--out", str(tmp_path / "b"), env_extra=env)
    assert r.returncode == 2 and "--vision-tower DIR" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _cli("inspect", str(cases[1][0]), env_extra=env)
    assert r.returncode == 2 and "mm_projector_type" in r.stderr


def test_detection_never_by_model_type(replicas):
    from instit_edge.models.original_layout import InstitError as E
    from instit_edge.models.original_layout import is_original_layout, read_config

    assert E is InstitError
    cfg = read_config(replicas["qwen"])
    assert cfg["model_type"] == "llava" and is_original_layout(cfg)
    assert not is_original_layout({"model_type": "llava_llama", "architectures": ["LlamaForCausalLM"]})
    assert not is_original_layout({"architectures": ["LlavaLlamaForCausalLM"]})


# --------------------------------------------------------------------------- the bundle runs the original packing
def _session_rows(bundle: Path, img: Image.Image):
    from instit_edge.runtime.session import EdgeSession

    sess = EdgeSession.load(bundle, llm="f16", vision="fp32", n_threads=2)
    crops, _ = sess._image_preprocess().crops(img, anyres=True)
    rows, _ = sess.image_embeddings(np.asarray(img))
    return sess, torch.from_numpy(crops), torch.from_numpy(np.asarray(rows, np.float32))


@pytest.fixture(scope="module")
def original_bundles(replicas, tmp_path_factory):
    from instit_edge.export.bundle_writer import export_bundle

    root = tmp_path_factory.mktemp("obundles")
    os.environ["HF_HUB_CACHE"] = str(replicas["cache"])
    conv = {"vicuna": _convert(replicas["vicuna"], root / "c-vicuna"),
            "qwen": _convert(replicas["qwen"], root / "c-qwen", vision_tower=replicas["siglip_dir"])}
    return {k: export_bundle(str(v), root / f"b-{k}", llm_types=("f16",), vision_types=("fp32",), mmproj=False).root
            for k, v in conv.items()}


def test_bundle_records_the_original_packing(replicas, original_bundles):
    from instit_edge.models.original_layout import inspect_original

    want = inspect_original(replicas["qwen"], vision_tower=replicas["siglip_dir"]).video
    q = json.loads((original_bundles["qwen"] / "bundle.json").read_text())["preprocess"]
    assert q["unpad_rounding"] == "int" and q["anyres_max"] == 2
    assert q["video"]["pool_mode"] == want["pool_mode"] == "bilinear"
    assert q["video"]["newline_position"] == want["newline_position"] == "grid"
    v = json.loads((original_bundles["vicuna"] / "bundle.json").read_text())["preprocess"]
    assert v["unpad_rounding"] == "int" and v["anyres_max"] is None


def test_runtime_rows_match_llava_next_with_anyres_max(replicas, original_bundles):
    """A 90x90 image: 12x12 merged grid shrunk to 5x5 by anyres_max_2 (bilinear), as llava_arch.py does."""
    from instit_edge.models.original_layout import image_rows, inspect_original

    info = inspect_original(replicas["qwen"], vision_tower=replicas["siglip_dir"])
    img = Image.fromarray(np.random.default_rng(3).integers(0, 256, (90, 90, 3), dtype=np.uint8))
    _, px, ours = _session_rows(original_bundles["qwen"], img)
    ref = ref_image_features(replicas["qwen"], info, px, (90, 90))
    assert ours.shape == ref.shape and ref.shape[0] == image_rows(info, (90, 90)) == 16 + 5 * 6
    diff = (ours - ref).abs().max().item()
    print(f"anyres_max_2 rows: max |runtime - llava_arch| {diff:.2e}")
    assert diff < 1e-4


def test_runtime_unpad_rounds_like_llava_next(replicas, original_bundles):
    """A size where int() and round(x, 7) unpad to different widths: the runtime follows int()."""
    from instit_edge.models.original_layout import image_rows, inspect_original, unpadded_shape

    info = inspect_original(replicas["vicuna"])
    n = info.tower.image_size // info.tower.patch_size
    found = None
    for w in range(20, 200):
        for h in range(20, 200):
            from instit_edge.models.original_layout import select_best_resolution

            tw, th = select_best_resolution((w, h), info.pinpoints)
            grid = ((th // info.tower.image_size) * n, (tw // info.tower.image_size) * n)
            if unpadded_shape(*grid, (w, h), "int") != unpadded_shape(*grid, (w, h), "round7"):
                found = (w, h)
                break
        if found:
            break
    assert found, "no size separates int() from round(x, 7) for this tower"
    img = Image.fromarray(np.random.default_rng(4).integers(0, 256, (found[1], found[0], 3), dtype=np.uint8))
    _, px, ours = _session_rows(original_bundles["vicuna"], img)
    ref = ref_image_features(replicas["vicuna"], info, px, found)
    assert ours.shape[0] == ref.shape[0] == image_rows(info, found) != image_rows(info, found, rounding="round7")
    assert (ours - ref).abs().max().item() < 1e-4


@pytest.mark.parametrize("which", ["vicuna", "qwen"])
def test_video_through_original_bundle_matches_llava_arch(replicas, converted, tmp_path, which, rng):
    """A 3-frame video end to end through a bundle of each original-layout replica (f32 GGUF): the runtime's
    logits at every text position against llava_arch.py on the original tensors (encode_images, get_2dPool
    in the checkpoint's mode, the newline per mm_newline_position, the LLM forward). Tolerance 1e-3."""
    import math

    from test_llava_next_packing import _ref_video

    from instit_edge.export.bundle_writer import export_bundle
    from instit_edge.models.original_layout import inspect_original, video_rows
    from instit_edge.runtime.session import EdgeSession

    kw = {"vision_tower": replicas["siglip_dir"]} if which == "qwen" else {}
    info = inspect_original(replicas[which], **kw)
    b = export_bundle(str(converted[which]), tmp_path / "b", llm_types=("f32",), vision_types=("fp32",),
                      mmproj=False).root
    sess = EdgeSession.load(b, llm="f32", vision="fp32", f32_kv=True, n_threads=2)
    frames = [rng.integers(0, 256, (int(rng.integers(30, 70)), int(rng.integers(30, 70)), 3), dtype=np.uint8)
              for _ in range(3)]
    q = "What does [1] do between <1> and <3>?"
    segs, meta = sess.prepare(q, video=frames)
    ours = sess.logits(q, video=frames)
    crops = np.concatenate([sess.pre.crops(Image.fromarray(f), anyres=False)[0] for f in frames])
    x = ref_projected(replicas[which], info, torch.from_numpy(crops))
    n = info.tower.image_size // info.tower.patch_size
    g = x.view(len(frames), n, n, -1).permute(0, 3, 1, 2)
    v = info.video
    if v["pool_mode"] == "bilinear":  # get_2dPool
        g = torch.nn.functional.interpolate(g, size=[math.ceil(n / 2)] * 2, mode="bilinear")
    else:
        g = (torch.nn.functional.avg_pool2d if v["pool_mode"] == "average" else torch.nn.functional.max_pool2d)(g, 2)
    g = g.permute(0, 2, 3, 1).flatten(1, 2)
    from safetensors.torch import load_file

    nl = load_file(str(replicas[which] / "model.safetensors"))["model.image_newline"]
    ref_rows = _ref_video(g, nl, v["newline_position"])
    assert meta["image_rows"] == len(ref_rows) == video_rows(info, 3)
    prefix, suffix = segs[0].tokens, segs[-1].tokens
    assert len(segs) == 3 and segs[1].embd is not None
    rl = ref_logits(replicas[which], info, ref_rows, prefix, suffix)
    ref_text = torch.cat([rl[: len(prefix)], rl[len(prefix) + len(ref_rows):]]).numpy()
    assert ours.shape[0] == ref_text.shape[0]  # the converted vocabulary may carry an added <image> row more
    diff = np.abs(ours[:, : ref_text.shape[1]] - ref_text).max()
    print(f"{which} video ({v['pool_mode']}, newline {v['newline_position']}): {len(ref_rows)} rows, "
          f"max |logits diff| {diff:.2e}")
    assert diff <= 1e-3
