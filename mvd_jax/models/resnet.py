"""Res-blocks, the spatial/temporal blender and the resamplers of the SVD UNet (diffusers' `resnet.py`,
`downsampling.py`, `upsampling.py`), channels-last.

Shapes: spatial layers see frames folded into the batch, (B·T, H, W, C); temporal layers see
(B, T, H, W, C). `image_only_indicator` is (B, T), 1 where a frame is to be treated as a still image.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mvd_jax.models.layers import Conv, GroupNorm, Linear


def temporal_block_scope(gate_index: int) -> str:
    """Name scope of one temporal block's computation (see eval/flops.py: jaxpr_flops(scope=...))."""
    return f"temporal_block_{gate_index}"


class ResnetBlock2D(nnx.Module):
    """GroupNorm → SiLU → conv3×3 → + Linear(SiLU(temb)) → GroupNorm → SiLU → conv3×3, plus (1×1-conv) shortcut.

    Convolution funnels (Table 5's "Funnels (convolutions)", funnels.py): with `funnel_dim` the
    inner width between conv1 and conv2 is reduced to funnel_dim channels. Training form: `funnel_1`
    (C_out → funnel_dim, after conv1 + time embedding) and `funnel_2` (funnel_dim → C_out, before
    conv2), with norm2 over the funneled channels. Merged form: conv1/time_emb_proj produce
    funnel_dim channels and conv2 reads them directly.

    `groups`: the GroupNorms' group count (32 in SVD; SD-1.5's UNet config may set another, norm_num_groups).

    `guidance_channels` (MoViE's multimodal guidance distillation, models/guidance_embedding.py): the block also
    takes a guidance-scale embedding, the way it takes the time embedding — `guidance_emb_proj(SiLU(g))` added
    beside `time_emb_proj(SiLU(temb))` — and `temb` then arrives as [time embedding ‖ g] (temb_channels +
    guidance_channels wide), so the UNet's blocks pass one embedding as before. `guidance_emb_proj` starts at
    zero: a block built from a checkpoint without it computes exactly what the checkpoint did.
    """

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, *, eps: float, rngs: nnx.Rngs,
                 funnel_dim: int | None = None, funnels_merged: bool = False, groups: int = 32,
                 guidance_channels: int | None = None):
        inner = funnel_dim if (funnel_dim and funnels_merged) else out_channels
        mid = funnel_dim or out_channels
        self.norm1 = GroupNorm(in_channels, num_groups=groups, eps=eps, rngs=rngs)
        self.conv1 = Conv(in_channels, inner, (3, 3), rngs=rngs)
        self.time_emb_proj = Linear(temb_channels, inner, rngs=rngs) if temb_channels is not None else None
        self.guidance_emb_proj = (Linear(guidance_channels, inner, zero_init=True, rngs=rngs)
                                  if guidance_channels else None)
        if funnel_dim and not funnels_merged:
            self.funnel_1 = Linear(out_channels, funnel_dim, use_bias=False, axes=("conv_out", None), rngs=rngs)
            self.funnel_2 = Linear(funnel_dim, out_channels, use_bias=False, axes=(None, "conv_in"), rngs=rngs)
        else:
            self.funnel_1 = self.funnel_2 = None
        self.norm2 = GroupNorm(mid, num_groups=groups, eps=eps, rngs=rngs)
        self.conv2 = Conv(inner, out_channels, (3, 3), rngs=rngs)
        self.conv_shortcut = Conv(in_channels, out_channels, (1, 1), rngs=rngs) if in_channels != out_channels else None

    def __call__(self, x, temb=None):
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        if self.guidance_emb_proj is not None:  # temb = [time embedding ‖ guidance embedding]
            width = self.time_emb_proj.kernel.shape[0]
            temb, g = temb[..., :width], temb[..., width:]
            h = h + self.guidance_emb_proj(jax.nn.silu(g))[:, None, None, :]
        if self.time_emb_proj is not None:
            h = h + self.time_emb_proj(jax.nn.silu(temb))[:, None, None, :]
        if self.funnel_1 is not None:
            h = self.funnel_1(h)
        h = jax.nn.silu(self.norm2(h))
        if self.funnel_2 is not None:
            h = self.funnel_2(h)
        h = self.conv2(h)
        shortcut = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        return shortcut + h


