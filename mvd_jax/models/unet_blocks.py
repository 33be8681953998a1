"""The UNet's down, mid and up blocks (diffusers' `unet_3d_blocks.py`, spatio-temporal classes).

Every block works on (B·T, H, W, C) with the per-frame time embedding (B·T, Ct), the per-frame
context (B·T, S, D), image_only_indicator (B, T), the frame positions seen by the temporal
transformers (T,) and the temporal-gate vector (or None). The GroupNorm eps of each block type is
diffusers' (1e-6 in CrossAttnDown and the up blocks, 1e-5 in DownBlock and mid), not
generative-models' uniform 1e-5: we match diffusers' numbers.

`BlockOptions` carries what the MobileVD options change at construction: the collapse flag and, per
temporal block, its gate index (None when pruned), looked up by the block's module path.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import nnx

from mvd_jax.models.layers import remat_call
from mvd_jax.models.resnet import Downsample2D, SpatioTemporalResBlock, Upsample2D
from mvd_jax.models.transformer_temporal import TransformerSpatioTemporalModel


def transformer_depths(transformer_layers_per_block, num_layers: int) -> list[int]:
    """Transformer layers of each of a block's attentions (diffusers: an int, or one value per layer)."""
    if isinstance(transformer_layers_per_block, int):
        return [transformer_layers_per_block] * num_layers
    return list(transformer_layers_per_block)


@dataclasses.dataclass(frozen=True)
class BlockOptions:
    plan: object  # gates.TemporalBlockPlan
    collapse_cross_attention: bool = False
    attention_funnel_factor: float | None = None  # fun-factor r on self-attention (funnels.py)
    conv_funnel_factor: float | None = None  # fun-factor r inside the spatial res-blocks (funnels.py)
    funnels_merged: bool = False
    low_rank_factor: float | None = None  # truncated-SVD self-attention projections (low_rank.py)
    guidance_channels: int | None = None  # guidance-distilled UNet: every res-block reads [temb ‖ guidance]

    def resnet(self, in_ch, out_ch, temb, eps, path, rngs):
        funnel = None
        if self.conv_funnel_factor is not None:
            funnel = dict(funnel_dim=funnel_width(out_ch, self.conv_funnel_factor, multiple=32),
                          funnels_merged=self.funnels_merged)
        return SpatioTemporalResBlock(in_ch, out_ch, temb, eps=eps, rngs=rngs, gate_index=self.plan.gate_index(path),
                                      funnel=funnel, guidance_channels=self.guidance_channels)

    def transformer(self, heads, channels, depth, context_dim, path, rngs):
        gates = [self.plan.gate_index(f"{path}.temporal_transformer_blocks.{l}") for l in range(depth)]
        funnel = None  # options of the self-attention (attn1) of every transformer layer
        if self.attention_funnel_factor is not None:
            funnel = dict(funnel_dim=funnel_width(channels // heads, self.attention_funnel_factor),
                          funnels_merged=self.funnels_merged)
        if self.low_rank_factor is not None:
            funnel = dict(funnel or {}, low_rank_factor=self.low_rank_factor)
        return TransformerSpatioTemporalModel(heads, channels // heads, channels, num_layers=depth,
                                              cross_attention_dim=context_dim, rngs=rngs, gate_indices=gates,
                                              collapse_cross_attention=self.collapse_cross_attention, funnel=funnel)


def funnel_width(width: int, factor: float, multiple: int = 1) -> int:
    """The funneled width round(r·width), rounded to a multiple of `multiple` (GroupNorm's 32 groups), ≥ it."""
    return max(multiple, int(round(factor * width / multiple)) * multiple)


class DownBlockSpatioTemporal(nnx.Module):
    has_cross_attention = False

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, *, num_layers: int,
                 add_downsample: bool, options: BlockOptions, path: str, rngs: nnx.Rngs):
        self.resnets = nnx.List([
            options.resnet(in_channels if i == 0 else out_channels, out_channels, temb_channels, 1e-5,
                           f"{path}.resnets.{i}", rngs)
            for i in range(num_layers)
        ])
        self.downsamplers = nnx.List([Downsample2D(out_channels, rngs=rngs)]) if add_downsample else None

    def __call__(self, x, temb, image_only_indicator, context=None, frame_positions=None, gates=None, remat=False):
        skips = []
        for resnet in self.resnets:
            x = remat_call(resnet, x, temb, image_only_indicator, gates, remat=remat)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class CrossAttnDownBlockSpatioTemporal(nnx.Module):
    has_cross_attention = True

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, *, num_layers: int,
                 transformer_layers_per_block, num_attention_heads: int, cross_attention_dim: int,
                 add_downsample: bool, options: BlockOptions, path: str, rngs: nnx.Rngs):
        depths = transformer_depths(transformer_layers_per_block, num_layers)
        self.resnets = nnx.List([
            options.resnet(in_channels if i == 0 else out_channels, out_channels, temb_channels, 1e-6,
                           f"{path}.resnets.{i}", rngs)
            for i in range(num_layers)
        ])
        self.attentions = nnx.List([
            options.transformer(num_attention_heads, out_channels, depths[i], cross_attention_dim,
                                f"{path}.attentions.{i}", rngs)
            for i in range(num_layers)
        ])
        self.downsamplers = nnx.List([Downsample2D(out_channels, rngs=rngs)]) if add_downsample else None

    def __call__(self, x, temb, image_only_indicator, context=None, frame_positions=None, gates=None, remat=False):
        skips = []
        for resnet, attn in zip(self.resnets, self.attentions):
            x = remat_call(resnet, x, temb, image_only_indicator, gates, remat=remat)
            x = attn(x, context, image_only_indicator, frame_positions, gates, remat=remat)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class UNetMidBlockSpatioTemporal(nnx.Module):
    """resnets[0] → (attentions[i] → resnets[i+1]) for each layer."""

    def __init__(self, in_channels: int, temb_channels: int, *, transformer_layers_per_block,
                 num_attention_heads: int, cross_attention_dim: int, options: BlockOptions, path: str,
                 rngs: nnx.Rngs, num_layers: int = 1):
        depths = transformer_depths(transformer_layers_per_block, num_layers)
        self.resnets = nnx.List([
            options.resnet(in_channels, in_channels, temb_channels, 1e-5, f"{path}.resnets.{i}", rngs)
            for i in range(num_layers + 1)
        ])
        self.attentions = nnx.List([
            options.transformer(num_attention_heads, in_channels, depths[i], cross_attention_dim,
                                f"{path}.attentions.{i}", rngs)
            for i in range(num_layers)
        ])

    def __call__(self, x, temb, image_only_indicator, context, frame_positions=None, gates=None, remat=False):
        x = remat_call(self.resnets[0], x, temb, image_only_indicator, gates, remat=remat)
        for attn, resnet in zip(self.attentions, self.resnets[1:]):
            x = attn(x, context, image_only_indicator, frame_positions, gates, remat=remat)
            x = remat_call(resnet, x, temb, image_only_indicator, gates, remat=remat)
        return x


