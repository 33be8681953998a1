"""Clockwork Diffusion's adaptor (Habibian et al., CVPR 2024; mobilevd_paper.md §6.2).

Low-resolution UNet features change little from one denoising step to the next. On some steps the low
part of the UNet (ε_L, models/unet_split.py) is skipped and a light adaptor estimates its output from the
previous step's:

    r̂_out^t = ϕ(r_in^t, r_out^{t+1}, t_emb, image_emb)

where r_in^t is this step's input to the low part, r_out^{t+1} the low part's output (or its estimate) at
the previous, noisier step, t_emb the UNet's time embedding of this step (noise level plus the added time
ids, per clip) and image_emb SVD's CLIP image embedding (the paper's pooled text embedding).

Kinds (ClockworkConfig.kind):
  * "identity": ϕ = r_out^{t+1} (the cached features are reused; no parameters);
  * "resnet", the paper's ResNet adaptor, no attention:
        h = conv_down(r_out^{t+1}) + image_proj(image_emb)       strided 3×3 conv ↓2, to r_in's map size
        h = resnets[1](resnets[0]([h, r_in^t], t_emb), t_emb)   2 ResBlocks with time conditioning
        ϕ = r_out^{t+1} + conv_up(h)                             2×2 transposed conv ↑2
    The residual runs from the input r_out^{t+1} to the output (they have the same shape), and conv_up
    starts at zero, so a fresh adaptor IS the identity adaptor: distillation starts from the cache reuse
    the paper found already good, and learns only the correction;
  * "spatiotemporal": the same with SVD's spatio-temporal ResBlocks (a per-frame ResBlock, then a temporal
    ResBlock of (3, 1, 1) convolutions across frames, blended by a learned α — models/resnet.py), so the
    correction can use neighbouring frames.

Choices the paper leaves open (documented, configurable): the ResBlocks' width (`channels`; default the
UNet's width at the cut, 640 for SVD: 24.8 M parameters, 31.4 M spatio-temporal; the paper's SD adaptor has
14 M), r_in joined by concatenation before the first ResBlock, the image embedding added to the features after
conv_down, the transposed conv 2×2 with stride 2 (no overlap; odd map sizes are cropped back to r_out's).
The adaptor is an nnx.Module with its own config dataclass (a JSON-ready dict both ways), so a distillation
phase can build, train and save it like any other module of this package.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, NamedTuple

import jax.numpy as jnp
from flax import nnx

from mvd_jax.errors import UserError
from mvd_jax.models.layers import Conv, Linear, param
from mvd_jax.models.resnet import ResnetBlock2D, SpatioTemporalResBlock
from mvd_jax.models.unet_config import GROUPS, UNetConfig
from mvd_jax.models.unet_split import check_cut_level, forward_high_in, forward_high_out, forward_low, split_channels

ADAPTOR_KINDS = ("identity", "resnet", "spatiotemporal")


@dataclasses.dataclass(frozen=True)
class ClockworkConfig:
    """The adaptor's architecture and where it sits. Defaults: SVD's UNet cut below its top level."""

    kind: str = "resnet"
    cut_level: int = 1  # models/unet_split.py: 1 = below the top level (the paper's cut)
    in_channels: int = 320  # r_in's: block_out_channels[cut_level − 1]
    out_channels: int = 640  # r_out's: block_out_channels[cut_level]
    channels: int = 640  # the ResBlocks' width
    temb_channels: int = 1280  # the UNet's time embedding: 4·block_out_channels[0]
    image_embed_dim: int = 1024  # the CLIP image embedding: the UNet's cross_attention_dim
    num_res_blocks: int = 2

    @classmethod
    def for_unet(cls, unet_config: UNetConfig, kind: str = "resnet", cut_level: int = 1,
                 channels: int | None = None, num_res_blocks: int = 2) -> "ClockworkConfig":
        """The adaptor that fits `unet_config` at `cut_level`; `channels` defaults to r_out's width."""
        r_in, r_out = split_channels(unet_config, cut_level)
        return cls(kind=kind, cut_level=cut_level, in_channels=r_in, out_channels=r_out,
                   channels=r_out if channels is None else channels, temb_channels=unet_config.time_embed_dim,
                   image_embed_dim=unet_config.context_dims[0], num_res_blocks=num_res_blocks)

    def check_unet(self, unet_config: UNetConfig) -> None:
        """UserError unless this adaptor fits the UNet (its cut exists, the widths match)."""
        check_cut_level(unet_config, self.cut_level)
        fit = ClockworkConfig.for_unet(unet_config, self.kind, self.cut_level, self.channels)
        wrong = [f"{k} {getattr(self, k)} (the UNet's: {getattr(fit, k)})"
                 for k in ("in_channels", "out_channels", "temb_channels", "image_embed_dim")
                 if getattr(self, k) != getattr(fit, k)]
        if wrong:
            raise UserError(f"the Clockwork adaptor does not fit this UNet at cut_level {self.cut_level}: "
                            + ", ".join(wrong))

    # ---- serialisation (a run's config.json, a checkpoint's metadata) -----------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d) -> "ClockworkConfig":
        d = dict(d)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise UserError(f"unknown Clockwork adaptor config key(s) {unknown}; known keys: {sorted(fields)}")
        try:
            return cls(**d)
        except TypeError as e:
            raise UserError(f"invalid Clockwork adaptor config: {e}") from None

    @classmethod
    def from_json(cls, text: str) -> "ClockworkConfig":
        try:
            return cls.from_dict(json.loads(text))
        except (json.JSONDecodeError, TypeError) as e:
            raise UserError(f"invalid Clockwork adaptor config JSON: {e}") from None

    def __post_init__(self):
        if self.kind not in ADAPTOR_KINDS:
            raise UserError(f"Clockwork adaptor kind must be one of {ADAPTOR_KINDS}, got {self.kind!r}")
        for name in ("cut_level", "in_channels", "out_channels", "channels", "temb_channels", "image_embed_dim",
                     "num_res_blocks"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserError(f"Clockwork adaptor {name} must be a positive integer, got {v!r}")
        for name in ("in_channels", "channels"):  # GroupNorm's groups in the ResBlocks
            if getattr(self, name) % GROUPS:
                raise UserError(f"Clockwork adaptor {name} must be a multiple of {GROUPS}, got {getattr(self, name)}")


class ConvTranspose2x2(nnx.Module):
    """torch's ConvTranspose2d(kernel_size=2, stride=2) channels-last: every input pixel becomes a 2×2 patch of
    output pixels, the patches do not overlap. kernel (2, 2, C_in, C_out); one product over channels, so its
    FLOPs are exactly the dense count (eval/flops.py). `zero_init`: kernel and bias start at 0."""

    def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs, zero_init: bool = False):
        init = nnx.initializers.zeros if zero_init else nnx.initializers.lecun_normal()
        self.kernel = param(rngs, init, (2, 2, in_features, out_features), (None, None, "conv_in", "conv_out"))
        self.bias = param(rngs, nnx.initializers.zeros, (out_features,), ("conv_out",))

    def __call__(self, x):
        n, h, w, _ = x.shape
        y = jnp.einsum("nhwc,ijcd->nhiwjd", x, self.kernel[...].astype(x.dtype))
        return y.reshape(n, 2 * h, 2 * w, -1) + self.bias[...].astype(x.dtype)


