"""The UNet's forward in three parts, for Clockwork Diffusion (models/clockwork.py; mobilevd_paper.md §6.2):

    ε = ε_H^out ∘ ε_L ∘ ε_H^in

* `forward_high_in` (ε_H^in): the conditioning, conv_in and the down blocks of the levels above the cut →
  a `HighResState` holding r_in, the input of the first low-resolution level (the output of down block
  L−1, its downsampler included), and the high-resolution skips, which only the high-resolution up
  blocks read;
* `forward_low` (ε_L): the down blocks from level L, the mid block and the up blocks back to level L →
  r_out, the input of the last high-resolution up block (the output of up block n−1−L, its upsampler
  included);
* `forward_high_out` (ε_H^out): the remaining up blocks, conv_norm_out and conv_out → the UNet's output.

L = `cut_level` ∈ 1..n−1 for a UNet of n resolution levels: L = 1, the default and the paper's choice, cuts
below the top level (r_in is then SVD's 320-channel map at half the latent size, r_out the 640-channel map at
the latent size); every larger L moves the cut one level down. The parts run exactly the operations of
`SpatioTemporalUNet.__call__`, in its order; that forward itself is left as it is, and
tests/test_clockwork.py holds the composition equal to it. r_in and r_out are 5-D, (B, T_L, h, w, C), with
the frame count T_L of the level they meet at.

MobileVD's switches: pruned and gated temporal blocks and funnels live inside the blocks and need nothing
here (the gate vector travels in the state). The multiscale hand-over between level 0 and level 1
(multiscale.py) belongs to the low part when L = 1 — r_in and r_out then keep the top level's T frames and
r_in the plain 2× downsampled map, as in SVD — and to the high part when L ≥ 2.
"""
from __future__ import annotations

import dataclasses
import functools

import jax

from mvd_jax.errors import UserError
from mvd_jax.models import multiscale as ms
from mvd_jax.models.unet import clip_inputs, frame_inputs, leave_top_level
from mvd_jax.models.unet_config import UNetConfig


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["r_in", "skips", "emb", "context", "image_only_indicator", "temporal_gates"],
                   meta_fields=["cut_level"])
@dataclasses.dataclass(frozen=True)
class HighResState:
    """What ε_H^in hands to the other two parts (a pytree: it can cross a jit boundary or a loop carry)."""
    r_in: jax.Array  # (B, T_L, h_L, w_L, block_out_channels[L−1])
    skips: tuple  # the high-resolution skips, (B·T, h, w, C) each, in the order the down blocks made them
    emb: jax.Array  # (B, Ct): the time embedding of the noise level plus the added time ids, per clip
    context: jax.Array  # (B, S, D): the image embedding, in the activations' dtype
    image_only_indicator: jax.Array  # (B, T)
    temporal_gates: jax.Array | None
    cut_level: int


def check_cut_level(config: UNetConfig, cut_level) -> int:
    """`cut_level` if it names a cut this UNet has (1..levels−1), a UserError otherwise."""
    n = len(config.block_out_channels)
    if isinstance(cut_level, bool) or not isinstance(cut_level, int) or not 1 <= cut_level <= n - 1:
        raise UserError(f"cut_level must be an integer in 1..{n - 1} (the UNet has {n} resolution levels; the cut "
                        f"sits below level cut_level − 1, 1 = below the top level), got {cut_level!r}")
    return cut_level


def split_channels(config: UNetConfig, cut_level: int) -> tuple[int, int]:
    """(channels of r_in, channels of r_out) at the cut."""
    check_cut_level(config, cut_level)
    return config.block_out_channels[cut_level - 1], config.block_out_channels[cut_level]


def _multiscale(c: UNetConfig) -> bool:
    return c.temporal_multiscale or c.spatial_multiscale


def _to_5d(x, b: int):
    return x.reshape(b, -1, *x.shape[1:])


def _to_4d(x):
    return x.reshape(-1, *x.shape[2:])


