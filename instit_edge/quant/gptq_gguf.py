"""Put GPTQ weights into GGUF blocks exactly: GPTQ inside llama.cpp.

GPTQ 4-bit, ``desc_act=False``, stores ``qweight`` int32 ``[in/8, out]`` (low
nibble first along the input), ``qzeros`` int32 ``[G, out/8]`` in the v1
convention (true word minus 0x11111111, one int32 subtraction: decode per
word, never per nibble), ``scales`` fp16 ``[G, out]``. The weight is
``scale * (q - zero)``.

- group 32, asymmetric -> GGUF Q4_1 blocks: ``d = scale``, ``m = -scale * zero``
  (exact except the fp16 rounding of m)
- group 32, symmetric (zero = 8) -> Q4_0 blocks: ``d = scale``, value ``d * (q - 8)`` (bit-exact)
- group 64 / 128 -> several 32-blocks sharing d, m.

GGUF 4-bit blocks pair weight j with j + 16 in one byte (low / high nibble);
GPTQ packs neighbours, so nibbles are unpacked and re-packed.
"""

from __future__ import annotations

import numpy as np

from ..errors import InstitError


def unpack_qweight(qweight: np.ndarray) -> np.ndarray:
    """int32 ``[in/8, out]`` -> uint8 codes ``[out, in]``."""
    w = qweight.astype(np.uint32)
    shifts = (np.arange(8, dtype=np.uint32) * 4)[None, :, None]
    q = (w[:, None, :] >> shifts) & 0xF  # [in/8, 8, out]
    return q.reshape(-1, w.shape[1]).T.astype(np.uint8)


def unpack_qzeros(qzeros: np.ndarray, v1: bool = True) -> np.ndarray:
    """int32 ``[G, out/8]`` -> zero points ``[G, out]`` (v1 words get +0x11111111 as one uint32 addition)."""
    w = qzeros.astype(np.int64) & 0xFFFFFFFF
    if v1:
        w = (w + 0x11111111) & 0xFFFFFFFF
    shifts = (np.arange(8, dtype=np.int64) * 4)[None, None, :]
    z = (w[:, :, None] >> shifts) & 0xF  # [G, out/8, 8]
    return z.reshape(w.shape[0], -1).astype(np.uint8)


def dequantize_gptq(qweight, qzeros, scales, group_size: int, v1: bool = True) -> np.ndarray:
    """The float weight ``[out, in]`` a GPTQ layer represents, computed from its tensors in float64."""
    q = unpack_qweight(qweight).astype(np.float64)  # [out, in]
    z = unpack_qzeros(qzeros, v1).astype(np.float64)  # [G, out]
    s = scales.astype(np.float64)  # [G, out]
    g = np.arange(q.shape[1]) // group_size
    return (s[g].T * (q - z[g].T)).astype(np.float64)


def gptq_to_blocks(qweight, qzeros, scales, group_size: int, sym: bool, v1: bool = True) -> tuple[np.ndarray, str]:
    """Raw GGUF block bytes ``[out, n_blocks * bytes]`` and the GGML type name (Q4_0 or Q4_1)."""
    if group_size % 32 != 0:
        raise InstitError(f"GPTQ group size {group_size} cannot map to 32-weight GGUF blocks (use 32, 64 or 128)")
    q = unpack_qweight(qweight)  # [out, in]
    z = unpack_qzeros(qzeros, v1).T  # [out, G]
    s = scales.astype(np.float32).T  # [out, G]
    out_f, in_f = q.shape
    if in_f % 32:
        raise InstitError(f"input size {in_f} is not a multiple of 32")
    nb = in_f // 32
    rep = group_size // 32
    d = np.repeat(s, rep, axis=1)[:, :nb]  # [out, nb]
    zz = np.repeat(z, rep, axis=1)[:, :nb].astype(np.float32)
    qb = q.reshape(out_f, nb, 32)
    packed = (qb[:, :, :16] | (qb[:, :, 16:] << 4)).astype(np.uint8)  # [out, nb, 16]
    if sym:
        if not np.all(zz == 8):
            raise InstitError("symmetric GPTQ checkpoint has zero points other than 8; export it as asymmetric")
        head = d.astype(np.float16).view(np.uint8).reshape(out_f, nb, 2)
        return np.concatenate([head, packed], axis=2).reshape(out_f, nb * 18), "Q4_0"
    m = (-d * zz).astype(np.float16)
    head = np.concatenate([d.astype(np.float16).view(np.uint8).reshape(out_f, nb, 2),
                           m.view(np.uint8).reshape(out_f, nb, 2)], axis=2)
    return np.concatenate([head, packed], axis=2).reshape(out_f, nb * 20), "Q4_1"
