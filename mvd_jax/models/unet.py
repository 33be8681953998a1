"""SpatioTemporalUNet: Stable Video Diffusion's UNet (diffusers' `UNetSpatioTemporalConditionModel`) in Flax NNX.

The module tree and attribute names are diffusers' (conv_in, time_embedding, add_embedding,
down_blocks[i].resnets[j].spatial_res_block.conv1, ..., mid_block, up_blocks, conv_norm_out, conv_out),
so a checkpoint maps over by renaming leaves and transposing layouts (`mvd_jax.convert`).

Differences from the diffusers call, all deliberate:
  * channels-last: sample is (B, T, H, W, C_in) and the output (B, T, H, W, C_out);
  * `image_only_indicator` (B, T) can be passed (diffusers' top-level forward always uses zeros;
    its blocks accept it). 1 marks frames treated as still images: their temporal branches are
    blended out (α = 1).
`timestep` is what diffusers' pipeline passes: the EDM c_noise = 0.25·ln σ, shape (B,) or scalar.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mvd_jax.models.layers import Conv, GroupNorm, TimestepEmbedding, timestep_embedding
from mvd_jax.models.unet_blocks import (
    CrossAttnDownBlockSpatioTemporal,
    CrossAttnUpBlockSpatioTemporal,
    DownBlockSpatioTemporal,
    UNetMidBlockSpatioTemporal,
    UpBlockSpatioTemporal,
)
from mvd_jax.models.unet_config import UNetConfig


class SpatioTemporalUNet(nnx.Module):

    def __init__(self, config: UNetConfig, *, rngs: nnx.Rngs):
        self.config = config
        c = config
        boc = c.block_out_channels
        temb = c.time_embed_dim

        self.conv_in = Conv(c.in_channels, boc[0], (3, 3), rngs=rngs)
        self.time_embedding = TimestepEmbedding(boc[0], temb, rngs=rngs)
        self.add_embedding = TimestepEmbedding(c.projection_class_embeddings_input_dim, temb, rngs=rngs)

        down = []
        out_ch = boc[0]
        for i, block_type in enumerate(c.down_block_types):
            in_ch, out_ch = out_ch, boc[i]
            last = i == len(boc) - 1
            if block_type == "CrossAttnDownBlockSpatioTemporal":
                down.append(CrossAttnDownBlockSpatioTemporal(
                    in_ch, out_ch, temb, num_layers=c.layers[i], transformer_layers_per_block=c.transformer_layers[i],
                    num_attention_heads=c.heads[i], cross_attention_dim=c.context_dims[i], add_downsample=not last,
                    rngs=rngs))
            else:
                down.append(DownBlockSpatioTemporal(in_ch, out_ch, temb, num_layers=c.layers[i],
                                                    add_downsample=not last, rngs=rngs))
        self.down_blocks = nnx.List(down)

        self.mid_block = UNetMidBlockSpatioTemporal(
            boc[-1], temb, transformer_layers_per_block=c.transformer_layers[-1], num_attention_heads=c.heads[-1],
            cross_attention_dim=c.context_dims[-1], rngs=rngs)

        up = []
        rev_ch, rev_layers = boc[::-1], c.layers[::-1]
        rev_heads, rev_ctx, rev_tl = c.heads[::-1], c.context_dims[::-1], c.transformer_layers[::-1]
        out_ch = rev_ch[0]
        for i, block_type in enumerate(c.up_block_types):
            prev_ch, out_ch = out_ch, rev_ch[i]
            in_ch = rev_ch[min(i + 1, len(boc) - 1)]
            last = i == len(boc) - 1
            if block_type == "CrossAttnUpBlockSpatioTemporal":
                up.append(CrossAttnUpBlockSpatioTemporal(
                    in_ch, prev_ch, out_ch, temb, num_layers=rev_layers[i] + 1, transformer_layers_per_block=rev_tl[i],
                    num_attention_heads=rev_heads[i], cross_attention_dim=rev_ctx[i], add_upsample=not last,
                    rngs=rngs))
            else:
                up.append(UpBlockSpatioTemporal(in_ch, prev_ch, out_ch, temb, num_layers=rev_layers[i] + 1,
                                                add_upsample=not last, rngs=rngs))
        self.up_blocks = nnx.List(up)

        self.conv_norm_out = GroupNorm(boc[0], eps=1e-5, rngs=rngs)
        self.conv_out = Conv(boc[0], c.out_channels, (3, 3), rngs=rngs)

    def __call__(self, sample, timestep, encoder_hidden_states, added_time_ids, image_only_indicator=None):
        b, t, h, w, cin = sample.shape
        c = self.config
        if cin != c.in_channels:
            raise ValueError(f"sample has {cin} channels, the UNet expects {c.in_channels} (channels-last input)")
        if added_time_ids.shape != (b, c.num_added_time_ids):
            raise ValueError(f"added_time_ids must be ({b}, {c.num_added_time_ids}), got {added_time_ids.shape}")
        dtype = sample.dtype

        # Time embedding of the noise level plus the embedding of the added time ids (fps, motion, aug).
        timesteps = jnp.broadcast_to(jnp.asarray(timestep, jnp.float32).reshape(-1), (b,))
        emb = self.time_embedding(timestep_embedding(timesteps, c.block_out_channels[0]).astype(dtype))
        time_embeds = timestep_embedding(added_time_ids.reshape(-1), c.addition_time_embed_dim).reshape(b, -1)
        emb = emb + self.add_embedding(time_embeds.astype(dtype))

        # Fold frames into the batch: per-frame copies of the embedding and the context.
        x = sample.reshape(b * t, h, w, cin)
        emb = jnp.repeat(emb, t, axis=0)
        context = jnp.repeat(encoder_hidden_states.astype(dtype), t, axis=0)
        if image_only_indicator is None:
            image_only_indicator = jnp.zeros((b, t), dtype)

        x = self.conv_in(x)
        skips = [x]
        for block in self.down_blocks:
            x, block_skips = block(x, emb, image_only_indicator, context)
            skips.extend(block_skips)

        x = self.mid_block(x, emb, image_only_indicator, context)

        for block in self.up_blocks:
            n = len(block.resnets)
            block_skips, skips = skips[-n:], skips[:-n]
            # Upsample to the spatial size of the next skip (×2 unless a size was odd on the way down).
            upsample_size = skips[-1].shape[1:3] if skips else None
            x = block(x, block_skips, emb, image_only_indicator, context, upsample_size=upsample_size)

        x = self.conv_out(jax.nn.silu(self.conv_norm_out(x)))
        return x.reshape(b, t, h, w, -1)
