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


def video_rows(model, crops, video: dict):
    """A video's rows in torch, ``crops`` ``[frames, 3, S, S]``: the family's own video path where transformers
    has one (LLaVA-OneVision's ``get_video_features``), otherwise :func:`vision_module` per frame and the
    bundle's video settings (``video``: the ``preprocess.video`` block of :func:`~.families.preprocess_for`):
    pooling ``average`` / ``max`` (``pool_ceil`` rounding) or ``bilinear`` to ceil, and the image newline at
    ``newline_position`` (``no_token``, ``one_token``, ``frame``, ``grid``). The torch reference and the trainer
    both call it; gradients flow when the caller has them enabled."""
    import math

    import torch
    import torch.nn.functional as F

    from .families import family_of

    if family_of(model.config).hf_video:
        out = model.get_video_features(pixel_values_videos=crops[None])
        rows = out.pooler_output if hasattr(out, "pooler_output") else out
        return rows.reshape(-1, rows.shape[-1])
    feats = vision_module(model)(crops)
    n, t, d = feats.shape
    side = int(round(t ** 0.5))
    g = feats.reshape(n, side, side, d).permute(0, 3, 1, 2)
    s = int(video.get("pool_stride", 1))
    if s > 1 and video.get("pool_mode", "average") == "bilinear":
        g = F.interpolate(g, size=[math.ceil(side / s)] * 2, mode="bilinear")
    elif s > 1:
        pool = F.avg_pool2d if video.get("pool_mode", "average") == "average" else F.max_pool2d
        g = pool(g, s, s, ceil_mode=bool(video.get("pool_ceil", True)))
    g = g.permute(0, 2, 3, 1)  # [frames, rows, cols, d]
    nl = getattr(model.model, "image_newline", None)
    where = video.get("newline_position", "no_token") if nl is not None else "no_token"
    if where == "grid":
        g = torch.cat([g, nl.to(g.dtype).expand(g.shape[0], g.shape[1], 1, d)], 2)
    rows = g.reshape(n, -1, d)
    if where == "frame":
        rows = torch.cat([rows, nl.to(rows.dtype).expand(n, 1, d)], 1)
    rows = rows.reshape(-1, d)
    return torch.cat([rows, nl.to(rows.dtype)[None]], 0) if where == "one_token" else rows


def label_frames(model, tokenizer, rows, numbers: list[int], text_offsets: list | None = None):
    """A video's rows (:func:`video_rows`, frames in order) with the embedded tokens of ``<t>`` before each
    frame's rows, ``numbers`` the frames' 1-based places in the video: what a model whose config says
    ``video_frame_labels`` reads (the runtime's :meth:`~instit_edge.runtime.session.EdgeSession.media_segments`
    in torch). Each frame has the same rows; a newline after the whole video belongs to the last frame.
    ``text_offsets``, when given, gets the labels' token offsets in the block (text positions, for logits)."""
    import torch

    from ..prompting import frame_label

    n, total = len(numbers), len(rows)
    per = total // n
    if total - per * n not in (0, 1) or per == 0:
        raise InstitError(f"video rows {total} do not split into {n} frames")
    sizes = [per] * (n - 1) + [total - per * (n - 1)]
    emb = model.get_input_embeddings()
    parts, at = [], 0
    for number, size in zip(numbers, sizes):
        ids = tokenizer(frame_label(number), add_special_tokens=False)["input_ids"]
        if text_offsets is not None:
            text_offsets.extend(range(at + sum(len(p) for p in parts[::2]), at + sum(len(p) for p in parts[::2])
                                      + len(ids)))
        parts += [emb(torch.tensor(ids, device=emb.weight.device)).to(rows.dtype), rows[at:at + size]]
        at += size
    return torch.cat(parts, 0)