class TemporalResnetBlock(nnx.Module):
    """Like ResnetBlock2D but with Conv3d kernels (3, 1, 1): mixes each pixel across neighbouring frames.

    GroupNorm statistics span all frames of a clip (torch GroupNorm on (B, C, T, H, W)).
    `temb_channels=None` (the VAE's decoder) drops the time-embedding projection.
    """

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int | None, *, eps: float,
                 rngs: nnx.Rngs, guidance_channels: int | None = None):
        self.norm1 = GroupNorm(in_channels, eps=eps, rngs=rngs)
        self.conv1 = Conv(in_channels, out_channels, (3, 1, 1), padding=(1, 0, 0), rngs=rngs)
        self.time_emb_proj = Linear(temb_channels, out_channels, rngs=rngs) if temb_channels is not None else None
        # guidance-distilled UNets: as in ResnetBlock2D, temb = [time ‖ guidance embedding], a zero-init projection
        self.guidance_emb_proj = (Linear(guidance_channels, out_channels, zero_init=True, rngs=rngs)
                                  if guidance_channels else None)
        self.norm2 = GroupNorm(out_channels, eps=eps, rngs=rngs)
        self.conv2 = Conv(out_channels, out_channels, (3, 1, 1), padding=(1, 0, 0), rngs=rngs)
        self.conv_shortcut = (Conv(in_channels, out_channels, (1, 1, 1), rngs=rngs)
                              if in_channels != out_channels else None)

    def __call__(self, x, temb=None):
        # x: (B, T, H, W, C); temb: (B, T, Ct) or None
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        if self.guidance_emb_proj is not None:
            width = self.time_emb_proj.kernel.shape[0]
            temb, g = temb[..., :width], temb[..., width:]
            h = h + self.guidance_emb_proj(jax.nn.silu(g))[:, :, None, None, :]
        if self.time_emb_proj is not None:
            h = h + self.time_emb_proj(jax.nn.silu(temb))[:, :, None, None, :]
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        shortcut = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        return shortcut + h


class AlphaBlender(nnx.Module):
    """merge_strategy "learned_with_images": out = α·x_spatial + (1−α)·x_temporal with α = sigmoid(mix_factor),
    and α = 1 (spatial only) on frames flagged by image_only_indicator.

    An optional temporal-block gate z (MobileVD §2(e), models/gates.py) scales the temporal share:
    out = x_s + z·(1−α)·(x_t − x_s), computed as z·blend + (1−z)·x_s so that z = 1 gives the ungated
    blend and z = 0 gives x_s bit for bit (a pruned block is then exactly its spatial half).

    The temporal VAE decoder uses diffusers' other variant: merge_strategy "learned" (the indicator is
    ignored) with `switch_spatial_to_temporal_mix`, i.e. α = 1 − sigmoid(mix_factor).
    """

    def __init__(self, alpha: float, *, rngs: nnx.Rngs, merge_strategy: str = "learned_with_images",
                 switch_spatial_to_temporal_mix: bool = False):
        del rngs
        if merge_strategy not in ("learned", "learned_with_images"):
            raise ValueError(f"unsupported merge_strategy {merge_strategy!r}")
        self.merge_strategy = merge_strategy
        self.switch_spatial_to_temporal_mix = switch_spatial_to_temporal_mix
        self.mix_factor = nnx.Param(jnp.full((1,), alpha, jnp.float32), out_sharding=(None,), eager_sharding=False)

    def alpha(self, image_only_indicator):
        """(B, T) blend weights of the spatial branch."""
        learned = jax.nn.sigmoid(self.mix_factor[...][0])
        if self.merge_strategy == "learned":
            a = jnp.broadcast_to(learned, image_only_indicator.shape)
        else:
            a = jnp.where(image_only_indicator.astype(bool), 1.0, learned)
        return 1.0 - a if self.switch_spatial_to_temporal_mix else a

    def __call__(self, x_spatial, x_temporal, image_only_indicator, gate=None):
        # x_*: (B, T, ...) — the caller arranges frames on axis 1.
        a = self.alpha(image_only_indicator).astype(x_spatial.dtype)
        a = a.reshape(a.shape + (1,) * (x_spatial.ndim - 2))
        out = a * x_spatial + (1.0 - a) * x_temporal
        if gate is not None:
            z = jnp.asarray(gate, x_spatial.dtype)
            out = z * out + (1.0 - z) * x_spatial
        return out


