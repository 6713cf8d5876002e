"""LLaVA-NeXT packing pieces against torch: bilinear resize / video pooling (``F.interpolate``) and the video
newline positions (a transcription of ``add_token_per_grid`` / ``add_token_per_frame`` in llava_arch.py).
Random inputs come from the shared ``rng`` fixture (seed printed, ``INSTIT_SEED`` replays)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch


@pytest.mark.parametrize("hw,out", [((12, 12), (5, 5)), ((27, 27), (14, 14)), ((7, 9), (3, 4)), ((5, 6), (8, 9))])
def test_resize_bilinear_matches_torch(rng, hw, out):
    from instit_edge.runtime.anyres import resize_bilinear

    x = rng.normal(size=(6, *hw)).astype(np.float32)
    ref = torch.nn.functional.interpolate(torch.from_numpy(x)[None], list(out), mode="bilinear")[0].numpy()
    np.testing.assert_allclose(resize_bilinear(x, out), ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("side", [8, 27])
def test_bilinear_video_pooling_is_get_2dpool(rng, side):
    """get_2dPool(mode="bilinear"): interpolate to ceil(side / 2) per side (27 -> 14, Inst-IT's 196 rows)."""
    import math

    from instit_edge.runtime.anyres import pool_video_frame

    x = rng.normal(size=(side * side, 5)).astype(np.float32)
    g = torch.from_numpy(x).view(1, side, side, 5).permute(0, 3, 1, 2)
    s = math.ceil(side / 2)
    ref = torch.nn.functional.interpolate(g, size=[s, s], mode="bilinear").permute(0, 2, 3, 1).reshape(-1, 5).numpy()
    got = pool_video_frame(x, 2, "bilinear")
    assert got.shape == (s * s, 5)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)


def _ref_video(frames: torch.Tensor, newline: torch.Tensor, where: str) -> torch.Tensor:
    """llava_arch.py: frames [F, side*side, D] after pooling; newline per its mm_newline_position."""
    f, n, d = frames.shape
    side = int(math.sqrt(n))
    if where == "grid":  # add_token_per_grid
        x = frames.view(f, side, side, d).permute(3, 0, 1, 2).flatten(1, 2)  # D, F*side, side
        x = torch.cat([x, newline[:, None, None].expand(d, x.shape[1], 1)], dim=-1)
        return x.flatten(1, 2).transpose(0, 1)
    if where == "frame":  # add_token_per_frame
        x = torch.cat([frames, newline[None, None].expand(f, 1, d)], dim=1)
        return x.flatten(0, 1)
    x = frames.flatten(0, 1)
    return torch.cat([x, newline[None]]) if where == "one_token" else x


@pytest.mark.parametrize("where", ["no_token", "one_token", "frame", "grid"])
def test_video_newline_positions_match_llava_arch(rng, where):
    from instit_edge.runtime.session import EdgeSession

    frames = rng.normal(size=(3, 16, 4)).astype(np.float32)
    newline = rng.normal(size=(4,)).astype(np.float32)
    sess = EdgeSession.__new__(EdgeSession)  # only the packing state, no model files
    sess.newline = newline
    sess.bundle = type("B", (), {"preprocess": {"video": {"newline_position": where}}})()
    got = sess._video_newlines(list(frames))
    ref = _ref_video(torch.from_numpy(frames), torch.from_numpy(newline), where).numpy()
    assert got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("mode", ["average", "max"])
def test_floor_pooling_is_get_2dpool(rng, mode):
    """Original-layout bundles (pool_ceil false): avg_pool2d / max_pool2d with torch's defaults, 27 -> 13."""
    from instit_edge.runtime.anyres import pool_video_frame

    x = rng.normal(size=(27 * 27, 3)).astype(np.float32)
    g = torch.from_numpy(x).view(1, 27, 27, 3).permute(0, 3, 1, 2)
    pool = torch.nn.functional.avg_pool2d if mode == "average" else torch.nn.functional.max_pool2d
    ref = pool(g, 2).permute(0, 2, 3, 1).reshape(-1, 3).numpy()
    got = pool_video_frame(x, 2, mode, ceil=False)
    assert got.shape == (13 * 13, 3)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)
    assert pool_video_frame(x, 2, mode).shape == (14 * 14, 3)  # our own checkpoints: ceil_mode=True
