"""A multimodal importance matrix for llama.cpp quantization.

llama.cpp's own imatrix tool sees text only, while instance questions depend
on the image rows. Here the HF model runs on calibration prompts with the
image features spliced in (``inputs_embeds``), and every linear layer of the
LLM accumulates the per-input-channel sum of squared activations over all
positions, image rows included. The result maps GGUF tensor names to the mean
squared activation per input channel (what ``params.imatrix`` takes) and can
be written in llama.cpp's legacy ``imatrix.dat`` format for upstream tools.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from ..errors import InstitError

_LINEAR_MAP = {
    "self_attn.q_proj": "attn_q.weight",
    "self_attn.k_proj": "attn_k.weight",
    "self_attn.v_proj": "attn_v.weight",
    "self_attn.o_proj": "attn_output.weight",
    "mlp.gate_proj": "ffn_gate.weight",
    "mlp.up_proj": "ffn_up.weight",
    "mlp.down_proj": "ffn_down.weight",
}


def gguf_name(hf_name: str) -> str | None:
    """HF module name of an LLM linear layer -> GGUF tensor name (None for non-LLM modules)."""
    if hf_name.endswith("lm_head"):
        return "output.weight"
    if ".layers." not in hf_name or "vision" in hf_name:
        return None
    rest = hf_name.split(".layers.", 1)[1]
    if "." not in rest:
        return None
    idx, sub = rest.split(".", 1)
    g = _LINEAR_MAP.get(sub)
    return f"blk.{idx}.{g}" if g else None


def collect_imatrix(torch_session, prompts, progress=None) -> tuple[dict[str, np.ndarray], int]:
    """Run ``prompts`` through the HF model; return ({gguf name: mean x^2 per input channel}, n_prompts)."""
    import torch

    model = torch_session.model
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []
    for name, mod in model.named_modules():
        g = gguf_name(name)
        if g is None or not isinstance(mod, torch.nn.Linear):
            continue

        def hook(_m, inputs, _out, g=g):
            x = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1])
            sums[g] = sums.get(g, 0) + (x * x).sum(0)
            counts[g] = counts.get(g, 0) + x.shape[0]

        hooks.append(mod.register_forward_hook(hook))
    if not hooks:
        raise InstitError("no LLM linear layers found for the importance matrix (unsupported model?)")
    try:
        with torch.no_grad():
            for p in prompts:
                _ids, embeds, _ = torch_session._inputs(p.question, **p.media())
                model(inputs_embeds=embeds)
                if progress:
                    progress(1)
    finally:
        for h in hooks:
            h.remove()
    if not sums:
        raise InstitError("the calibration prompts produced no activations")
    return {k: (v / counts[k]).cpu().numpy().astype(np.float32) for k, v in sums.items()}, len(prompts)


def write_imatrix_dat(path: str | Path, imatrix: dict[str, np.ndarray], ncall: int, dataset: str = "instit-edge") -> None:
    """llama.cpp legacy imatrix format: entries of (name, ncall, values = mean * ncall), then last_call, dataset."""
    from ..atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<i", len(imatrix)))
        for name, values in sorted(imatrix.items()):
            b = name.encode()
            f.write(struct.pack("<i", len(b)))
            f.write(b)
            f.write(struct.pack("<ii", ncall, len(values)))
            f.write((np.asarray(values, np.float32) * ncall).astype("<f4").tobytes())
        f.write(struct.pack("<i", ncall))
        d = dataset.encode()
        f.write(struct.pack("<i", len(d)))
        f.write(d)


def read_imatrix_dat(path: str | Path) -> tuple[dict[str, np.ndarray], int]:
    """Read the legacy format back (values divided by ncall, as llama-quantize does)."""
    data = Path(path).read_bytes()
    off = 0

    def take(fmt):
        nonlocal off
        v = struct.unpack_from(fmt, data, off)
        off += struct.calcsize(fmt)
        return v

    (n,) = take("<i")
    out, ncall = {}, 0
    for _ in range(n):
        (ln,) = take("<i")
        name = data[off:off + ln].decode()
        off += ln
        ncall, nval = take("<ii")
        vals = np.frombuffer(data, "<f4", nval, off).copy()
        off += 4 * nval
        out[name] = vals / max(ncall, 1)
    return out, ncall