class SpatioTemporalResBlock(nnx.Module):
    """spatial_res_block (per frame) → temporal_res_block (across frames) → time_mixer blend of the two.

    `gate_index` is this block's position in the temporal-gate vector; None means the temporal half
    was pruned (no temporal_res_block / time_mixer parameters; the block is its spatial half).
    """

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int | None, *, eps: float,
                 rngs: nnx.Rngs, temporal_eps: float | None = None, gate_index: int | None = -1,
                 funnel: dict | None = None, mixer: dict | None = None, guidance_channels: int | None = None):
        self.spatial_res_block = ResnetBlock2D(in_channels, out_channels, temb_channels, eps=eps, rngs=rngs,
                                               guidance_channels=guidance_channels, **(funnel or {}))
        self.gate_index = gate_index
        if gate_index is None:
            self.temporal_res_block = self.time_mixer = None
        else:
            self.temporal_res_block = TemporalResnetBlock(
                out_channels, out_channels, temb_channels, eps=temporal_eps if temporal_eps is not None else eps,
                rngs=rngs, guidance_channels=guidance_channels)
            # `mixer`: AlphaBlender options; the VAE decoder passes alpha 0, "learned", switched.
            self.time_mixer = AlphaBlender(**{"alpha": 0.5, **(mixer or {})}, rngs=rngs)

    def __call__(self, x, temb, image_only_indicator, gates=None):
        x = self.spatial_res_block(x, temb)
        if self.temporal_res_block is None:
            return x
        b, t = image_only_indicator.shape
        x_spatial = x.reshape(b, t, *x.shape[1:])
        with jax.named_scope(temporal_block_scope(self.gate_index)):  # lets the FLOP counter attribute it
            x_temporal = self.temporal_res_block(x_spatial, None if temb is None else temb.reshape(b, t, -1))
            gate = None if gates is None else gates[self.gate_index]
            out = self.time_mixer(x_spatial, x_temporal, image_only_indicator, gate)
        return out.reshape(b * t, *out.shape[2:])


class Downsample2D(nnx.Module):
    """3×3 conv with stride 2 and symmetric padding 1 (torch's `padding=1`)."""

    def __init__(self, channels: int, *, rngs: nnx.Rngs):
        self.conv = Conv(channels, channels, (3, 3), strides=(2, 2), padding=(1, 1), rngs=rngs)

    def __call__(self, x):
        return self.conv(x)


def resize_nearest(x, size: tuple[int, int]):
    """torch `F.interpolate(mode="nearest")` on (N, H, W, C): source index = floor(dst · in / out)."""
    n, h, w, c = x.shape
    oh, ow = size
    if (oh, ow) == (2 * h, 2 * w):
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    rows = (jnp.arange(oh) * h) // oh
    cols = (jnp.arange(ow) * w) // ow
    return x[:, rows][:, :, cols]


class Upsample2D(nnx.Module):
    """Nearest-neighbour ×2 (or to `output_size`, the size of the skip it meets), then a 3×3 conv."""

    def __init__(self, channels: int, *, rngs: nnx.Rngs):
        self.conv = Conv(channels, channels, (3, 3), rngs=rngs)

    def __call__(self, x, output_size: tuple[int, int] | None = None):
        size = output_size if output_size is not None else (2 * x.shape[1], 2 * x.shape[2])
        return self.conv(resize_nearest(x, size))
