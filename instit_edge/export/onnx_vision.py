"""Export the vision tower + projector to ONNX with a dynamic crop axis.

The graph maps ``pixel_values [crops, 3, S, S]`` (already preprocessed) to
``features [crops, tokens, d_text]``: the hidden state of the configured
feature layer, the CLS row dropped for the ``default`` select strategy, then the
multimodal projector. AnyRes packing (unpadding, image_newline) and video
pooling stay in numpy in the runtime, where they are exact and cheap.
"""

from __future__ import annotations

from pathlib import Path

from ..models.vision import vision_module


def export_vision_onnx(model, out: str | Path, image_size: int) -> Path:
    """Export fp32 ONNX; the crop axis is dynamic (exported with a 2-crop example)."""
    import torch

    mod = vision_module(model).float()
    example = torch.randn(2, 3, image_size, image_size)
    out = Path(out)
    crops = torch.export.Dim("crops", min=1, max=64)
    with torch.no_grad():
        prog = torch.onnx.export(
            mod,
            (example,),
            dynamo=True,
            input_names=["pixel_values"],
            output_names=["features"],
            dynamic_shapes={"pixel_values": {0: crops}},
            optimize=True,
            verbose=False,
        )
    prog.save(str(out))
    return out


def convert_fp16(src: str | Path, dst: str | Path) -> Path:
    """fp16 weights and compute, fp32 inputs / outputs (callers keep feeding float32)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    m = onnx.load(str(src))
    m16 = convert_float_to_float16(m, keep_io_types=True)
    onnx.save(m16, str(dst))
    return Path(dst)
