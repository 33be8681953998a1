"""UNet2DConditionModel: Stable Diffusion 1.5's UNet (diffusers' `UNet2DConditionModel`) in Flax NNX, as
InstructPix2Pix and MoViE use it, with MoViE's options as config switches (UNet2DConditionConfig).

The module tree and attribute names are diffusers' (conv_in, time_embedding, down_blocks[i].resnets[j],
down_blocks[i].attentions[j].transformer_blocks[k].attn1.to_q, downsamplers[0].conv, mid_block, up_blocks,
conv_norm_out, conv_out), so a checkpoint maps over by renaming leaves and transposing layouts
(convert/diffusers_unet2d.py). The layers are the SVD UNet's (layers.py, resnet.py, attention.py):
ResnetBlock2D, Downsample2D/Upsample2D, BasicTransformerBlock (LN → self-attn → LN → cross-attn → LN →
GEGLU FF), attention through attention_kernel's forms.

Differences from the diffusers call, all deliberate:
  * channels-last: sample is (B, H, W, C_in) and the output (B, H, W, C_out);
  * `timestep` is the DDPM step index (0…999 in SD; any float works), shape (B,) or a scalar;
  * `num_frames` (static): how many consecutive batch elements are the frames of one video, used by
    cross-frame attention (below); 1 = independent images.

MoViE options (arXiv 2412.06578, spec §6.1):
  * cross_frame_attention — zero-shot video editing. The batch holds videos × num_frames frames, each video's
    frames consecutive. In every transformer block the self-attention (attn1) of every frame f attends to
    the keys and values of ONE anchor frame a of its video:  out_f = softmax(Q_f K_aᵀ/√d) V_a, with Q_f from
    frame f's hidden states and K_a, V_a from the anchor's (same layer, same projections). The anchor is the
    middle frame, a = num_frames // 2 (for an even count the later of the two middle frames: 4 frames → 2),
    as in the paper ("the middle frame as the sole anchor"): it is on average the closest frame to all
    others, and every frame sees the same anchor, which is what makes the edit consistent. Cost stays linear
    in the number of frames (one key/value set per video). With num_frames == 1, or the option off, attn1 is
    plain self-attention. Cross-attention (attn2, to the text) is per frame as usual. Classifier-free guidance
    batches (unconditional and conditional copies of a video) are simply more videos: each has its anchor.
  * drop_top_attention — Mobile-Pix2Pix: the first down block and the last up block have no
    Transformer2DModels (their `attentions` are absent from the module and from the parameter set);
    they are diffusers' DownBlock2D / UpBlock2D, with the same res-block and resampler names.
  * guidance_scales — multimodal guidance distillation's student (models/guidance_embedding.py): the call takes
    `guidance` (B, guidance_scales), e.g. [s_I, s_T]; its embedding `guidance_embedding` is added in every
    ResNet block through a zero-initialised `guidance_emb_proj`, so with those at zero the output equals the
    UNet without the option.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mvd_jax.models.attention import Attention, BasicTransformerBlock
from mvd_jax.models.guidance_embedding import GuidanceEmbedding
from mvd_jax.models.layers import Conv, GroupNorm, Linear, TimestepEmbedding, remat_call, timestep_embedding
from mvd_jax.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from mvd_jax.models.unet2d_config import UNet2DConditionConfig


def anchor_index(num_frames: int) -> int:
    """The anchor frame of cross-frame attention within each video: the middle one."""
    return num_frames // 2


def cross_frame_attention(attn: Attention, x, num_frames: int):
    """Self-attention `attn` of every frame to the anchor frame's keys and values.

    x: (V·F, N, C) — the (normalised) hidden states of V videos of F = num_frames consecutive frames, N tokens
    each. Returns (V·F, N, C) with out_f = to_out(softmax(Q_f K_aᵀ/√d) V_a), a = anchor_index(F).

    Computed as ONE attention call per video: the F frames' queries are stacked into a (V, F·N) query
    sequence against the anchor's (V, N) keys and values. A softmax row only involves its own query, so this
    is exactly the per-frame formula, while K_a and V_a are projected once per video, not once per frame.
    """
    if num_frames == 1:
        return attn(x)
    bf, n, c = x.shape
    if bf % num_frames:
        raise ValueError(f"a batch of {bf} is not a whole number of videos of {num_frames} frames")
    frames = x.reshape(bf // num_frames, num_frames, n, c)
    anchor = frames[:, anchor_index(num_frames)]  # (V, N, C)
    out = attn(frames.reshape(bf // num_frames, num_frames * n, c), anchor)
    return out.reshape(bf, n, -1)


class CrossFrameTransformerBlock(BasicTransformerBlock):
    """BasicTransformerBlock (same parameters and names) whose self-attention can attend to an anchor frame."""

    def __call__(self, x, context, num_frames: int = 1):
        if num_frames == 1:
            return super().__call__(x, context)
        x = cross_frame_attention(self.attn1, self.norm1(x), num_frames) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class Transformer2DModel(nnx.Module):
    """diffusers' Transformer2DModel on continuous input: GroupNorm(eps 1e-6) → proj_in → transformer blocks over
    the H·W tokens → proj_out → + residual. proj_in/proj_out are 1×1 convs (SD-1.5) or, with
    `use_linear_projection`, linear layers — the same map; only the checkpoint layout differs."""

    def __init__(self, num_attention_heads: int, attention_head_dim: int, in_channels: int, *, num_layers: int,
                 cross_attention_dim: int, norm_num_groups: int, use_linear_projection: bool, rngs: nnx.Rngs):
        inner = num_attention_heads * attention_head_dim
        self.use_linear_projection = use_linear_projection
        self.norm = GroupNorm(in_channels, num_groups=norm_num_groups, eps=1e-6, rngs=rngs)
        proj = (lambda i, o: Linear(i, o, rngs=rngs)) if use_linear_projection else \
            (lambda i, o: Conv(i, o, (1, 1), rngs=rngs))
        self.proj_in = proj(in_channels, inner)
        self.transformer_blocks = nnx.List([
            CrossFrameTransformerBlock(inner, num_attention_heads, attention_head_dim,
                                       cross_attention_dim=cross_attention_dim, rngs=rngs)
            for _ in range(num_layers)
        ])
        self.proj_out = proj(inner, in_channels)

    def __call__(self, x, context, num_frames: int = 1, remat: bool = False):
        """x: (B, H, W, C); context: (B, L, D); num_frames: frames per video for cross-frame attention (1: off)."""
        b, h, w, c = x.shape
        residual = x
        # proj_in acts per pixel, so it commutes with flattening the map into tokens (either layout).
        x = self.proj_in(self.norm(x)).reshape(b, h * w, -1)
        for block in self.transformer_blocks:
            x = remat_call(block, x, context, num_frames, remat=remat)
        return self.proj_out(x).reshape(b, h, w, c) + residual


class _Options:
    """Construction settings every block shares (from the config)."""

    def __init__(self, c: UNet2DConditionConfig, rngs: nnx.Rngs):
        self.c, self.rngs = c, rngs

    def resnet(self, in_ch: int, out_ch: int) -> ResnetBlock2D:
        return ResnetBlock2D(in_ch, out_ch, self.c.time_embed_dim, eps=self.c.norm_eps, groups=self.c.norm_num_groups,
                             guidance_channels=self.c.time_embed_dim if self.c.guidance_scales else None,
                             rngs=self.rngs)

    def transformer(self, channels: int, heads: int, depth: int, context_dim: int) -> Transformer2DModel:
        return Transformer2DModel(heads, channels // heads, channels, num_layers=depth, cross_attention_dim=context_dim,
                                  norm_num_groups=self.c.norm_num_groups,
                                  use_linear_projection=self.c.use_linear_projection, rngs=self.rngs)


class DownBlock2D(nnx.Module):
    """diffusers' DownBlock2D; with `attention=(heads, depth, context_dim)` its CrossAttnDownBlock2D
    (a Transformer2DModel after each res-block)."""

    def __init__(self, in_channels: int, out_channels: int, *, num_layers: int, add_downsample: bool,
                 attention: tuple[int, int, int] | None, options: _Options):
        self.resnets = nnx.List([options.resnet(in_channels if i == 0 else out_channels, out_channels)
                                 for i in range(num_layers)])
        self.attentions = None if attention is None else nnx.List([
            options.transformer(out_channels, *attention) for _ in range(num_layers)])
        self.downsamplers = nnx.List([Downsample2D(out_channels, rngs=options.rngs)]) if add_downsample else None

    def __call__(self, x, temb, context, num_frames: int = 1, remat: bool = False):
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = remat_call(resnet, x, temb, remat=remat)
            if self.attentions is not None:
                x = self.attentions[i](x, context, num_frames, remat=remat)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class UNetMidBlock2DCrossAttn(nnx.Module):
    """resnets[0] → (attentions[i] → resnets[i+1]) for each layer."""

    def __init__(self, channels: int, *, heads: int, depth: int, context_dim: int, options: _Options,
                 num_layers: int = 1):
        self.resnets = nnx.List([options.resnet(channels, channels) for _ in range(num_layers + 1)])
        self.attentions = nnx.List([options.transformer(channels, heads, depth, context_dim)
                                    for _ in range(num_layers)])

    def __call__(self, x, temb, context, num_frames: int = 1, remat: bool = False):
        x = remat_call(self.resnets[0], x, temb, remat=remat)
        for attn, resnet in zip(self.attentions, self.resnets[1:]):
            x = attn(x, context, num_frames, remat=remat)
            x = remat_call(resnet, x, temb, remat=remat)
        return x


class UpBlock2D(nnx.Module):
    """diffusers' UpBlock2D; with `attention=(heads, depth, context_dim)` its CrossAttnUpBlock2D.

    Res-block i takes the running tensor (the previous block's width for i == 0) concatenated with a skip:
    the last res-block's skip comes from the level below (in_channels wide), the others' from this level.
    """

    def __init__(self, in_channels: int, prev_output_channel: int, out_channels: int, *, num_layers: int,
                 add_upsample: bool, attention: tuple[int, int, int] | None, options: _Options):
        self.resnets = nnx.List([
            options.resnet((prev_output_channel if i == 0 else out_channels)
                           + (in_channels if i == num_layers - 1 else out_channels), out_channels)
            for i in range(num_layers)
        ])
        self.attentions = None if attention is None else nnx.List([
            options.transformer(out_channels, *attention) for _ in range(num_layers)])
        self.upsamplers = nnx.List([Upsample2D(out_channels, rngs=options.rngs)]) if add_upsample else None

    def __call__(self, x, skips, temb, context, num_frames: int = 1, upsample_size=None, remat: bool = False):
        skips = list(skips)
        for i, resnet in enumerate(self.resnets):
            x = jnp.concatenate([x, skips.pop()], axis=-1)
            x = remat_call(resnet, x, temb, remat=remat)
            if self.attentions is not None:
                x = self.attentions[i](x, context, num_frames, remat=remat)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x


class UNet2DConditionModel(nnx.Module):

    def __init__(self, config: UNet2DConditionConfig, *, rngs: nnx.Rngs):
        self.config = c = config
        boc = c.block_out_channels
        n = len(boc)
        opts = _Options(c, rngs)

        self.conv_in = Conv(c.in_channels, boc[0], (3, 3), rngs=rngs)
        self.time_embedding = TimestepEmbedding(boc[0], c.time_embed_dim, rngs=rngs)
        self.guidance_embedding = (GuidanceEmbedding(c.guidance_scales, boc[0], c.time_embed_dim,
                                                     flip_sin_to_cos=c.flip_sin_to_cos, freq_shift=c.freq_shift,
                                                     rngs=rngs) if c.guidance_scales else None)

        down, out_ch = [], boc[0]
        for i, block_type in enumerate(c.down_types):
            in_ch, out_ch = out_ch, boc[i]
            attention = (c.heads[i], c.transformer_layers[i], c.context_dims[i]) \
                if block_type == "CrossAttnDownBlock2D" else None
            down.append(DownBlock2D(in_ch, out_ch, num_layers=c.layers[i], add_downsample=i < n - 1,
                                    attention=attention, options=opts))
        self.down_blocks = nnx.List(down)

        self.mid_block = UNetMidBlock2DCrossAttn(boc[-1], heads=c.heads[-1], depth=c.transformer_layers[-1],
                                                 context_dim=c.context_dims[-1], options=opts)

        up, out_ch = [], boc[-1]
        rev_ch, rev_layers, rev_heads = boc[::-1], c.layers[::-1], c.heads[::-1]
        rev_depth, rev_ctx = c.transformer_layers[::-1], c.context_dims[::-1]
        for i, block_type in enumerate(c.up_types):
            prev_ch, out_ch = out_ch, rev_ch[i]
            in_ch = rev_ch[min(i + 1, n - 1)]
            attention = (rev_heads[i], rev_depth[i], rev_ctx[i]) if block_type == "CrossAttnUpBlock2D" else None
            up.append(UpBlock2D(in_ch, prev_ch, out_ch, num_layers=rev_layers[i] + 1, add_upsample=i < n - 1,
                                attention=attention, options=opts))
        self.up_blocks = nnx.List(up)

        self.conv_norm_out = GroupNorm(boc[0], num_groups=c.norm_num_groups, eps=c.norm_eps, rngs=rngs)
        self.conv_out = Conv(boc[0], c.out_channels, (3, 3), rngs=rngs)
        # Training option: recompute each res-block's and transformer layer's activations in the backward
        # pass instead of storing them (layers.remat_call) — same numbers, less memory.
        self.remat = False

    def __call__(self, sample, timestep, encoder_hidden_states, *, num_frames: int = 1, guidance=None):
        """sample (B, H, W, C_in), timestep (B,) or scalar, encoder_hidden_states (B, L, D) → (B, H, W, C_out).

        num_frames (static): frames per video for cross_frame_attention (B = videos × num_frames, each video's
        frames consecutive); ignored when the option is off. guidance (B, guidance_scales) or
        (guidance_scales,): the scales a guidance-distilled UNet reads (required then, refused otherwise).
        """
        c = self.config
        b, h, w, cin = sample.shape
        if cin != c.in_channels:
            raise ValueError(f"sample has {cin} channels, the UNet expects {c.in_channels} (channels-last input)")
        if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[0] != b:
            raise ValueError(f"encoder_hidden_states must be ({b}, tokens, dim), got {encoder_hidden_states.shape}")
        frames = num_frames if c.cross_frame_attention else 1
        if b % frames:
            raise ValueError(f"cross-frame attention: a batch of {b} is not a whole number of {frames}-frame videos")
        dtype = sample.dtype

        timesteps = jnp.broadcast_to(jnp.asarray(timestep, jnp.float32).reshape(-1), (b,))
        temb = timestep_embedding(timesteps, c.block_out_channels[0], flip_sin_to_cos=c.flip_sin_to_cos,
                                  downscale_freq_shift=c.freq_shift)
        temb = self.time_embedding(temb.astype(dtype))
        if (guidance is None) != (self.guidance_embedding is None):
            raise ValueError(f"this UNet reads {c.guidance_scales} guidance scale(s): pass guidance=(batch, "
                             f"{c.guidance_scales})" if guidance is None else
                             "guidance scales given to a UNet without a guidance embedding (guidance_scales=0)")
        if guidance is not None:  # every ResNet block reads [time ‖ guidance] (models/resnet.py)
            g = jnp.asarray(guidance, jnp.float32)
            g = jnp.broadcast_to(g.reshape(-1, c.guidance_scales) if g.ndim < 2 else g, (b, c.guidance_scales))
            temb = jnp.concatenate([temb, self.guidance_embedding(g, dtype)], axis=-1)
        context = encoder_hidden_states.astype(dtype)

        x = self.conv_in(sample)
        skips = [x]
        for block in self.down_blocks:
            x, block_skips = block(x, temb, context, frames, remat=self.remat)
            skips.extend(block_skips)

        x = self.mid_block(x, temb, context, frames, remat=self.remat)

        for block in self.up_blocks:
            k = len(block.resnets)
            block_skips, skips = skips[-k:], skips[:-k]
            # Upsample to the size of the next skip: ×2, or the odd size met on the way down (diffusers'
            # forward_upsample_size).
            upsample_size = skips[-1].shape[1:3] if skips else None
            x = block(x, block_skips, temb, context, frames, upsample_size=upsample_size, remat=self.remat)

        return self.conv_out(jax.nn.silu(self.conv_norm_out(x)))
