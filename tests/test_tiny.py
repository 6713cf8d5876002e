import json

import numpy as np
import pytest
from conftest import COMBOS
from PIL import Image

from instit_edge.errors import InstitError


@pytest.mark.parametrize("combo", COMBOS)
def test_tiny_reloads_and_generates(tiny_models, combo, rng):
    import torch
    from transformers import AutoModelForImageTextToText

    from instit_edge.models.loading import load_model
    from instit_edge.models.parts_processor import PartsProcessor

    path = tiny_models(combo)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    _, proc = load_model(path)
    img = Image.fromarray(rng.integers(0, 255, (int(rng.integers(20, 90)), int(rng.integers(20, 90)), 3), np.uint8))
    text = proc.tokenizer.apply_chat_template([{"role": "user", "content": "<image>\nWhat is [1]?"}],
                                              tokenize=False, add_generation_prompt=True)
    if isinstance(proc, PartsProcessor):  # OneVision without torchvision: expand <image> by the model's own rows
        inputs = dict(proc.image_processor(images=img, return_tensors="pt"))
        with torch.no_grad():
            n = sum(len(r) for r in model.get_image_features(**inputs).pooler_output)
        ids = proc.tokenizer(text.replace("<image>", "<image>" * n), return_tensors="pt")
        inputs = {**inputs, **ids}
    else:
        inputs = proc(images=img, text=text, return_tensors="pt")
    n_img = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert n_img > 0
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False, min_new_tokens=4)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 4
    # shapes that make llama.cpp k-quants apply for real, and un-swappable vision MLP
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["text_config"]["hidden_size"] % 256 == 0
    assert cfg["text_config"]["intermediate_size"] % 256 == 0
    assert cfg["vision_config"]["intermediate_size"] != cfg["vision_config"]["hidden_size"]
    # the image token is inside the vocabulary and tokenizes as one special token
    assert model.config.image_token_id < model.config.text_config.vocab_size
    assert proc.tokenizer("<image>", add_special_tokens=False)["input_ids"] == [model.config.image_token_id]


@pytest.mark.parametrize("kw,needle", [({"arch": "blip"}, "--arch"), ({"llm": "gpt2"}, "--llm"),
                                       ({"vision": "vit"}, "--vision")])
def test_tiny_rejects_unknown_choices(tmp_path, kw, needle):
    from instit_edge.models.tiny import TinySpec, build_tiny

    with pytest.raises(InstitError, match=needle):
        build_tiny(tmp_path / "m", TinySpec(**kw))


def test_tiny_refuses_existing_output(tmp_path):
    from instit_edge.models.tiny import build_tiny

    (tmp_path / "m").mkdir()
    with pytest.raises(InstitError, match="--force"):
        build_tiny(tmp_path / "m")
