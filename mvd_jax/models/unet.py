"""SpatioTemporalUNet: Stable Video Diffusion's UNet (diffusers' `UNetSpatioTemporalConditionModel`) in Flax NNX,
with MobileVD's architecture options as config switches.

The module tree and attribute names are diffusers' (conv_in, time_embedding, add_embedding,
down_blocks[i].resnets[j].spatial_res_block.conv1, ..., mid_block, up_blocks, conv_norm_out, conv_out),
so a checkpoint maps over by renaming leaves and transposing layouts (`mvd_jax.convert`).

Differences from the diffusers call, all deliberate:
  * channels-last: sample is (B, T, H, W, C_in) and the output (B, T, H, W, C_out);
  * `image_only_indicator` (B, T) can be passed (diffusers' top-level forward always uses zeros;
    its blocks accept it). 1 marks frames treated as still images: their temporal branches are
    blended out (α = 1);
  * `temporal_gates` (num temporal blocks,) scales each temporal branch (gates.py); None = all on.
`timestep` is what diffusers' pipeline passes: the EDM c_noise = 0.25·ln σ, shape (B,) or scalar.

MobileVD options (UNetConfig): collapse_cross_attention (attention.py), temporal_multiscale and
spatial_multiscale (multiscale.py), temporal_gating and pruned_temporal_blocks (gates.py).

Clockwork Diffusion runs this forward in three parts, cut below a resolution level (models/unet_split.py,
which mirrors the steps below; tests/test_clockwork.py holds the two equal). The phone export runs it
as a chain of graphs, each a run of consecutive steps (mvd_jax/export/unet_chain.py).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from mvd_jax.models import multiscale as ms
from mvd_jax.models.gates import TemporalBlockPlan, TemporalGates
from mvd_jax.models.guidance_embedding import GuidanceEmbedding
from mvd_jax.models.layers import Conv, GroupNorm, TimestepEmbedding, timestep_embedding
from mvd_jax.models.unet_blocks import (
    CrossAttnDownBlockSpatioTemporal,
    CrossAttnUpBlockSpatioTemporal,
    DownBlockSpatioTemporal,
    UNetMidBlockSpatioTemporal,
    BlockOptions,
    UpBlockSpatioTemporal,
)
from mvd_jax.models.unet_config import UNetConfig


class SpatioTemporalUNet(nnx.Module):

    def __init__(self, config: UNetConfig, *, rngs: nnx.Rngs):
        self.config = config
        c = config
        boc = c.block_out_channels
        temb = c.time_embed_dim

        plan = TemporalBlockPlan(config)
        opts = BlockOptions(plan, collapse_cross_attention=c.collapse_cross_attention,
                            attention_funnel_factor=c.funnel_factor if c.funnel_target == "attention" else None,
                            conv_funnel_factor=c.funnel_factor if c.funnel_target == "conv" else None,
                            funnels_merged=c.funnels_merged, low_rank_factor=c.low_rank_factor,
                            guidance_channels=temb if c.guidance_scales else None)

        self.conv_in = Conv(c.in_channels, boc[0], (3, 3), rngs=rngs)
        self.time_embedding = TimestepEmbedding(boc[0], temb, rngs=rngs)
        self.add_embedding = TimestepEmbedding(c.projection_class_embeddings_input_dim, temb, rngs=rngs)
        # a guidance-distilled UNet reads its guidance scales (models/guidance_embedding.py)
        self.guidance_embedding = (GuidanceEmbedding(c.guidance_scales, boc[0], temb, rngs=rngs)
                                   if c.guidance_scales else None)

        down = []
        out_ch = boc[0]
        for i, block_type in enumerate(c.down_block_types):
            in_ch, out_ch = out_ch, boc[i]
            last = i == len(boc) - 1
            if block_type == "CrossAttnDownBlockSpatioTemporal":
                down.append(CrossAttnDownBlockSpatioTemporal(
                    in_ch, out_ch, temb, num_layers=c.layers[i], transformer_layers_per_block=c.transformer_layers[i],
                    num_attention_heads=c.heads[i], cross_attention_dim=c.context_dims[i], add_downsample=not last,
                    options=opts, path=f"down_blocks.{i}", rngs=rngs))
            else:
                down.append(DownBlockSpatioTemporal(in_ch, out_ch, temb, num_layers=c.layers[i],
                                                    add_downsample=not last, options=opts, path=f"down_blocks.{i}",
                                                    rngs=rngs))
        self.down_blocks = nnx.List(down)

        self.mid_block = UNetMidBlockSpatioTemporal(
            boc[-1], temb, transformer_layers_per_block=c.transformer_layers[-1], num_attention_heads=c.heads[-1],
            cross_attention_dim=c.context_dims[-1], options=opts, path="mid_block", rngs=rngs)

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
                    options=opts, path=f"up_blocks.{i}", rngs=rngs))
            else:
                up.append(UpBlockSpatioTemporal(in_ch, prev_ch, out_ch, temb, num_layers=rev_layers[i] + 1,
                                                add_upsample=not last, options=opts, path=f"up_blocks.{i}",
                                                rngs=rngs))
        self.up_blocks = nnx.List(up)

        self.conv_norm_out = GroupNorm(boc[0], eps=1e-5, rngs=rngs)
        self.conv_out = Conv(boc[0], c.out_channels, (3, 3), rngs=rngs)
        self.temporal_gates = TemporalGates(len(plan.names), c.temporal_gating) if c.temporal_gating else None
        # Training option (train.remat): recompute each layer's activations in the backward pass instead
        # of storing them (each res-block and transformer layer, layers.remat_call) — same numbers, less
        # memory, more FLOPs.
        self.remat = False

    def _block(self, block, *args, **static):
        return block(*args, remat=self.remat, **static)

    def __call__(self, sample, timestep, encoder_hidden_states, added_time_ids, image_only_indicator=None,
                 temporal_gates=None, guidance=None):
        """guidance (B, guidance_scales) or (guidance_scales,): the scales a guidance-distilled UNet reads (its
        config's guidance_scales > 0; SVD's frame-wise guidance: [the largest scale of the ramp])."""
        state = self.begin(sample, timestep, encoder_hidden_states, added_time_ids, image_only_indicator,
                           temporal_gates, guidance)
        for name in self.step_names:
            state = self.step(name, state)
        return self.finish(state)

    # The forward as a sequence — begin, one step per block (`step_names`), finish — so that it can also run
    # in parts (the phone export's chain of graphs, mvd_jax/export/unet_chain.py) exactly as it runs whole.
    @property
    def step_names(self) -> tuple[str, ...]:
        """The blocks in the order the forward runs them: down_blocks.0 …, mid_block, up_blocks.0 …"""
        return (*(f"down_blocks.{i}" for i in range(len(self.down_blocks))), "mid_block",
                *(f"up_blocks.{i}" for i in range(len(self.up_blocks))))

    def begin(self, sample, timestep, encoder_hidden_states, added_time_ids, image_only_indicator=None,
              temporal_gates=None, guidance=None) -> "ForwardState":
        """The conditioning and conv_in: the state before the first block."""
        b, t, h, w, cin = sample.shape
        emb, context, iio = clip_inputs(self.config, self.time_embedding, self.add_embedding, sample, timestep,
                                        encoder_hidden_states, added_time_ids, image_only_indicator,
                                        self.guidance_embedding, guidance)
        x = self.conv_in(sample.reshape(b * t, h, w, cin))
        return ForwardState(x, (x,), emb, context, iio, temporal_gates)

    def step(self, name: str, s: "ForwardState") -> "ForwardState":
        """One block (a name of `step_names`): down blocks push their skips, up blocks pop theirs."""
        c = self.config
        b, t = s.image_only_indicator.shape
        top, low = frame_inputs(c, s.emb, s.context, s.image_only_indicator)
        kind, _, index = name.partition(".")
        x, skips = s.x, s.skips
        if kind == "down_blocks":
            i = int(index)
            f = top if i == 0 else low
            x, block_skips = self._block(self.down_blocks[i], x, f["temb"], f["image_only_indicator"], f["context"],
                                         f["frame_positions"], s.temporal_gates)
            if i == 0 and (c.temporal_multiscale or c.spatial_multiscale):
                # leave the top level: fewer frames and/or a smaller map below it
                x = leave_top_level(c, x, b, t)
                block_skips[-1] = x  # the downsampler's output is consumed at the lower level
            skips = skips + tuple(block_skips)
        elif kind == "mid_block":
            x = self._block(self.mid_block, x, low["temb"], low["image_only_indicator"], low["context"],
                            low["frame_positions"], s.temporal_gates)
        elif kind == "up_blocks":
            i, n = int(index), len(self.up_blocks)
            block = self.up_blocks[i]
            f = top if i == n - 1 else low
            k = len(block.resnets)
            block_skips, skips = skips[-k:], skips[:-k]
            # Upsample to the spatial size of the next skip (×2 unless a size was odd on the way down;
            # ×4 into the top level under spatial multiscaling).
            upsample_size = skips[-1].shape[1:3] if skips else None
            x = self._block(block, x, list(block_skips), f["temb"], f["image_only_indicator"], f["context"],
                            f["frame_positions"], s.temporal_gates, upsample_size=upsample_size)
            if i == n - 2 and c.temporal_multiscale:  # back to the top level's frame count
                x = ms.double_frames(x, b, t)
        else:
            raise ValueError(f"no UNet step {name!r}; the steps are {', '.join(self.step_names)}")
        return dataclasses.replace(s, x=x, skips=skips)

    def finish(self, s: "ForwardState"):
        """conv_norm_out and conv_out after the last block: the output (B, T, H, W, C_out)."""
        b, t = s.image_only_indicator.shape
        x = self.conv_out(jax.nn.silu(self.conv_norm_out(s.x)))
        return x.reshape(b, t, *x.shape[1:3], -1)


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["x", "skips", "emb", "context", "image_only_indicator", "temporal_gates"],
                   meta_fields=[])
@dataclasses.dataclass(frozen=True)
class ForwardState:
    """The UNet's forward between two steps (a pytree)."""
    x: jax.Array  # (B·T_level, h, w, C): the activation
    skips: tuple  # the skips the up blocks have yet to read, in the order the down blocks made them
    emb: jax.Array  # (B, Ct): the embedding of the noise level and the added time ids (‖ guidance), per clip
    context: jax.Array  # (B, S, D): the image embedding, in the activations' dtype
    image_only_indicator: jax.Array  # (B, T)
    temporal_gates: jax.Array | None


