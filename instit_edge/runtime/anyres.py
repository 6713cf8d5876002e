"""Image preprocessing and feature packing with exact Hugging Face semantics, in numpy.

Mirrors the PIL backends of ``LlavaNextImageProcessor`` / ``CLIPImageProcessor``
(bicubic PIL resize on uint8, centre crop, rescale in float64 -> float32,
normalise) and ``LlavaNextModel.pack_image_features`` (AnyRes grid,
unpadding, ``image_newline``), without torch. Parity with the HF processor
and model is tested in ``tests/test_anyres.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..bundle import POOL_MODES, UNPAD_ROUNDINGS
from ..errors import InstitError


# --------------------------------------------------------------------------- images
def to_rgb(im: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of ``im``, whatever its mode.

    - 16-bit and 32-bit integer greyscale (``I;16``, ``I;16B``, ``I``; a
      16-bit PNG): scaled to 8 bits (``v * 255 / 65535``, rounded); PIL's own
      ``convert`` clips at 255, which turns such an image all white. An ``I``
      image whose values all fit in 0-255 is taken as 8-bit.
    - ``F`` (float): values in 0-1 are scaled by 255, others clipped to 0-255.
    - palette, CMYK, YCbCr, LAB, HSV, 1-bit, L / LA / RGBA / RGBa / PA: PIL's
      ``convert("RGB")``, exactly what Hugging Face image processors do
      (``convert_rgb``): the alpha channel is dropped, not composited, so a
      transparent pixel shows its stored colour.
    """
    mode = im.mode
    if mode.startswith("I;16") or mode == "I" or mode == "F":
        arr = np.asarray(im)
        if mode == "F":
            arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
            if arr.size and arr.min() >= 0 and arr.max() <= 1.0:
                arr = arr * 255.0
            grey = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        else:
            arr = arr.astype(np.int64)
            if mode == "I" and arr.size and arr.min() >= 0 and arr.max() <= 255:
                grey = arr.astype(np.uint8)
            else:
                grey = np.rint(np.clip(arr, 0, 65535) * (255 / 65535)).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "RGB":
        return im.copy()
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # PIL warns when a palette image with transparency goes straight to RGB
    return im.convert("RGB")


def load_image(path_or_image) -> Image.Image:
    """Open an image as 8-bit RGB, with a one-line error for missing or unreadable files.

    Files: the EXIF orientation is applied first (``ImageOps.exif_transpose``,
    as ``transformers.image_utils.load_image`` does), then :func:`to_rgb`
    converts any mode (16-bit greyscale scaled to 8 bits, alpha dropped like
    HF's ``convert_rgb``). Arrays: HxWx3 or HxWx4 uint8 (the 4th channel is
    dropped).
    """
    from PIL import ImageOps

    if isinstance(path_or_image, Image.Image):
        return to_rgb(path_or_image)
    if isinstance(path_or_image, np.ndarray):
        arr = path_or_image
        if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.dtype != np.uint8:
            raise InstitError(f"image array must be HxWx3 uint8 RGB, got shape {arr.shape} dtype {arr.dtype}")
        return Image.fromarray(np.ascontiguousarray(arr[..., :3]))
    p = Path(path_or_image)
    if not p.is_file():
        raise InstitError(f"image not found: {p}")
    try:
        with Image.open(p) as im:
            im.load()
            try:
                im = ImageOps.exif_transpose(im)
            except Exception:  # a broken EXIF block: keep the pixels as stored
                pass
            return to_rgb(im)
    except InstitError:
        raise
    except Image.DecompressionBombError:
        raise InstitError(f"cannot read image {p}: it is too large (over PIL's decompression-bomb limit)") from None
    except PermissionError:
        raise InstitError(f"cannot read image {p}: permission denied") from None
    except Exception as e:  # PIL raises many types for corrupt files
        raise InstitError(f"cannot read image {p}: {type(e).__name__} (is it a valid PNG/JPEG?)") from None


# --------------------------------------------------------------------------- geometry
def select_best_resolution(original_size: tuple[int, int], possible: list) -> tuple[int, int]:
    """(height, width) pinpoint that keeps the most pixels and wastes the least (HF rule)."""
    oh, ow = original_size
    best, max_eff, min_waste = None, 0, float("inf")
    for h, w in possible:
        scale = min(w / ow, h / oh)
        dw, dh = int(ow * scale), int(oh * scale)
        eff = min(dw * dh, ow * oh)
        waste = w * h - eff
        if eff > max_eff or (eff == max_eff and waste < min_waste):
            best, max_eff, min_waste = (h, w), eff, waste
    return best


