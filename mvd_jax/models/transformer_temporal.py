"""TransformerSpatioTemporalModel (diffusers' `transformer_temporal.py`), channels-last.

GroupNorm → proj_in → for each layer: spatial BasicTransformerBlock (per frame, over H·W tokens),
then a TemporalBasicTransformerBlock (per position, over T frames) whose input gets a sinusoidal
frame-index embedding `time_pos_embed`, blended with the spatial result by `time_mixer`
→ proj_out → + residual.
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from mvd_jax.models.attention import BasicTransformerBlock, TemporalBasicTransformerBlock
from mvd_jax.models.layers import GroupNorm, Linear, TimestepEmbedding, timestep_embedding
from mvd_jax.models.resnet import AlphaBlender


class TransformerSpatioTemporalModel(nnx.Module):

    def __init__(self, num_attention_heads: int, attention_head_dim: int, in_channels: int, *, num_layers: int = 1,
                 cross_attention_dim: int | None = None, rngs: nnx.Rngs):
        inner_dim = num_attention_heads * attention_head_dim
        if inner_dim != in_channels:
            # diffusers adds the (in_channels-wide) frame embedding to inner_dim-wide tokens: they must agree.
            raise ValueError(f"heads·head_dim ({inner_dim}) must equal in_channels ({in_channels})")
        self.in_channels = in_channels
        self.norm = GroupNorm(in_channels, eps=1e-6, rngs=rngs)
        self.proj_in = Linear(in_channels, inner_dim, rngs=rngs)
        self.transformer_blocks = nnx.List([
            BasicTransformerBlock(inner_dim, num_attention_heads, attention_head_dim,
                                  cross_attention_dim=cross_attention_dim, rngs=rngs)
            for _ in range(num_layers)
        ])
        self.temporal_transformer_blocks = nnx.List([
            TemporalBasicTransformerBlock(inner_dim, inner_dim, num_attention_heads, attention_head_dim,
                                          cross_attention_dim=cross_attention_dim, rngs=rngs)
            for _ in range(num_layers)
        ])
        self.time_pos_embed = TimestepEmbedding(in_channels, 4 * in_channels, out_dim=in_channels, rngs=rngs)
        self.time_mixer = AlphaBlender(0.5, rngs=rngs)
        self.proj_out = Linear(inner_dim, in_channels, rngs=rngs)

    def __call__(self, x, context, image_only_indicator):
        # x: (B·T, H, W, C); context: (B·T, S, D); image_only_indicator: (B, T)
        b, t = image_only_indicator.shape
        bt, h, w, c = x.shape
        # The temporal blocks cross-attend to the FIRST frame's context, broadcast to every position.
        first = context.reshape(b, t, *context.shape[1:])[:, 0]  # (B, S, D)
        time_context = jnp.broadcast_to(first[:, None], (b, h * w, *first.shape[1:])).reshape(b * h * w, *first.shape[1:])

        residual = x
        x = self.proj_in(self.norm(x).reshape(bt, h * w, c))

        frame_index = jnp.tile(jnp.arange(t), b)  # (B·T,) = 0..T-1 per clip
        emb = self.time_pos_embed(timestep_embedding(frame_index, self.in_channels).astype(x.dtype))[:, None, :]

        for block, temporal_block in zip(self.transformer_blocks, self.temporal_transformer_blocks):
            x = block(x, context)
            x_mix = temporal_block(x + emb, t, time_context)
            blended = self.time_mixer(x.reshape(b, t, h * w, -1), x_mix.reshape(b, t, h * w, -1), image_only_indicator)
            x = blended.reshape(bt, h * w, -1)

        x = self.proj_out(x).reshape(bt, h, w, c)
        return x + residual
