"""SVD's temporal VAE: diffusers' `AutoencoderKLTemporalDecoder` in Flax NNX, channels-last.

    encoder: the image VAE's 2-D encoder (per frame): conv_in → DownEncoderBlock2D × L (ResNets, stride-2
             conv with torch's asymmetric (0, 1) padding) → mid (ResNet, single-head self-attention over
             all pixels, ResNet) → GroupNorm → SiLU → conv_out (2·latent channels) → quant_conv (1×1);
             the posterior is N(mean, exp(logvar)) from a channel split of those moments.
    decoder: conv_in → mid (SpatioTemporalResBlock, attention, SpatioTemporalResBlock) → up blocks of
             SpatioTemporalResBlocks + nearest ×2 upsampling → GroupNorm → SiLU → conv_out, then
             `time_conv_out`, a Conv3d with kernel (3, 1, 1) that mixes each pixel over neighbouring
             frames. Its res-blocks blend spatial and temporal halves with α = 1 − sigmoid(mix_factor)
             (merge strategy "learned", switched), no time embedding.

The decoder's temporal layers see exactly the frames passed in one `decode` call: diffusers' pipeline
decodes `decode_chunk_size` frames at a time and each chunk is its own clip (`decode_chunked`).
Names mirror diffusers' so `convert/diffusers_vae.py` maps checkpoints 1:1.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from mvd_jax.errors import UserError
from mvd_jax.models.attention_kernel import AttentionForm, dot_product_attention
from mvd_jax.models.layers import Conv, GroupNorm, Linear
from mvd_jax.models.resnet import ResnetBlock2D, SpatioTemporalResBlock, Upsample2D

_DIFFUSERS_BOOKKEEPING = {"_class_name", "_diffusers_version", "_name_or_path", "_use_default_values"}


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """diffusers' AutoencoderKLTemporalDecoder config; the defaults are SVD's `vae/config.json`."""

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",) * 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    sample_size: int = 768
    scaling_factor: float = 0.18215
    force_upcast: bool = True

    def __post_init__(self):
        if any(t != "DownEncoderBlock2D" for t in self.down_block_types):
            raise UserError(f"VAE down_block_types must all be DownEncoderBlock2D, got {list(self.down_block_types)}")
        if len(self.down_block_types) != len(self.block_out_channels):
            raise UserError("VAE down_block_types and block_out_channels must have the same length")
        if any(c % 32 for c in self.block_out_channels):
            raise UserError(f"VAE block_out_channels must be multiples of 32 (GroupNorm groups), "
                            f"got {list(self.block_out_channels)}")

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def from_dict(cls, d: dict) -> "VAEConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in d if k not in fields and k not in _DIFFUSERS_BOOKKEEPING)
        if unknown:
            raise UserError(f"unknown AutoencoderKLTemporalDecoder config keys: {', '.join(unknown)}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in fields}
        try:
            return cls(**kw)
        except TypeError as e:
            raise UserError(f"bad VAE config: {e}") from None

    def to_diffusers_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


class VAEAttention(nnx.Module):
    """diffusers' Attention as the VAE uses it: GroupNorm → single-head self-attention over all H·W
    positions (q/k/v with bias) → to_out[0] → + input. (N, H, W, C) → (N, H, W, C)."""

    def __init__(self, channels: int, *, rngs: nnx.Rngs):
        self.group_norm = GroupNorm(channels, eps=1e-6, rngs=rngs)
        self.to_q = Linear(channels, channels, axes=("embed", "heads"), rngs=rngs)
        self.to_k = Linear(channels, channels, axes=("embed", "heads"), rngs=rngs)
        self.to_v = Linear(channels, channels, axes=("embed", "heads"), rngs=rngs)
        self.to_out = nnx.List([Linear(channels, channels, axes=("heads", "embed"), rngs=rngs)])
        self.attention_form = AttentionForm()  # static (attention_kernel.set_form)

    def __call__(self, x):
        n, h, w, c = x.shape
        t = self.group_norm(x).reshape(n, h * w, 1, c)  # one head of width c
        out = dot_product_attention(self.to_q(t), self.to_k(t), self.to_v(t), c ** -0.5, self.attention_form)
        return self.to_out[0](out.reshape(n, h, w, c)) + x


class Downsample2D(nnx.Module):
    """The encoder's stride-2 3×3 conv: zero padding (0, 1) on H and W first, then the conv unpadded
    (diffusers' Downsample2D with padding=0). Not the UNet's symmetric-padding downsampler."""

    def __init__(self, channels: int, *, rngs: nnx.Rngs):
        self.conv = Conv(channels, channels, (3, 3), strides=(2, 2), padding=(0, 0), rngs=rngs)

    def __call__(self, x):
        return self.conv(jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0))))


class DownEncoderBlock2D(nnx.Module):
    def __init__(self, in_channels: int, out_channels: int, *, num_layers: int, add_downsample: bool,
                 rngs: nnx.Rngs):
        self.resnets = nnx.List([ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, None, eps=1e-6,
                                               rngs=rngs) for i in range(num_layers)])
        self.downsamplers = nnx.List([Downsample2D(out_channels, rngs=rngs)]) if add_downsample else None

    def __call__(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x


class UNetMidBlock2D(nnx.Module):
    """ResNet → attention → ResNet (diffusers' UNetMidBlock2D with one layer, no time embedding)."""

    def __init__(self, channels: int, *, rngs: nnx.Rngs):
        self.attentions = nnx.List([VAEAttention(channels, rngs=rngs)])
        self.resnets = nnx.List([ResnetBlock2D(channels, channels, None, eps=1e-6, rngs=rngs) for _ in range(2)])

    def __call__(self, x):
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


class Encoder(nnx.Module):
    """Frames (N, H, W, in_channels) → moments (N, H/f, W/f, 2·latent_channels) before quant_conv."""

    def __init__(self, config: VAEConfig, *, rngs: nnx.Rngs):
        ch = config.block_out_channels
        self.conv_in = Conv(config.in_channels, ch[0], (3, 3), rngs=rngs)
        self.down_blocks = nnx.List([
            DownEncoderBlock2D(ch[max(i - 1, 0)], ch[i], num_layers=config.layers_per_block,
                               add_downsample=i < len(ch) - 1, rngs=rngs)
            for i in range(len(ch))
        ])
        self.mid_block = UNetMidBlock2D(ch[-1], rngs=rngs)
        self.conv_norm_out = GroupNorm(ch[-1], eps=1e-6, rngs=rngs)
        self.conv_out = Conv(ch[-1], 2 * config.latent_channels, (3, 3), rngs=rngs)

    def __call__(self, x):
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(jax.nn.silu(self.conv_norm_out(x)))


def _decoder_resblock(in_channels: int, out_channels: int, rngs: nnx.Rngs) -> SpatioTemporalResBlock:
    return SpatioTemporalResBlock(in_channels, out_channels, None, eps=1e-6, temporal_eps=1e-5, rngs=rngs,
                                  mixer=dict(alpha=0.0, merge_strategy="learned", switch_spatial_to_temporal_mix=True))


class MidBlockTemporalDecoder(nnx.Module):
    """resnets[0] → (attentions[0] → resnets[1]) …; like diffusers, only the first attention is used
    (one is built), so with layers_per_block = 1 the attention is present but skipped."""

    def __init__(self, channels: int, num_layers: int, *, rngs: nnx.Rngs):
        self.attentions = nnx.List([VAEAttention(channels, rngs=rngs)])
        self.resnets = nnx.List([_decoder_resblock(channels, channels, rngs) for _ in range(num_layers)])

    def __call__(self, x, image_only_indicator):
        x = self.resnets[0](x, None, image_only_indicator)
        for resnet, attn in zip(self.resnets[1:], self.attentions):
            x = resnet(attn(x), None, image_only_indicator)
        return x


class UpBlockTemporalDecoder(nnx.Module):
    def __init__(self, in_channels: int, out_channels: int, *, num_layers: int, add_upsample: bool, rngs: nnx.Rngs):
        self.resnets = nnx.List([_decoder_resblock(in_channels if i == 0 else out_channels, out_channels, rngs)
                                 for i in range(num_layers)])
        self.upsamplers = nnx.List([Upsample2D(out_channels, rngs=rngs)]) if add_upsample else None

    def __call__(self, x, image_only_indicator):
        for resnet in self.resnets:
            x = resnet(x, None, image_only_indicator)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class TemporalDecoder(nnx.Module):
    """Latents (B·T, h, w, latent) → frames (B·T, H, W, out_channels); frames of a clip are consecutive."""

    def __init__(self, config: VAEConfig, *, rngs: nnx.Rngs):
        ch = list(reversed(config.block_out_channels))
        self.conv_in = Conv(config.latent_channels, ch[0], (3, 3), rngs=rngs)
        self.mid_block = MidBlockTemporalDecoder(ch[0], config.layers_per_block, rngs=rngs)
        self.up_blocks = nnx.List([
            UpBlockTemporalDecoder(ch[max(i - 1, 0)], ch[i], num_layers=config.layers_per_block + 1,
                                   add_upsample=i < len(ch) - 1, rngs=rngs)
            for i in range(len(ch))
        ])
        self.conv_norm_out = GroupNorm(ch[-1], eps=1e-6, rngs=rngs)
        self.conv_out = Conv(ch[-1], config.out_channels, (3, 3), rngs=rngs)
        self.time_conv_out = Conv(config.out_channels, config.out_channels, (3, 1, 1), padding=(1, 0, 0), rngs=rngs)

    def __call__(self, z, image_only_indicator):
        b, t = image_only_indicator.shape
        x = self.mid_block(self.conv_in(z), image_only_indicator)
        for block in self.up_blocks:
            x = block(x, image_only_indicator)
        x = self.conv_out(jax.nn.silu(self.conv_norm_out(x)))
        x = self.time_conv_out(x.reshape(b, t, *x.shape[1:]))
        return x.reshape(b * t, *x.shape[2:])


class KLEncoding(nnx.Module):
    """The encoding side shared by SVD's VAE and SD's (models/sd_vae.py): a subclass sets `self.encoder`
    (an Encoder) and `self.quant_conv`; the posterior is a diagonal Gaussian over the latents."""

    def encode_moments(self, images):
        """(N, H, W, 3) → (mean, logvar), each (N, H/f, W/f, latent_channels); logvar clipped to [−30, 20]
        as diffusers' DiagonalGaussianDistribution does."""
        moments = self.quant_conv(self.encoder(images))
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def encode_mode(self, images):
        """The posterior's mode (= mean): what SVD uses for the conditioning latent."""
        return self.encode_moments(images)[0]

    def encode_sample(self, images, key):
        """A posterior sample mean + exp(logvar/2)·ε: what training encodes video frames with."""
        mean, logvar = self.encode_moments(images)
        return mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)


class AutoencoderKLTemporalDecoder(KLEncoding):
    """SVD's VAE. Images/frames are channels-last in [−1, 1]; latents are unscaled (multiply by
    `config.scaling_factor` to get the diffusion model's latents, as the pipeline does)."""

    def __init__(self, config: VAEConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.encoder = Encoder(config, rngs=rngs)
        self.decoder = TemporalDecoder(config, rngs=rngs)
        self.quant_conv = Conv(2 * config.latent_channels, 2 * config.latent_channels, (1, 1), rngs=rngs)

    def decode(self, z, num_frames: int):
        """(B·num_frames, h, w, latent) unscaled latents → (B·num_frames, H, W, 3) frames in ≈[−1, 1].
        The temporal layers mix the num_frames consecutive frames of each clip."""
        n = z.shape[0]
        if n % num_frames:
            raise ValueError(f"{n} latent frames are not a whole number of {num_frames}-frame clips")
        return self.decoder(z, jnp.zeros((n // num_frames, num_frames), z.dtype))


def decode_chunked(decode_fn, z, decode_chunk_size: int | None):
    """diffusers' pipeline decoding: frames z (N, h, w, C) in chunks of `decode_chunk_size` (None = all);
    each chunk is decoded as one clip (its frames mix only with each other), bounding memory.

    `decode_fn(z_chunk, num_frames)` is e.g. a jitted `vae.decode`; chunks of equal size reuse one
    compiled program (the last, shorter chunk compiles once more).
    """
    n = z.shape[0]
    size = n if not decode_chunk_size else int(decode_chunk_size)
    if size < 1:
        raise UserError(f"decode_chunk_size must be ≥ 1, got {decode_chunk_size}")
    parts = [decode_fn(z[i:i + size], min(size, n - i)) for i in range(0, n, size)]
    return jnp.concatenate(parts, axis=0)