def patch_output_size(orig_hw: tuple[int, int], target_hw: tuple[int, int]) -> tuple[int, int]:
    oh, ow = orig_hw
    th, tw = target_hw
    sw, sh = tw / ow, th / oh
    if sw < sh:
        return min(math.ceil(oh * sw), th), tw
    return th, min(math.ceil(ow * sh), tw)


def shortest_edge_size(hw: tuple[int, int], size: int) -> tuple[int, int]:
    h, w = hw
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    return (new_long, new_short) if w <= h else (new_short, new_long)


# --------------------------------------------------------------------------- pixels
@dataclass
class Preprocess:
    """Preprocessing parameters, as stored in ``bundle.json``."""

    image_size: int
    image_mean: list
    image_std: list
    pinpoints: list | None = None  # None for LLaVA-1.5 (no AnyRes)
    resample: int = 3  # PIL bicubic

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(d["image_size"], d["image_mean"], d["image_std"], d.get("pinpoints"), d.get("resample", 3))

    def _resize(self, arr: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
        if arr.shape[:2] == tuple(hw):
            return arr
        return np.asarray(Image.fromarray(arr).resize((hw[1], hw[0]), resample=self.resample))

    def _center_crop(self, arr: np.ndarray, size: int) -> np.ndarray:
        h, w = arr.shape[:2]
        if h < size or w < size:  # HF pads with zeros around then crops
            ph, pw = max(size, h), max(size, w)
            canvas = np.zeros((ph, pw, arr.shape[2]), arr.dtype)
            top, left = (ph - h) // 2, (pw - w) // 2
            canvas[top:top + h, left:left + w] = arr
            arr, h, w = canvas, ph, pw
        top, left = (h - size) // 2, (w - size) // 2
        return arr[top:top + size, left:left + size]

    def _normalize(self, arr: np.ndarray) -> np.ndarray:
        x = (arr.astype(np.float64) * (1 / 255)).astype(np.float32)
        mean = np.asarray(self.image_mean, dtype=np.float32)
        std = np.asarray(self.image_std, dtype=np.float32)
        x = (x - mean) / std
        return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)

    def _crop_pipeline(self, arr: np.ndarray) -> np.ndarray:
        s = self.image_size
        arr = self._resize(arr, shortest_edge_size(arr.shape[:2], s))
        arr = self._center_crop(arr, s)
        return self._normalize(arr)

    def crops(self, image: Image.Image, anyres: bool = True) -> tuple[np.ndarray, tuple[int, int]]:
        """Pixel values ``[crops, 3, S, S]`` and the original (height, width)."""
        arr = np.asarray(image.convert("RGB"))
        hw = arr.shape[:2]
        if not (anyres and self.pinpoints):
            return self._crop_pipeline(arr)[None], hw
        best = select_best_resolution(hw, self.pinpoints)
        resized = self._resize(arr, patch_output_size(hw, best))
        rh, rw = resized.shape[:2]
        th, tw = best
        top, left = (th - rh) // 2, (tw - rw) // 2
        padded = np.zeros((th, tw, 3), np.uint8)
        padded[top:top + rh, left:left + rw] = resized
        s = self.image_size
        tiles = [padded[i:i + s, j:j + s] for i in range(0, th, s) for j in range(0, tw, s)]
        base = self._resize(arr, (s, s))
        return np.stack([self._crop_pipeline(t) for t in [base] + tiles]), hw


# --------------------------------------------------------------------------- packing
def unpad_grid(feature: np.ndarray, original_hw: tuple[int, int], rounding: str = "round7") -> np.ndarray:
    """Remove rows / columns of ``feature [D, H, W]`` that came from padding.

    ``rounding``: ``"round7"`` is HF's ``unpad_image`` (``int(round(x, 7))``),
    ``"int"`` the original LLaVA-NeXT code (``int(x)``); they differ when the
    scaled size lands just below an integer.
    """
    if rounding not in UNPAD_ROUNDINGS:
        raise InstitError(f"unknown unpad rounding {rounding!r} ({', '.join(UNPAD_ROUNDINGS)})")
    fix = (lambda x: int(round(x, 7))) if rounding == "round7" else int
    oh, ow = original_hw
    _, ch, cw = feature.shape
    if ow / oh > cw / ch:
        new_h = fix(oh * (cw / ow))
        pad = (ch - new_h) // 2
        return feature[:, pad:ch - pad, :]
    new_w = fix(ow * (ch / oh))
    pad = (cw - new_w) // 2
    return feature[:, :, pad:cw - pad]


