"""Stable Diffusion 1.5's image VAE: diffusers' `AutoencoderKL` in Flax NNX, channels-last.

    encoder: the same 2-D encoder as SVD's VAE (models/vae.py `Encoder`, reused as is) → quant_conv (1×1)
             → diagonal Gaussian posterior N(mean, exp(logvar)) (`KLEncoding`, shared with SVD's VAE).
    decoder: post_quant_conv (1×1) → conv_in → mid block (ResNet, single-head attention over all pixels,
             ResNet) → UpDecoderBlock2D × L (layers_per_block + 1 ResNets, then nearest ×2 upsampling + a
             3×3 conv on all but the last block) → GroupNorm → SiLU → conv_out.
Unlike SVD's temporal decoder, every image is decoded on its own (no frame mixing).

Latents are unscaled, as diffusers' `encode`/`decode` are: the diffusion model's latents are
`scaling_factor` (0.18215 for SD-1.5) times these, and a pipeline divides by it before decoding.
InstructPix2Pix's image conditioning is the unscaled posterior MODE of the input image (`encode_mode`).

Names mirror diffusers' (`decoder.up_blocks.0.resnets.1.conv2`, `decoder.mid_block.attentions.0.to_q`,
`post_quant_conv`, …) so convert/diffusers_sd_vae.py maps checkpoints 1:1 with the generic rules.
Only SD's architecture is built: SiLU, GroupNorm with 32 groups, the quant convs and the mid attention
present. Other diffusers options (act_fn, norm_num_groups, use_quant_conv, use_post_quant_conv,
mid_block_add_attention) are refused with a UserError rather than silently built differently.
"""
from __future__ import annotations

import dataclasses

import jax
from flax import nnx

from mvd_jax.errors import UserError
from mvd_jax.models.layers import Conv, GroupNorm
from mvd_jax.models.resnet import ResnetBlock2D, Upsample2D
from mvd_jax.models.vae import Encoder, KLEncoding, UNetMidBlock2D, VAEConfig

DIFFUSERS_CLASS = "AutoencoderKL"
_DIFFUSERS_BOOKKEEPING = {"_class_name", "_diffusers_version", "_name_or_path", "_use_default_values"}
# Options diffusers' AutoencoderKL has whose only supported value here is SD's (see the module docstring).
_FIXED = {"act_fn": "silu", "norm_num_groups": 32, "use_quant_conv": True, "use_post_quant_conv": True,
          "mid_block_add_attention": True}


@dataclasses.dataclass(frozen=True)
class SDVAEConfig:
    """diffusers' AutoencoderKL config; the defaults are SD-1.5's `vae/config.json`."""

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",) * 4
    up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",) * 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    act_fn: str = "silu"
    latent_channels: int = 4
    norm_num_groups: int = 32
    sample_size: int | tuple[int, ...] = 512
    scaling_factor: float = 0.18215
    # Pipeline-side latent statistics (SD3/Flux-style VAEs); none for SD-1.5. Kept for the round trip.
    shift_factor: float | None = None
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None
    force_upcast: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    def __post_init__(self):
        for name, value in _FIXED.items():
            if getattr(self, name) != value:
                raise UserError(f"SD VAE config: {name} = {getattr(self, name)!r} is not supported "
                                f"(only Stable Diffusion's {value!r} is built)")
        if any(t != "UpDecoderBlock2D" for t in self.up_block_types):
            raise UserError(f"SD VAE up_block_types must all be UpDecoderBlock2D, got {list(self.up_block_types)}")
        if len(self.up_block_types) != len(self.block_out_channels):
            raise UserError("SD VAE up_block_types and block_out_channels must have the same length")
        for name in ("in_channels", "out_channels", "layers_per_block", "latent_channels"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserError(f"SD VAE config: {name} must be a positive integer, got {v!r}")
        self.encoder_config()  # the encoder's checks (block types, channel counts)

    def encoder_config(self) -> VAEConfig:
        """The shared encoder's config (models/vae.py VAEConfig reads the same keys)."""
        return VAEConfig(in_channels=self.in_channels, out_channels=self.out_channels,
                         down_block_types=self.down_block_types, block_out_channels=self.block_out_channels,
                         layers_per_block=self.layers_per_block, latent_channels=self.latent_channels,
                         scaling_factor=self.scaling_factor, force_upcast=self.force_upcast)

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def from_dict(cls, d: dict) -> "SDVAEConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in d if k not in fields and k not in _DIFFUSERS_BOOKKEEPING)
        if unknown:
            raise UserError(f"unknown AutoencoderKL config keys: {', '.join(unknown)}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in fields}
        try:
            return cls(**kw)
        except TypeError as e:
            raise UserError(f"bad SD VAE config: {e}") from None

    def to_diffusers_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


class UpDecoderBlock2D(nnx.Module):
    """ResNets (no time embedding), then optionally nearest ×2 + 3×3 conv (`upsamplers[0]`)."""

    def __init__(self, in_channels: int, out_channels: int, *, num_layers: int, add_upsample: bool,
                 rngs: nnx.Rngs):
        self.resnets = nnx.List([ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, None, eps=1e-6,
                                               rngs=rngs) for i in range(num_layers)])
        self.upsamplers = nnx.List([Upsample2D(out_channels, rngs=rngs)]) if add_upsample else None

    def __call__(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class Decoder(nnx.Module):
    """Latents (N, h, w, latent_channels) after post_quant_conv → images (N, h·f, w·f, out_channels)."""

    def __init__(self, config: SDVAEConfig, *, rngs: nnx.Rngs):
        ch = list(reversed(config.block_out_channels))
        self.conv_in = Conv(config.latent_channels, ch[0], (3, 3), rngs=rngs)
        self.mid_block = UNetMidBlock2D(ch[0], rngs=rngs)
        self.up_blocks = nnx.List([
            UpDecoderBlock2D(ch[max(i - 1, 0)], ch[i], num_layers=config.layers_per_block + 1,
                             add_upsample=i < len(ch) - 1, rngs=rngs)
            for i in range(len(ch))
        ])
        self.conv_norm_out = GroupNorm(ch[-1], eps=1e-6, rngs=rngs)
        self.conv_out = Conv(ch[-1], config.out_channels, (3, 3), rngs=rngs)

    def __call__(self, z):
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(jax.nn.silu(self.conv_norm_out(x)))


class AutoencoderKL(KLEncoding):
    """SD's VAE. Images are channels-last in [−1, 1]; latents unscaled (see the module docstring).
    encode_moments / encode_mode / encode_sample come from KLEncoding (models/vae.py)."""

    def __init__(self, config: SDVAEConfig | None = None, *, rngs: nnx.Rngs):
        config = config or SDVAEConfig()
        self.config = config
        self.encoder = Encoder(config.encoder_config(), rngs=rngs)
        self.decoder = Decoder(config, rngs=rngs)
        self.quant_conv = Conv(2 * config.latent_channels, 2 * config.latent_channels, (1, 1), rngs=rngs)
        self.post_quant_conv = Conv(config.latent_channels, config.latent_channels, (1, 1), rngs=rngs)

    def decode(self, z):
        """(N, h, w, latent_channels) unscaled latents → (N, h·f, w·f, out_channels) images in ≈[−1, 1]."""
        return self.decoder(self.post_quant_conv(z))