class ClockworkAdaptor(nnx.Module):
    """ϕ(r_in^t, r_out^{t+1}, t_emb, image_emb) → r̂_out^t (module docstring). The "identity" kind has no
    parameters and returns r_out^{t+1}."""

    def __init__(self, config: ClockworkConfig, *, rngs: nnx.Rngs):
        self.config = c = config
        if c.kind == "identity":
            return
        self.conv_down = Conv(c.out_channels, c.channels, (3, 3), strides=(2, 2), padding=(1, 1), rngs=rngs)
        self.image_proj = Linear(c.image_embed_dim, c.channels, rngs=rngs)
        blocks = []
        for i in range(c.num_res_blocks):
            width = c.channels + c.in_channels if i == 0 else c.channels  # the first one also reads r_in
            if c.kind == "spatiotemporal":
                blocks.append(SpatioTemporalResBlock(width, c.channels, c.temb_channels, eps=1e-5, rngs=rngs))
            else:
                blocks.append(ResnetBlock2D(width, c.channels, c.temb_channels, eps=1e-5, rngs=rngs))
        self.resnets = nnx.List(blocks)
        self.conv_up = ConvTranspose2x2(c.channels, c.out_channels, zero_init=True, rngs=rngs)

    def __call__(self, r_in, r_out_next, temb, image_emb):
        """r_in (B, T, h, w, in_channels), r_out_next = r_out^{t+1} (B, T, H, W, out_channels) with h = ⌈H/2⌉,
        w = ⌈W/2⌉ (what the UNet's split gives), temb (B, temb_channels), image_emb (B, 1, D) or (B, D).
        Returns r̂_out^t, shaped like r_out_next."""
        c = self.config
        if c.kind == "identity":
            return r_out_next
        b, t, hh, ww, cout = r_out_next.shape
        expect_in = (b, t, -(-hh // 2), -(-ww // 2), c.in_channels)
        if cout != c.out_channels or tuple(r_in.shape) != expect_in:
            raise ValueError(f"the adaptor takes r_out (B, T, H, W, {c.out_channels}) and r_in {expect_in}; got "
                             f"r_out {tuple(r_out_next.shape)} and r_in {tuple(r_in.shape)}")
        if temb.shape != (b, c.temb_channels):
            raise ValueError(f"temb must be ({b}, {c.temb_channels}), got {tuple(temb.shape)}")
        image_emb = image_emb.reshape(b, -1)
        if image_emb.shape[1] != c.image_embed_dim:
            raise ValueError(f"image_emb must be one {c.image_embed_dim}-wide embedding per clip, "
                             f"got {tuple(image_emb.shape)}")
        dtype = r_out_next.dtype

        h = self.conv_down(r_out_next.reshape(b * t, hh, ww, cout))
        h = h + jnp.repeat(self.image_proj(image_emb.astype(dtype)), t, axis=0)[:, None, None, :]
        h = jnp.concatenate([h, r_in.reshape(b * t, *r_in.shape[2:]).astype(dtype)], axis=-1)
        temb = jnp.repeat(temb.astype(dtype), t, axis=0)  # per frame, as the UNet's blocks take it
        image_only = jnp.zeros((b, t), dtype)  # the spatio-temporal blocks' blend: every frame is video
        for block in self.resnets:
            h = block(h, temb, image_only) if c.kind == "spatiotemporal" else block(h, temb)
        delta = self.conv_up(h)[:, :hh, :ww]  # 2·⌈H/2⌉ ≥ H: crop odd sizes back
        return r_out_next + delta.reshape(b, t, hh, ww, cout)


def build_adaptor(config: ClockworkConfig, seed: int = 0) -> ClockworkAdaptor:
    return ClockworkAdaptor(config, rngs=nnx.Rngs(seed))


def abstract_adaptor(config: ClockworkConfig) -> ClockworkAdaptor:
    """The adaptor with ShapeDtypeStruct leaves (a restore target; FLOP counting)."""
    return nnx.eval_shape(lambda: build_adaptor(config))


def identity_adaptor(unet_config: UNetConfig, cut_level: int = 1) -> ClockworkAdaptor:
    return build_adaptor(ClockworkConfig.for_unet(unet_config, "identity", cut_level))


# ---- the UNet and the adaptor as the clock sampler calls them ------------------------------------------
class ClockworkParts(NamedTuple):
    """The four functions the clock sampler (diffusion/samplers.clockwork_euler_sample) runs a step with."""
    high_in: Callable  # (unet_input, c_noise, context, added_time_ids) → HighResState
    low: Callable  # HighResState → r_out
    adapt: Callable  # (HighResState, r_out of the previous step) → r̂_out
    high_out: Callable  # (HighResState, r_out) → the UNet's output


def clockwork_parts(unet, adaptor: ClockworkAdaptor) -> ClockworkParts:
    """The UNet cut where `adaptor` sits, and the adaptor fed from the UNet's state."""
    adaptor.config.check_unet(unet.config)
    cut = adaptor.config.cut_level
    return ClockworkParts(
        high_in=lambda x, c_noise, context, ids: forward_high_in(unet, x, c_noise, context, ids, cut_level=cut),
        low=lambda state: forward_low(unet, state),
        adapt=lambda state, r_out_next: adaptor(state.r_in, r_out_next, state.emb, state.context),
        high_out=lambda state, r_out: forward_high_out(unet, state, r_out))
