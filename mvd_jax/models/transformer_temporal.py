"""TransformerSpatioTemporalModel (diffusers' `transformer_temporal.py`), channels-last.

GroupNorm → proj_in → for each layer: spatial BasicTransformerBlock (per frame, over H·W tokens),
then a TemporalBasicTransformerBlock (per position, over T frames) whose input gets a sinusoidal
frame-index embedding `time_pos_embed`, blended with the spatial result by `time_mixer`
→ proj_out → + residual.

MobileVD options: `collapse_cross_attention` (§2(c), see attention.py); `gate_indices` places each
layer's temporal block in the temporal-gate vector, None marking a pruned one (§2(e), see gates.py).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mvd_jax.models.attention import BasicTransformerBlock, TemporalBasicTransformerBlock
from mvd_jax.models.layers import GroupNorm, Linear, TimestepEmbedding, remat_call, timestep_embedding
from mvd_jax.models.resnet import AlphaBlender, temporal_block_scope


class TransformerSpatioTemporalModel(nnx.Module):

    def __init__(self, num_attention_heads: int, attention_head_dim: int, in_channels: int, *, num_layers: int = 1,
                 cross_attention_dim: int | None = None, rngs: nnx.Rngs, collapse_cross_attention: bool = False,
                 gate_indices: list[int | None] | None = None, funnel: dict | None = None):
        inner_dim = num_attention_heads * attention_head_dim
        if inner_dim != in_channels:
            # diffusers adds the (in_channels-wide) frame embedding to inner_dim-wide tokens: they must agree.
            raise ValueError(f"heads·head_dim ({inner_dim}) must equal in_channels ({in_channels})")
        self.in_channels = in_channels
        self.collapse_cross_attention = collapse_cross_attention
        self.gate_indices = list(gate_indices) if gate_indices is not None else [-1] * num_layers
        self.norm = GroupNorm(in_channels, eps=1e-6, rngs=rngs)
        self.proj_in = Linear(in_channels, inner_dim, rngs=rngs)
        self.transformer_blocks = nnx.List([
            BasicTransformerBlock(inner_dim, num_attention_heads, attention_head_dim,
                                  cross_attention_dim=cross_attention_dim, rngs=rngs,
                                  collapse_cross_attention=collapse_cross_attention, funnel=funnel)
            for _ in range(num_layers)
        ])
        self.temporal_transformer_blocks = nnx.List([
            None if g is None else
            TemporalBasicTransformerBlock(inner_dim, inner_dim, num_attention_heads, attention_head_dim,
                                          cross_attention_dim=cross_attention_dim, rngs=rngs,
                                          collapse_cross_attention=collapse_cross_attention, funnel=funnel)
            for g in self.gate_indices
        ])
        # The frame embedding and the mixer are shared by the layers; they go when every layer is pruned.
        has_temporal = any(g is not None for g in self.gate_indices)
        self.time_pos_embed = (TimestepEmbedding(in_channels, 4 * in_channels, out_dim=in_channels, rngs=rngs)
                               if has_temporal else None)
        self.time_mixer = AlphaBlender(0.5, rngs=rngs) if has_temporal else None
        self.proj_out = Linear(inner_dim, in_channels, rngs=rngs)

    def __call__(self, x, context, image_only_indicator, frame_positions=None, gates=None, remat=False):
        """x: (B·T, H, W, C); context: (B·T, S, D); image_only_indicator: (B, T).

        frame_positions (T,): the frame indices fed to `time_pos_embed`; default 0..T-1 (diffusers).
        gates: the temporal-gate vector (see gates.py) or None (all blocks on).
        remat: recompute each spatial and temporal layer in the backward pass (layers.remat_call).
        """
        b, t = image_only_indicator.shape
        bt, h, w, c = x.shape
        # The temporal blocks cross-attend to the FIRST frame's context, broadcast to every position
        # (collapsed: the per-clip context is enough, its attention output is broadcast instead).
        first = context.reshape(b, t, *context.shape[1:])[:, 0]  # (B, S, D)
        if self.collapse_cross_attention:
            time_context = first
        else:
            time_context = jnp.broadcast_to(first[:, None], (b, h * w, *first.shape[1:])).reshape(
                b * h * w, *first.shape[1:])

        residual = x
        x = self.proj_in(self.norm(x).reshape(bt, h * w, c))

        if self.time_pos_embed is not None:
            positions = jnp.arange(t) if frame_positions is None else jnp.asarray(frame_positions)
            frame_index = jnp.tile(positions, b)  # (B·T,): the T frame positions of every clip
            emb = self.time_pos_embed(timestep_embedding(frame_index, self.in_channels).astype(x.dtype))[:, None, :]

        for block, temporal_block, g in zip(self.transformer_blocks, self.temporal_transformer_blocks,
                                            self.gate_indices):
            x = remat_call(block, x, context, remat=remat)
            if temporal_block is None:  # pruned: the spatial result passes on unchanged
                continue
            with jax.named_scope(temporal_block_scope(g)):  # lets the FLOP counter attribute it
                x_mix = remat_call(temporal_block, x + emb, t, time_context, remat=remat)
                gate = None if gates is None else gates[g]
                blended = self.time_mixer(x.reshape(b, t, h * w, -1), x_mix.reshape(b, t, h * w, -1),
                                          image_only_indicator, gate)
            x = blended.reshape(bt, h * w, -1)

        x = self.proj_out(x).reshape(bt, h, w, c)
        return x + residual