def forward_high_in(unet, sample, timestep, encoder_hidden_states, added_time_ids, image_only_indicator=None,
                    temporal_gates=None, *, cut_level: int = 1) -> HighResState:
    """ε_H^in: the UNet's inputs (as `SpatioTemporalUNet.__call__` takes them) → HighResState."""
    c = unet.config
    check_cut_level(c, cut_level)
    b, t, h, w, cin = sample.shape
    emb, context, iio = clip_inputs(c, unet.time_embedding, unet.add_embedding, sample, timestep,
                                    encoder_hidden_states, added_time_ids, image_only_indicator)
    top, low = frame_inputs(c, emb, context, iio)

    x = unet.conv_in(sample.reshape(b * t, h, w, cin))
    skips = [x]
    for i in range(cut_level):
        f = top if i == 0 else low
        x, block_skips = unet._block(unet.down_blocks[i], x, f["temb"], f["image_only_indicator"], f["context"],
                                     f["frame_positions"], temporal_gates)
        if i == cut_level - 1:
            # The last skip is the downsampler's output, i.e. r_in: the low part's first skip, not ours.
            skips.extend(block_skips[:-1])
            break
        if i == 0 and _multiscale(c):  # L ≥ 2: the hand-over happens up here (as in __call__)
            x = leave_top_level(c, x, b, t)
            block_skips[-1] = x
        skips.extend(block_skips)
    return HighResState(_to_5d(x, b), tuple(skips), emb, context, iio, temporal_gates, cut_level)


def forward_low(unet, state: HighResState):
    """ε_L: HighResState → r_out (B, T_L, h_{L−1}, w_{L−1}, block_out_channels[L])."""
    c = unet.config
    cut, n = state.cut_level, len(unet.down_blocks)
    b, t = state.image_only_indicator.shape
    _, low = frame_inputs(c, state.emb, state.context, state.image_only_indicator)
    gates = state.temporal_gates

    x = _to_4d(state.r_in)
    if cut == 1 and _multiscale(c):  # leave the top level: fewer frames and/or a smaller map below it
        x = leave_top_level(c, x, b, t)
    skips = [x]  # r_in (after the hand-over) is the skip of the last low-resolution up block
    for i in range(cut, n):
        x, block_skips = unet._block(unet.down_blocks[i], x, low["temb"], low["image_only_indicator"],
                                     low["context"], low["frame_positions"], gates)
        skips.extend(block_skips)

    x = unet._block(unet.mid_block, x, low["temb"], low["image_only_indicator"], low["context"],
                    low["frame_positions"], gates)

    for i in range(n - cut):  # up blocks 0 … n−1−L; never the top level's (i = n−1)
        block = unet.up_blocks[i]
        k = len(block.resnets)
        block_skips, skips = skips[-k:], skips[:-k]
        # the last one upsamples to the size of the skip it meets next: the high part's last skip
        upsample_size = (skips[-1] if skips else state.skips[-1]).shape[1:3]
        x = unet._block(block, x, block_skips, low["temb"], low["image_only_indicator"], low["context"],
                        low["frame_positions"], gates, upsample_size=upsample_size)
        if i == n - 2 and c.temporal_multiscale:  # L = 1: back to the top level's frame count
            x = ms.double_frames(x, b, t)
    return _to_5d(x, b)


def forward_high_out(unet, state: HighResState, r_out):
    """ε_H^out: HighResState and r_out (computed by ε_L, or an adaptor's estimate) → the UNet's output."""
    c = unet.config
    cut, n = state.cut_level, len(unet.up_blocks)
    b, t = state.image_only_indicator.shape
    top, low = frame_inputs(c, state.emb, state.context, state.image_only_indicator)
    gates = state.temporal_gates

    x = _to_4d(r_out)
    skips = list(state.skips)
    for i in range(n - cut, n):
        block = unet.up_blocks[i]
        f = top if i == n - 1 else low
        k = len(block.resnets)
        block_skips, skips = skips[-k:], skips[:-k]
        upsample_size = skips[-1].shape[1:3] if skips else None
        x = unet._block(block, x, block_skips, f["temb"], f["image_only_indicator"], f["context"],
                        f["frame_positions"], gates, upsample_size=upsample_size)
        if i == n - 2 and c.temporal_multiscale:  # L ≥ 2: back to the top level's frame count
            x = ms.double_frames(x, b, t)

    x = unet.conv_out(jax.nn.silu(unet.conv_norm_out(x)))
    h, w = state.skips[0].shape[1:3]  # conv_in's output: the latent size
    return x.reshape(b, t, h, w, -1)


def split_forward(unet, sample, timestep, encoder_hidden_states, added_time_ids, image_only_indicator=None,
                  temporal_gates=None, *, cut_level: int = 1):
    """(the UNet's output, r_in, r_out) by the three parts in a row: what the full forward computes, plus the
    features a Clockwork adaptor learns from (a distillation phase's teacher pass)."""
    state = forward_high_in(unet, sample, timestep, encoder_hidden_states, added_time_ids, image_only_indicator,
                            temporal_gates, cut_level=cut_level)
    r_out = forward_low(unet, state)
    return forward_high_out(unet, state, r_out), state.r_in, r_out
