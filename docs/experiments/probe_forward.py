"""The forward pass the probes share: each bench sample as train_vlm sees it, with attentions and hidden states."""

from pathlib import Path

import torch

from instit_edge.models.loading import load_model
from instit_edge.train.default_model import IMAGE, PATCH, FrozenVisionRows
from instit_edge.train.encode import build_batch, encode_text
from instit_edge.train.lookup_heads import InstanceRows


def load_for_probe(model_dir, world):
    """``model, tokenizer, rows, instances``: the model with eager attention (so attentions come back), its frozen
    tower's rows, and where the world's instances are."""
    model, proc = load_model(model_dir)
    model.model.language_model.config._attn_implementation = "eager"
    return model, proc.tokenizer, FrozenVisionRows(model, proc), InstanceRows(Path(world), IMAGE // PATCH)


def probed(model, rows, samples, tokenizer, positions, template: str = "vicuna_v1"):
    """Yield ``(sample, positions, out, shift)`` for every sample whose ``positions(sample, input_ids)`` is not
    None; ``shift``: how far the image rows moved the tokens after the ``<image>`` placeholder."""
    model.eval()
    with torch.no_grad():
        for s in samples:
            e = encode_text(s, tokenizer, template)
            p = positions(s, e.input_ids)
            if p is None:
                continue
            embeds, mask, _ = build_batch(model, rows, [s], [e])
            out = model(inputs_embeds=embeds, attention_mask=mask, output_attentions=True, output_hidden_states=True)
            yield s, p, out, int(mask[0].sum()) - len(e.input_ids)