def resize_bilinear(feature: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """``feature [D, H, W]`` resized like ``torch.nn.functional.interpolate(mode="bilinear",
    align_corners=False)`` without antialiasing (half-pixel centres, edges clamped)."""
    d, h, w = feature.shape
    oh, ow = out_hw

    def taps(n_in: int, n_out: int):
        x = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
        x = np.maximum(x, 0.0)
        i0 = np.minimum(np.floor(x).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, (x - i0).astype(np.float32)

    y0, y1, fy = taps(h, oh)
    x0, x1, fx = taps(w, ow)
    f = feature.astype(np.float32, copy=False)
    top = f[:, y0][:, :, x0] * (1 - fx) + f[:, y0][:, :, x1] * fx
    bottom = f[:, y1][:, :, x0] * (1 - fx) + f[:, y1][:, :, x1] * fx
    return (top * (1 - fy)[:, None] + bottom * fy[:, None]).astype(feature.dtype)


def anyres_max_shape(h: int, w: int, max_tiles: int, side: int) -> tuple[int, int] | None:
    """LLaVA-NeXT ``anyres_max_N``: the merged, unpadded grid is shrunk (bilinear) to
    ``(int(h // t), int(w // t))`` when ``t = sqrt(h * w / (N * side^2)) > 1.1``; None when it is kept."""
    t = math.sqrt(h * w / (max_tiles * side * side))
    return (int(h // t), int(w // t)) if t > 1.1 else None


def pack_anyres(
    features: np.ndarray,
    original_hw: tuple[int, int],
    pinpoints: list,
    image_size: int,
    patch_size: int,
    newline: np.ndarray | None,
    rounding: str = "round7",
    anyres_max: int | None = None,
) -> np.ndarray:
    """``features [crops, tokens, D]`` -> image rows ``[n, D]`` in LLaVA-Next order.

    HF semantics by default; ``rounding="int"`` and ``anyres_max=N`` give the
    original LLaVA-NeXT code's (checkpoints converted from the original layout
    record both in ``bundle.json``).
    """
    if features.shape[0] == 1:
        rows = features[0]
        if newline is not None:
            rows = np.concatenate([rows, newline[None]], 0)
        return rows
    side = image_size // patch_size
    base, tiles = features[0], features[1:]
    bh, bw = select_best_resolution(original_hw, pinpoints)
    gh, gw = bh // image_size, bw // image_size
    d = features.shape[-1]
    grid = tiles.reshape(gh, gw, side, side, d).transpose(4, 0, 2, 1, 3).reshape(d, gh * side, gw * side)
    grid = unpad_grid(grid, original_hw, rounding)
    if anyres_max:
        shape = anyres_max_shape(grid.shape[1], grid.shape[2], anyres_max, side)
        if shape is not None:
            grid = resize_bilinear(grid, shape)
    if newline is not None:
        nl = np.broadcast_to(newline[:, None, None], (d, grid.shape[1], 1))
        grid = np.concatenate([grid, nl], axis=2)
    rows = grid.reshape(d, -1).T
    return np.concatenate([base, rows], 0)


def pool_video_frame(features: np.ndarray, stride: int, mode: str = "average", ceil: bool = True) -> np.ndarray:
    """2D pooling of one frame's ``[tokens, D]`` patch grid.

    ``average`` / ``max``: blocks of ``stride x stride``; with ``ceil`` (our
    training's ``ceil_mode=True``) ``ceil(side / stride)`` per side, the last
    block partial when the side is odd; without it ``side // stride``, the
    remainder dropped (LLaVA-NeXT's ``get_2dPool``: ``avg_pool2d`` /
    ``max_pool2d`` defaults). ``bilinear``: ``get_2dPool`` in bilinear mode
    (Inst-IT's evaluation setting), a resize to ``ceil(side / stride)``.
    """
    if stride <= 1:
        return features
    n, d = features.shape
    side = int(round(n ** 0.5))
    if side * side != n:
        raise InstitError(f"cannot pool {n} tokens: not a square patch grid")
    if mode not in POOL_MODES:
        raise InstitError(f"unknown video pooling mode {mode!r} ({', '.join(POOL_MODES)})")
    g = features.reshape(side, side, d)
    out_side = math.ceil(side / stride) if ceil or mode == "bilinear" else side // stride
    if mode == "bilinear":
        return resize_bilinear(g.transpose(2, 0, 1), (out_side, out_side)).transpose(1, 2, 0).reshape(-1, d)
    out = np.empty((out_side, out_side, d), features.dtype)
    for i in range(out_side):
        for j in range(out_side):
            blk = g[i * stride:(i + 1) * stride, j * stride:(j + 1) * stride]
            out[i, j] = blk.mean((0, 1)) if mode == "average" else blk.max((0, 1))
    return out.reshape(-1, d)
