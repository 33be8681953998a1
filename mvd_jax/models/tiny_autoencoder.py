"""A tiny autoencoder for the phone (MobileVD Table 9, MoViE §6.1): TAESD's design, with an optional
temporal mixing layer in the decoder so that a clip's frames do not flicker.

TAESD is diffusers' `AutoencoderTiny`, and this module mirrors its tree and names, so a TAESD checkpoint
loads 1:1 (convert/diffusers_tiny_autoencoder.py) and the per-frame model equals diffusers' numerically:

    decoder  tanh(z/3)·3 → conv → ReLU → per stage: [Block × n] → (nearest ×2 → conv, no bias) … the last
             stage ends in conv → 3 channels; output ·2 − 1 (TAESD works in [0, 1], diffusers in [−1, 1])
    encoder  (x + 1)/2 → per stage: conv (stride 2 after the first, no bias) → [Block × n]; conv → latents
    Block    ReLU(conv → ReLU → conv → ReLU → conv  +  x)            (3×3 convs, no norm, no attention)

The latents are the diffusion model's (the teacher VAE's latents × its scaling factor), as TAESD's are:
`config.scaling_factor` is 1, so the samplers' `decode(z / scaling_factor)` hands them over unchanged.

Temporal mixing (this project's addition; `temporal_mixing=True`): after each decoder stage's blocks, except
the full-resolution one, x ← x + conv_t(x), conv_t a 3×1×1 convolution over neighbouring frames (zero-padded
at the clip's ends, like SVD's `time_conv_out`). Why this form: it is the cheapest layer that can see the
neighbouring frames (3·C² per pixel, a ninth of one 3×3 conv; +3.6 % of the phone decoder's FLOPs) and it is
built from the same builtins as the rest (a CONV_2D with a (3, 1) kernel over frames × pixels); a TAEHV-style memory block would
need state carried across calls. Initialised at zero, so the decoder starts as the per-frame TAESD.
Parameters under `decoder.time_mixers.*` are not part of diffusers' AutoencoderTiny.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from mvd_jax.errors import UserError
from mvd_jax.models.layers import Conv
from mvd_jax.models.resnet import resize_nearest

_DIFFUSERS_BOOKKEEPING = {"_class_name", "_diffusers_version", "_name_or_path", "_use_default_values"}
# AutoencoderTiny config keys that must keep their TAESD values here (this module implements only those)
_FIXED = {"act_fn": "relu", "upsample_fn": "nearest", "upsampling_scaling_factor": 2, "latent_magnitude": 3,
          "latent_shift": 0.5, "shift_factor": 0.0, "force_upcast": False}


@dataclasses.dataclass(frozen=True)
class TinyAutoencoderConfig:
    """diffusers' AutoencoderTiny config (TAESD's defaults) + `temporal_mixing`."""

    in_channels: int = 3
    out_channels: int = 3
    encoder_block_out_channels: tuple[int, ...] = (64, 64, 64, 64)
    decoder_block_out_channels: tuple[int, ...] = (64, 64, 64, 64)
    num_encoder_blocks: tuple[int, ...] = (1, 3, 3, 3)
    num_decoder_blocks: tuple[int, ...] = (3, 3, 3, 1)
    latent_channels: int = 4
    scaling_factor: float = 1.0
    temporal_mixing: bool = False

    def __post_init__(self):
        if len(self.encoder_block_out_channels) != len(self.num_encoder_blocks):
            raise UserError("tiny autoencoder: encoder_block_out_channels and num_encoder_blocks differ in length")
        if len(self.decoder_block_out_channels) != len(self.num_decoder_blocks):
            raise UserError("tiny autoencoder: decoder_block_out_channels and num_decoder_blocks differ in length")
        if len(self.num_encoder_blocks) != len(self.num_decoder_blocks):
            raise UserError("tiny autoencoder: the encoder and decoder need the same number of stages (one "
                            "downsampling factor)")
        for part in ("encoder", "decoder"):
            widths = getattr(self, f"{part}_block_out_channels")
            if len(set(widths)) != 1:  # diffusers' AutoencoderTiny has no layer that changes width between stages
                raise UserError(f"tiny autoencoder: {part}_block_out_channels must all be equal (one width per "
                                f"network, as in AutoencoderTiny), got {list(widths)}")
        if self.latent_channels < 1 or min(self.decoder_block_out_channels + self.encoder_block_out_channels) < 1:
            raise UserError("tiny autoencoder: channel counts must be positive")

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.num_decoder_blocks) - 1)

    @classmethod
    def from_dict(cls, d: dict) -> "TinyAutoencoderConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        for k, v in _FIXED.items():
            if k in d and d[k] != v:
                raise UserError(f"tiny autoencoder config {k}={d[k]!r}: only {v!r} (TAESD's) is implemented")
        unknown = sorted(k for k in d if k not in fields and k not in _FIXED and k not in _DIFFUSERS_BOOKKEEPING
                         and k != "block_out_channels")  # diffusers registers a copy of the decoder's widths
        if unknown:
            raise UserError(f"unknown AutoencoderTiny config keys: {', '.join(unknown)}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in fields}
        try:
            return cls(**kw)
        except TypeError as e:
            raise UserError(f"bad tiny autoencoder config: {e}") from None

    def to_diffusers_dict(self) -> dict:
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
        return {**d, **_FIXED}


class ReLU(nnx.Module):
    """Stands where diffusers' nn.Sequential has its activation, so list indices match its names."""

    def __call__(self, x):
        return jax.nn.relu(x)


