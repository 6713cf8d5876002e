"""numpy preprocessing and AnyRes packing equal the Hugging Face processor and model exactly."""

import numpy as np
import pytest
import torch
from PIL import Image

from instit_edge.runtime.anyres import Preprocess, pack_anyres

SIZES = [(40, 70), (100, 30), (33, 33), (64, 128), (17, 90), (200, 150), (31, 64), (96, 32)]


@pytest.mark.parametrize("combo", ["llava-next-llama-clip", "llava-next-qwen2-siglip", "llava-llama-clip"])
def test_preprocess_and_packing_match_hf(tiny_models, combo, rng):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from instit_edge.models.vision import vision_module

    path = tiny_models(combo)
    proc = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    ip = proc.image_processor
    pre = Preprocess(ip.crop_size["height"], list(ip.image_mean), list(ip.image_std),
                     getattr(ip, "image_grid_pinpoints", None) if "next" in combo else None)
    cfg = model.config
    for h, w in SIZES:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        ref = ip(images=img, return_tensors="pt")
        pv = ref["pixel_values"]
        pv = pv[0] if pv.ndim == 5 else pv
        mine, hw = pre.crops(img)
        assert mine.shape == tuple(pv.shape), (h, w)
        np.testing.assert_allclose(mine, pv.numpy(), atol=1e-6, rtol=0)
        assert hw == (h, w)
        if "next" not in combo:
            continue
        with torch.no_grad():
            hf = model.model.get_image_features(pixel_values=ref["pixel_values"], image_sizes=ref["image_sizes"])
            hf = hf.pooler_output[0].numpy()
            feats = vision_module(model)(torch.from_numpy(mine)).numpy()
        ours = pack_anyres(feats, hw, cfg.image_grid_pinpoints, cfg.vision_config.image_size,
                           cfg.vision_config.patch_size, model.model.image_newline.detach().numpy())
        n_tokens = int((proc(images=img, text="<image>", return_tensors="pt")["input_ids"] == cfg.image_token_id).sum())
        assert ours.shape == hf.shape and len(ours) == n_tokens, (h, w)
        np.testing.assert_allclose(ours, hf, atol=1e-6, rtol=0)