def block_inputs(c: UNetConfig, time_embedding, add_embedding, sample, timestep, encoder_hidden_states,
                 added_time_ids, image_only_indicator, guidance_embedding=None, guidance=None):
    """Checks the UNet's inputs and returns the blocks' per-frame inputs at full frame rate ("top") and
    below the top level ("low"; fewer frames under temporal multiscaling): dicts with the time embedding
    and context copied for every frame, the image-only indicator, the frames' positions (None: 0…T−1)
    and the frame count. Shared by the UNet and the discriminator's encoder (models/discriminator.py)."""
    return frame_inputs(c, *clip_inputs(c, time_embedding, add_embedding, sample, timestep, encoder_hidden_states,
                                        added_time_ids, image_only_indicator, guidance_embedding, guidance))


def clip_inputs(c: UNetConfig, time_embedding, add_embedding, sample, timestep, encoder_hidden_states,
                added_time_ids, image_only_indicator, guidance_embedding=None, guidance=None):
    """Checks the UNet's inputs; (the embedding of the noise level plus the added time ids (B, Ct), the context
    (B, S, D) in the activations' dtype, image_only_indicator (B, T)): the conditioning of each clip, which
    `frame_inputs` copies for every frame. The split forward (models/unet_split.py) keeps these between its parts.
    A guidance-distilled UNet's embedding is [that ‖ the guidance embedding of `guidance`] (models/resnet.py)."""
    b, t, h, w, cin = sample.shape
    if cin != c.in_channels:
        raise ValueError(f"sample has {cin} channels, the UNet expects {c.in_channels} (channels-last input)")
    if added_time_ids.shape != (b, c.num_added_time_ids):
        raise ValueError(f"added_time_ids must be ({b}, {c.num_added_time_ids}), got {added_time_ids.shape}")
    dtype = sample.dtype

    # Time embedding of the noise level plus the embedding of the added time ids (fps, motion, aug).
    timesteps = jnp.broadcast_to(jnp.asarray(timestep, jnp.float32).reshape(-1), (b,))
    emb = time_embedding(timestep_embedding(timesteps, c.block_out_channels[0]).astype(dtype))
    time_embeds = timestep_embedding(added_time_ids.reshape(-1), c.addition_time_embed_dim).reshape(b, -1)
    emb = emb + add_embedding(time_embeds.astype(dtype))
    if (guidance is None) != (guidance_embedding is None):
        raise ValueError(f"this UNet reads {c.guidance_scales} guidance scale(s): pass guidance=(batch, "
                         f"{c.guidance_scales})" if guidance is None else
                         "guidance scales given to a UNet without a guidance embedding (guidance_scales=0)")
    if guidance is not None:
        g = jnp.asarray(guidance, jnp.float32)
        g = jnp.broadcast_to(g.reshape(-1, c.guidance_scales) if g.ndim < 2 else g, (b, c.guidance_scales))
        emb = jnp.concatenate([emb, guidance_embedding(g, dtype)], axis=-1)
    context = encoder_hidden_states.astype(dtype)
    if image_only_indicator is None:
        image_only_indicator = jnp.zeros((b, t), dtype)
    return emb, context, image_only_indicator


def frame_inputs(c: UNetConfig, emb, context, image_only_indicator):
    """The per-frame block inputs ("top", "low"; see block_inputs) of the per-clip conditioning (clip_inputs)."""
    t = image_only_indicator.shape[1]

    # embedding and context are per clip, copied for every frame the blocks see
    def per_frame(frames, iio, positions):
        return dict(temb=jnp.repeat(emb, frames, axis=0), context=jnp.repeat(context, frames, axis=0),
                    image_only_indicator=iio, frame_positions=positions, frames=frames)

    top = per_frame(t, image_only_indicator, None)
    low = top
    if c.temporal_multiscale:
        low = per_frame(ms.reduced_frames(t), ms.halve_indicator(image_only_indicator), ms.halved_positions(t))
    return top, low


def leave_top_level(c: UNetConfig, x, b: int, t: int):
    """The multiscale hand-over after the first down block (models/multiscale.py): fewer frames and/or a
    smaller map below the top level."""
    if c.temporal_multiscale:
        x = ms.halve_frames(x, b, t)
    if c.spatial_multiscale:
        x = ms.halve_space(x)
    return x
