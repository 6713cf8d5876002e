import json

import numpy as np
import pytest
from conftest import COMBOS
from PIL import Image

from instit_edge.errors import InstitError


@pytest.mark.parametrize("combo", COMBOS)
def test_tiny_reloads_and_generates(tiny_models, combo, rng):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = tiny_models(combo)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    proc = AutoProcessor.from_pretrained(path)
    img = Image.fromarray(rng.integers(0, 255, (int(rng.integers(20, 90)), int(rng.integers(20, 90)), 3), np.uint8))
    text = proc.tokenizer.apply_chat_template([{"role": "user", "content": "<image>\nWhat is [1]?"}],
                                              tokenize=False, add_generation_prompt=True)
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
