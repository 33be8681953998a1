"""Temporal and spatial multiscaling (MobileVD §2(b) and Table 3).

The paper says only "adding down-sampling and up-sampling operations along the temporal axis"; its
FLOPs (8.24 → 5.42 TF) fit halving the frame count at every resolution level below the first
(mobilevd_paper.md, Appendix A). Our choices, each made so that an SVD checkpoint maps over unchanged
(no new parameters) and the model starts close to SVD:

* where: right after the first spatial downsampler (end of down block 0) the frames are halved, and
  right after the last spatial upsampler (end of up block n−2) they are restored. The skip produced
  by that downsampler is stored halved (it is consumed at the lower level); level-0 skips keep T.
* ↓ (temporal): the mean of frame pairs (2k, 2k+1). Odd T: the last frame is repeated before
  pooling, so T' = ceil(T/2).
* ↑ (temporal): each frame repeated twice, then cropped back to T frames. Frame count is preserved
  for any T, odd included.
* per-frame inputs of the lower levels: the time embedding and the context are the same for every
  frame of a clip in SVD, so they are simply taken T' times; a pooled frame is "image only" only if
  both of its frames are (min over the pair); the temporal transformers see frame positions
  0, 2, 4, … (the original index of each pair's first frame), which keeps them inside the range SVD
  was trained on and keeps the real time spacing.
* spatial multiscaling (Table 3's alternative): an extra 2×2 average pool at the same place
  (odd sizes are edge-padded first) and nearest-neighbour upsampling folded into the last upsampler,
  which then upsamples straight to the level-0 skip's size.
"""
from __future__ import annotations

import jax.numpy as jnp


def reduced_frames(t: int) -> int:
    return (t + 1) // 2


def halve_frames(x, b: int, t: int):
    """(B·T, ...) → (B·T', ...): mean of frame pairs; an odd T repeats its last frame first."""
    x = x.reshape(b, t, *x.shape[1:])
    if t % 2:
        x = jnp.concatenate([x, x[:, -1:]], axis=1)
    x = x.reshape(b, x.shape[1] // 2, 2, *x.shape[2:]).mean(axis=2)
    return x.reshape(b * x.shape[1], *x.shape[2:])


def double_frames(x, b: int, t: int):
    """(B·T', ...) → (B·T, ...): each frame twice, cropped to T frames."""
    x = x.reshape(b, -1, *x.shape[1:])
    x = jnp.repeat(x, 2, axis=1)[:, :t]
    return x.reshape(b * t, *x.shape[2:])


def halve_indicator(image_only_indicator):
    """(B, T) → (B, T'): a pooled frame is image-only only if both of its frames are."""
    b, t = image_only_indicator.shape
    iio = image_only_indicator
    if t % 2:
        iio = jnp.concatenate([iio, iio[:, -1:]], axis=1)
    return iio.reshape(b, -1, 2).min(axis=2)


def halved_positions(t: int):
    """Frame positions of the pooled frames: the first original index of each pair."""
    return 2 * jnp.arange(reduced_frames(t))


def halve_space(x):
    """(N, H, W, C) → (N, ceil(H/2), ceil(W/2), C): 2×2 mean; odd sizes edge-padded first."""
    n, h, w, c = x.shape
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return x.reshape(n, x.shape[1] // 2, 2, x.shape[2] // 2, 2, c).mean(axis=(2, 4))