def _up_resnets(in_channels, prev_output_channel, out_channels, temb_channels, num_layers, options, path, rngs):
    # Resnet i takes the running tensor (prev block's width for i == 0) concatenated with a skip: the
    # last resnet's skip comes from the level below (in_channels wide), the others' from this level.
    return nnx.List([
        options.resnet(
            (prev_output_channel if i == 0 else out_channels) + (in_channels if i == num_layers - 1 else out_channels),
            out_channels, temb_channels, 1e-6, f"{path}.resnets.{i}", rngs)
        for i in range(num_layers)
    ])


class UpBlockSpatioTemporal(nnx.Module):
    has_cross_attention = False

    def __init__(self, in_channels: int, prev_output_channel: int, out_channels: int, temb_channels: int, *,
                 num_layers: int, add_upsample: bool, options: BlockOptions, path: str, rngs: nnx.Rngs):
        self.resnets = _up_resnets(in_channels, prev_output_channel, out_channels, temb_channels, num_layers,
                                   options, path, rngs)
        self.upsamplers = nnx.List([Upsample2D(out_channels, rngs=rngs)]) if add_upsample else None

    def __call__(self, x, skips, temb, image_only_indicator, context=None, frame_positions=None, gates=None,
                 upsample_size=None, remat=False):
        for resnet in self.resnets:
            x = jnp.concatenate([x, skips.pop()], axis=-1)
            x = remat_call(resnet, x, temb, image_only_indicator, gates, remat=remat)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x


class CrossAttnUpBlockSpatioTemporal(nnx.Module):
    has_cross_attention = True

    def __init__(self, in_channels: int, prev_output_channel: int, out_channels: int, temb_channels: int, *,
                 num_layers: int, transformer_layers_per_block, num_attention_heads: int, cross_attention_dim: int,
                 add_upsample: bool, options: BlockOptions, path: str, rngs: nnx.Rngs):
        depths = transformer_depths(transformer_layers_per_block, num_layers)
        self.resnets = _up_resnets(in_channels, prev_output_channel, out_channels, temb_channels, num_layers,
                                   options, path, rngs)
        self.attentions = nnx.List([
            options.transformer(num_attention_heads, out_channels, depths[i], cross_attention_dim,
                                f"{path}.attentions.{i}", rngs)
            for i in range(num_layers)
        ])
        self.upsamplers = nnx.List([Upsample2D(out_channels, rngs=rngs)]) if add_upsample else None

    def __call__(self, x, skips, temb, image_only_indicator, context=None, frame_positions=None, gates=None,
                 upsample_size=None, remat=False):
        for resnet, attn in zip(self.resnets, self.attentions):
            x = jnp.concatenate([x, skips.pop()], axis=-1)
            x = remat_call(resnet, x, temb, image_only_indicator, gates, remat=remat)
            x = attn(x, context, image_only_indicator, frame_positions, gates, remat=remat)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x
