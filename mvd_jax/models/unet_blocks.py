"""The UNet's down, mid and up blocks (diffusers' `unet_3d_blocks.py`, spatio-temporal classes).

Every block works on (B·T, H, W, C) with the per-frame time embedding (B·T, Ct), the per-frame
context (B·T, S, D) and image_only_indicator (B, T). The GroupNorm eps of each block type is
diffusers' (1e-6 in CrossAttnDown, 1e-5 elsewhere), not generative-models' uniform 1e-5: we match
diffusers' numbers.
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from mvd_jax.models.resnet import Downsample2D, SpatioTemporalResBlock, Upsample2D
from mvd_jax.models.transformer_temporal import TransformerSpatioTemporalModel


def _layers_list(transformer_layers_per_block, num_layers):
    if isinstance(transformer_layers_per_block, int):
        return [transformer_layers_per_block] * num_layers
    return list(transformer_layers_per_block)


class DownBlockSpatioTemporal(nnx.Module):
    has_cross_attention = False

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, *, num_layers: int,
                 add_downsample: bool, rngs: nnx.Rngs):
        self.resnets = nnx.List([
            SpatioTemporalResBlock(in_channels if i == 0 else out_channels, out_channels, temb_channels, eps=1e-5,
                                   rngs=rngs)
            for i in range(num_layers)
        ])
        self.downsamplers = nnx.List([Downsample2D(out_channels, rngs=rngs)]) if add_downsample else None

    def __call__(self, x, temb, image_only_indicator, context=None):
        skips = []
        for resnet in self.resnets:
            x = resnet(x, temb, image_only_indicator)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class CrossAttnDownBlockSpatioTemporal(nnx.Module):
    has_cross_attention = True

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, *, num_layers: int,
                 transformer_layers_per_block, num_attention_heads: int, cross_attention_dim: int,
                 add_downsample: bool, rngs: nnx.Rngs):
        depths = _layers_list(transformer_layers_per_block, num_layers)
        self.resnets = nnx.List([
            SpatioTemporalResBlock(in_channels if i == 0 else out_channels, out_channels, temb_channels, eps=1e-6,
                                   rngs=rngs)
            for i in range(num_layers)
        ])
        self.attentions = nnx.List([
            TransformerSpatioTemporalModel(num_attention_heads, out_channels // num_attention_heads, out_channels,
                                           num_layers=depths[i], cross_attention_dim=cross_attention_dim, rngs=rngs)
            for i in range(num_layers)
        ])
        self.downsamplers = nnx.List([Downsample2D(out_channels, rngs=rngs)]) if add_downsample else None

    def __call__(self, x, temb, image_only_indicator, context=None):
        skips = []
        for resnet, attn in zip(self.resnets, self.attentions):
            x = resnet(x, temb, image_only_indicator)
            x = attn(x, context, image_only_indicator)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class UNetMidBlockSpatioTemporal(nnx.Module):
    """resnets[0] → (attentions[i] → resnets[i+1]) for each layer."""

    def __init__(self, in_channels: int, temb_channels: int, *, transformer_layers_per_block,
                 num_attention_heads: int, cross_attention_dim: int, rngs: nnx.Rngs, num_layers: int = 1):
        depths = _layers_list(transformer_layers_per_block, num_layers)
        self.resnets = nnx.List([
            SpatioTemporalResBlock(in_channels, in_channels, temb_channels, eps=1e-5, rngs=rngs)
            for _ in range(num_layers + 1)
        ])
        self.attentions = nnx.List([
            TransformerSpatioTemporalModel(num_attention_heads, in_channels // num_attention_heads, in_channels,
                                           num_layers=depths[i], cross_attention_dim=cross_attention_dim, rngs=rngs)
            for i in range(num_layers)
        ])

    def __call__(self, x, temb, image_only_indicator, context):
        x = self.resnets[0](x, temb, image_only_indicator)
        for attn, resnet in zip(self.attentions, self.resnets[1:]):
            x = attn(x, context, image_only_indicator)
            x = resnet(x, temb, image_only_indicator)
        return x


def _up_resnets(in_channels, prev_output_channel, out_channels, temb_channels, num_layers, rngs):
    # Resnet i takes the running tensor (prev block's width for i == 0) concatenated with a skip: the
    # last resnet's skip comes from the level below (in_channels wide), the others' from this level.
    return nnx.List([
        SpatioTemporalResBlock(
            (prev_output_channel if i == 0 else out_channels) + (in_channels if i == num_layers - 1 else out_channels),
            out_channels, temb_channels, eps=1e-6, rngs=rngs)
        for i in range(num_layers)
    ])


class UpBlockSpatioTemporal(nnx.Module):
    has_cross_attention = False

    def __init__(self, in_channels: int, prev_output_channel: int, out_channels: int, temb_channels: int, *,
                 num_layers: int, add_upsample: bool, rngs: nnx.Rngs):
        self.resnets = _up_resnets(in_channels, prev_output_channel, out_channels, temb_channels, num_layers, rngs)
        self.upsamplers = nnx.List([Upsample2D(out_channels, rngs=rngs)]) if add_upsample else None

    def __call__(self, x, skips, temb, image_only_indicator, context=None, upsample_size=None):
        for resnet in self.resnets:
            x = jnp.concatenate([x, skips.pop()], axis=-1)
            x = resnet(x, temb, image_only_indicator)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x


class CrossAttnUpBlockSpatioTemporal(nnx.Module):
    has_cross_attention = True

    def __init__(self, in_channels: int, prev_output_channel: int, out_channels: int, temb_channels: int, *,
                 num_layers: int, transformer_layers_per_block, num_attention_heads: int, cross_attention_dim: int,
                 add_upsample: bool, rngs: nnx.Rngs):
        depths = _layers_list(transformer_layers_per_block, num_layers)
        self.resnets = _up_resnets(in_channels, prev_output_channel, out_channels, temb_channels, num_layers, rngs)
        self.attentions = nnx.List([
            TransformerSpatioTemporalModel(num_attention_heads, out_channels // num_attention_heads, out_channels,
                                           num_layers=depths[i], cross_attention_dim=cross_attention_dim, rngs=rngs)
            for i in range(num_layers)
        ])
        self.upsamplers = nnx.List([Upsample2D(out_channels, rngs=rngs)]) if add_upsample else None

    def __call__(self, x, skips, temb, image_only_indicator, context=None, upsample_size=None):
        for resnet, attn in zip(self.resnets, self.attentions):
            x = jnp.concatenate([x, skips.pop()], axis=-1)
            x = resnet(x, temb, image_only_indicator)
            x = attn(x, context, image_only_indicator)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x