class Upsample(nnx.Module):
    def __call__(self, x):
        return resize_nearest(x, (2 * x.shape[1], 2 * x.shape[2]))


class AutoencoderTinyBlock(nnx.Module):
    """ReLU(conv(ReLU(conv(ReLU(conv(x))))) + x): `conv` is a list [conv, ReLU, conv, ReLU, conv] as in diffusers."""

    def __init__(self, channels: int, *, rngs: nnx.Rngs):
        self.conv = nnx.List([Conv(channels, channels, (3, 3), rngs=rngs), ReLU(),
                              Conv(channels, channels, (3, 3), rngs=rngs), ReLU(),
                              Conv(channels, channels, (3, 3), rngs=rngs)])

    def __call__(self, x):
        y = x
        for layer in self.conv:
            y = layer(y)
        return jax.nn.relu(y + x)


class TemporalMixer(nnx.Module):
    """x + conv over (frame−1, frame, frame+1) per pixel; zero-initialised (the identity at the start). Run as a
    2-D convolution with a (3, 1) kernel over (frames, pixels), so the exported graph has CONV_2D (which every
    phone delegate takes), not CONV_3D."""

    def __init__(self, channels: int, *, rngs: nnx.Rngs):
        self.conv = Conv(channels, channels, (3, 1), rngs=rngs)
        self.conv.kernel[...] = jnp.zeros_like(self.conv.kernel[...])
        self.conv.bias[...] = jnp.zeros_like(self.conv.bias[...])

    def __call__(self, x, num_frames: int):
        n, h, w, c = x.shape
        clips = x.reshape(n // num_frames, num_frames, h * w, c)
        return x + self.conv(clips).reshape(n, h, w, c)


class DecoderTiny(nnx.Module):
    def __init__(self, config: TinyAutoencoderConfig, *, rngs: nnx.Rngs):
        widths, blocks = config.decoder_block_out_channels, config.num_decoder_blocks
        layers = [Conv(config.latent_channels, widths[0], (3, 3), rngs=rngs), ReLU()]
        self.mixer_after = {}  # layer index → mixer index
        mixers = []
        for i, n in enumerate(blocks):
            final = i == len(blocks) - 1
            layers += [AutoencoderTinyBlock(widths[i], rngs=rngs) for _ in range(n)]
            if config.temporal_mixing and not final:
                self.mixer_after[len(layers) - 1] = len(mixers)
                mixers.append(TemporalMixer(widths[i], rngs=rngs))
            if not final:
                layers.append(Upsample())
            layers.append(Conv(widths[i], config.out_channels if final else widths[i], (3, 3), rngs=rngs,
                               use_bias=final))
        self.layers = nnx.List(layers)
        self.time_mixers = nnx.List(mixers)

    def __call__(self, z, num_frames: int):
        x = jnp.tanh(z / 3.0) * 3.0
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in self.mixer_after:
                x = self.time_mixers[self.mixer_after[i]](x, num_frames)
        return x * 2.0 - 1.0


class EncoderTiny(nnx.Module):
    def __init__(self, config: TinyAutoencoderConfig, *, rngs: nnx.Rngs):
        widths, blocks = config.encoder_block_out_channels, config.num_encoder_blocks
        layers = []
        for i, n in enumerate(blocks):
            if i == 0:
                layers.append(Conv(config.in_channels, widths[0], (3, 3), rngs=rngs))
            else:
                layers.append(Conv(widths[i], widths[i], (3, 3), rngs=rngs, strides=(2, 2), use_bias=False))
            layers += [AutoencoderTinyBlock(widths[i], rngs=rngs) for _ in range(n)]
        layers.append(Conv(widths[-1], config.latent_channels, (3, 3), rngs=rngs))
        self.layers = nnx.List(layers)

    def __call__(self, images):
        x = (images + 1.0) / 2.0
        for layer in self.layers:
            x = layer(x)
        return x


class TinyAutoencoder(nnx.Module):
    """The VAE's interface (`encode_moments`, `encode_mode`, `decode(z, num_frames)`, `config.scaling_factor`,
    `config.downsampling_factor`, `config.latent_channels`), so the data encoder, samplers and exporter take
    it in the VAE's place. Frames are (N, H, W, C) channels-last; a decode sees whole clips of `num_frames`."""

    def __init__(self, config: TinyAutoencoderConfig = TinyAutoencoderConfig(), *, rngs: nnx.Rngs):
        self.config = config
        self.encoder = EncoderTiny(config, rngs=rngs)
        self.decoder = DecoderTiny(config, rngs=rngs)

    def encode_moments(self, images):
        z = self.encode_mode(images)
        return z, jnp.full_like(z, -30.0)  # deterministic, like TAESD: a point mass

    def encode_mode(self, images):
        n, h, w, _ = images.shape
        f = self.config.downsampling_factor
        if h % f or w % f:
            raise UserError(f"image size {h}×{w} is not a multiple of the tiny autoencoder's factor {f}")
        return self.encoder(images)

    def decode(self, z, num_frames: int | None = None):
        n = z.shape[0]
        if z.shape[-1] != self.config.latent_channels:
            raise UserError(f"the tiny decoder takes {self.config.latent_channels}-channel latents, got "
                            f"{z.shape[-1]}")
        num_frames = num_frames or n
        if self.config.temporal_mixing and n % num_frames:
            raise UserError(f"{n} frames do not split into clips of {num_frames}")
        return self.decoder(z, num_frames)
