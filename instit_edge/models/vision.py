"""The one torch vision path of a LLaVA / LLaVA-Next model: tower -> feature layer -> projector.

The ONNX export (:mod:`instit_edge.export.onnx_vision`), the torch reference runtime, the trainer's feature
cache and the benchmark all build the module here, so they compute the same features.
"""

from __future__ import annotations

from ..errors import InstitError


def vision_module(model):
    """A torch module computing projected patch features for a LLaVA / LLaVA-Next model."""
    import torch

    cfg = model.config
    inner = model.model
    layer = cfg.vision_feature_layer
    if not isinstance(layer, int):
        raise InstitError(f"vision_feature_layer {layer!r} (several layers) is not supported; one layer index only")
    strategy = cfg.vision_feature_select_strategy

    class VisionProjector(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.tower = inner.vision_tower
            self.projector = inner.multi_modal_projector

        def forward(self, pixel_values):
            out = self.tower(pixel_values, output_hidden_states=True, return_dict=True)
            h = out.hidden_states[layer]
            if strategy == "default":
                h = h[:, 1:]
            return self.projector(h)

    return VisionProjector().eval()
