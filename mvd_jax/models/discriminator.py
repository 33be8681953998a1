"""SF-V's video discriminator: the frozen UNet encoder plus trainable spatial and temporal heads.

MobileVD reaches a single denoising step by adversarial finetuning and follows SF-V (Zhang et al.
2024; mobilevd_paper.md §2(f)). SF-V's discriminator D_φ is

* a **backbone**: the encoder (conv_in, the time and added-time embeddings, the down blocks and,
  optionally, the mid block) of the pretrained UNet — same architecture, weights copied, frozen;
* after each of its blocks, **one spatial head** that judges every frame on its own (features as
  (B·T, h, w, C)) and **one temporal head** that judges every location's trajectory over time
  (features as (B·h·w, T, C));
* heads **projection-conditioned** (Miyato & Koyama 2018): logit = ψ(φ) + ⟨embed(cond), φ⟩ on the
  head's last features φ, with cond built from the CLIP image embedding and the noise level σ′, plus
  the frame index for temporal heads.

D sees what the UNet would see at noise level σ′: the re-noised latents x′ = x0 + σ′ε scaled by
c_in(σ′), concatenated with the (unscaled) conditioning latent, with timestep c_noise(σ′) and the
added time ids (mvd_jax/diffusion/edm.py). `Discriminator.__call__` takes x′ and does the scaling, so
the R1 penalty (train/adversarial_loss.py) differentiates w.r.t. the noisy real latents x′.

Head layer stack — our choice; SF-V's Fig. 3 (the only place it is drawn) was not retrievable:

    conv_in   1×1 conv C_l → W                       (W = head_channels; one width for every level)
    residual  x + conv_k(SiLU(GroupNorm(x)))         (k×k conv over (h, w) for spatial heads,
                                                      length-k conv over T for temporal heads)
    φ         SiLU(GroupNorm(x))
    logit     to_logit(φ) + ⟨cond_proj(SiLU(cond)), φ⟩ / √W     (one logit per frame and location)

Why this stack: it is the StyleGAN-T / Projected-GAN idea — shallow heads on strong frozen features,
a 1×1 conv to a fixed width, one residual conv with a small receptive field, projection conditioning
at the end — with GroupNorm + SiLU (the UNet's own normalisation and activation) instead of
StyleGAN-T's BatchNorm + LeakyReLU. GroupNorm keeps every sample independent of the rest of the batch,
which the hinge loss on per-sample logits and the per-sample R1 penalty assume (BatchNorm would couple
real and fake samples). No spectral normalisation: it would add power-iteration state the trainer must
carry; the R1 penalty regularises D instead (left as an option for later). The temporal head's
GroupNorm spans its T frames of one location; the spatial head's spans the h×w map of one frame.
The conditioning vector is shared by all heads and computed once: cond = image_proj(RMS-normalised
mean of the image-embedding tokens) + noise_embedding(sinusoid(c_noise(σ′))), plus
frame_embedding(sinusoid(frame position)) for temporal heads; each head owns its `cond_proj` (Miyato's
embedding), like a UNet res-block owns its `time_emb_proj`. Heads are freshly initialised; only they
are trained.

Output: `DiscriminatorOutput(logits, heads)` — `heads` maps "spatial/down_blocks.0", "temporal/
down_blocks.0", …, ("…/mid_block" when enabled) to logit maps (B, T_l, h_l, w_l); `logits` (B,) is the
mean over heads of each head's mean logit, one score per sample (what R1 differentiates).
Sign convention (SF-V): D is trained to be **low on real** and high on fake (adversarial_loss.py).

Parameter paths: `backbone/conv_in/...`, `backbone/down_blocks/0/...` (the UNet's own names under
`backbone`) and `heads/condition/...`, `heads/spatial/0/...`, `heads/temporal/0/...`. The filters
`HEAD_PARAMS` and `BACKBONE_PARAMS` select them, so a trainer differentiates and optimises only
`HEAD_PARAMS` and keeps no optimizer state for the backbone.

The backbone runs with every temporal block on (no temporal gates) and, under temporal multiscaling,
takes the block-0 feature at the full frame rate (before the frame halving the UNet applies there);
the temporal heads of lower levels see the pooled frames at their original positions 0, 2, 4, ….
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mvd_jax.diffusion import edm
from mvd_jax.errors import UserError
from mvd_jax.models.layers import Conv, GroupNorm, Linear, TimestepEmbedding, statistics_dtype, timestep_embedding
from mvd_jax.models.unet import SpatioTemporalUNet, block_inputs, leave_top_level
from mvd_jax.models.unet_config import UNetConfig

# Parameter filters: the trainable heads and the frozen backbone.
HEAD_PARAMS = nnx.All(nnx.Param, nnx.PathContains("heads"))
BACKBONE_PARAMS = nnx.All(nnx.Param, nnx.PathContains("backbone"))


@dataclasses.dataclass(frozen=True)
class DiscriminatorConfig:
    """The discriminator's own choices (the backbone's architecture is the UNet's config)."""

    include_mid_block: bool = False  # SF-V: the 4 down blocks only; True adds heads after the mid block
    head_channels: int = 256  # W: every head's width
    cond_dim: int = 256  # width of the shared conditioning vector (and of its sinusoidal inputs)
    norm_groups: int = 32  # GroupNorm groups inside the heads (must divide head_channels)
    spatial_kernel: int = 3  # k×k conv of the spatial heads' residual layer
    temporal_kernel: int = 3  # length-k conv over frames in the temporal heads' residual layer

    def __post_init__(self):
        for name in ("head_channels", "cond_dim", "norm_groups", "spatial_kernel", "temporal_kernel"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise UserError(f"discriminator {name} must be a positive integer, got {v!r}")
        if self.head_channels % self.norm_groups:
            raise UserError(f"discriminator head_channels={self.head_channels} is not divisible by "
                            f"norm_groups={self.norm_groups}")
        for name in ("spatial_kernel", "temporal_kernel"):
            if getattr(self, name) % 2 == 0:
                raise UserError(f"discriminator {name} must be odd (symmetric padding), got {getattr(self, name)}")
        if not isinstance(self.include_mid_block, bool):
            raise UserError(f"discriminator include_mid_block must be a bool, got {self.include_mid_block!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DiscriminatorConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in d if k not in fields)
        if unknown:
            raise UserError(f"unknown discriminator config key(s) {unknown}; known keys: {sorted(fields)}")
        return cls(**dict(d))


def as_discriminator_config(config) -> DiscriminatorConfig:
    """None (defaults), a DiscriminatorConfig, a dict or an ml_collections ConfigDict."""
    if config is None:
        return DiscriminatorConfig()
    if isinstance(config, DiscriminatorConfig):
        return config
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    if isinstance(config, Mapping):
        return DiscriminatorConfig.from_dict(config)
    raise UserError(f"discriminator config must be a DiscriminatorConfig or a mapping, got {type(config).__name__}")


# ---- backbone --------------------------------------------------------------------------------
class Feature(NamedTuple):
    """One backbone feature: x (B·T_l, h, w, C) with its frame count T_l and frame positions (T_l,)."""
    name: str
    x: jax.Array
    frames: int
    positions: jax.Array


def _copied(module: nnx.Module) -> nnx.Module:
    """A deep copy with its own arrays: D's backbone must not alias the generator's buffers (the
    trainer updates and donates the generator's state while D keeps the pretrained weights)."""
    graphdef, state = nnx.split(module)
    return nnx.merge(graphdef, jax.tree.map(jnp.copy, state))


class UNetEncoder(nnx.Module):
    """The UNet's down path (and optionally its mid block) with the UNet's module names; returns the
    activation after every block.

    Built from a UNet instance, whose modules are copied (the UNet itself is left untouched). The
    forward repeats the first half of `SpatioTemporalUNet.__call__` (embeddings, per-frame inputs,
    multiscale hand-over after block 0); tests/test_discriminator.py checks it against the UNet's own
    forward and against diffusers' down blocks.
    """

    def __init__(self, unet: SpatioTemporalUNet, *, include_mid_block: bool):
        self.config: UNetConfig = unet.config
        self.conv_in = _copied(unet.conv_in)
        self.time_embedding = _copied(unet.time_embedding)
        self.add_embedding = _copied(unet.add_embedding)
        self.down_blocks = nnx.List([_copied(b) for b in unet.down_blocks])
        self.mid_block = _copied(unet.mid_block) if include_mid_block else None
        self.remat = False  # as SpatioTemporalUNet.remat: recompute each layer in the backward pass

    @property
    def feature_names(self) -> list[str]:
        names = [f"down_blocks.{i}" for i in range(len(self.down_blocks))]
        return names + (["mid_block"] if self.mid_block is not None else [])

    @property
    def feature_channels(self) -> list[int]:
        boc = list(self.config.block_out_channels)
        return boc + ([boc[-1]] if self.mid_block is not None else [])

    def _block(self, block, *args):
        return block(*args, remat=self.remat)

    def __call__(self, sample, timestep, encoder_hidden_states, added_time_ids,
                 image_only_indicator=None) -> list[Feature]:
        """sample (B, T, H, W, in_channels) exactly as the UNet takes it; timestep = c_noise, (B,) or scalar."""
        b, t, h, w, cin = sample.shape
        c = self.config
        top, low = block_inputs(c, self.time_embedding, self.add_embedding, sample, timestep, encoder_hidden_states,
                                added_time_ids, image_only_indicator)
        multiscale = c.temporal_multiscale or c.spatial_multiscale

        def feature(name, x, f):
            pos = jnp.arange(f["frames"]) if f["frame_positions"] is None else f["frame_positions"]
            return Feature(name, x, f["frames"], pos)

        x = self.conv_in(sample.reshape(b * t, h, w, cin))
        features = []
        for i, block in enumerate(self.down_blocks):
            f = top if i == 0 else low
            x, _ = self._block(block, x, f["temb"], f["image_only_indicator"], f["context"], f["frame_positions"], None)
            features.append(feature(f"down_blocks.{i}", x, f))
            if i == 0 and multiscale:  # the UNet's hand-over to the lower levels
                x = leave_top_level(c, x, b, t)
        if self.mid_block is not None:
            x = self._block(self.mid_block, x, low["temb"], low["image_only_indicator"], low["context"],
                            low["frame_positions"], None)
            features.append(feature("mid_block", x, low))
        return features


# ---- heads -----------------------------------------------------------------------------------
def _rms_normalize(x, eps: float = 1e-8):
    """x / RMS(x) over the last axis (StyleGAN's normalize_2nd_moment): the image embedding's scale is
    CLIP's, not ours; an all-zero embedding (conditioning dropout) stays zero."""
    x32 = x.astype(statistics_dtype(x))
    return (x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)).astype(x.dtype)


class ConditionEmbedding(nnx.Module):
    """The conditioning vector shared by all heads (pre-activation; each head applies SiLU + its projection)."""

    def __init__(self, context_dim: int, cond_dim: int, *, rngs: nnx.Rngs):
        self.cond_dim = cond_dim
        self.image_proj = Linear(context_dim, cond_dim, rngs=rngs)
        self.noise_embedding = TimestepEmbedding(cond_dim, cond_dim, rngs=rngs)
        self.frame_embedding = TimestepEmbedding(cond_dim, cond_dim, rngs=rngs)

    def clip(self, context, sigma):
        """context (B, S, D) image embedding tokens, sigma (B,) → (B, cond_dim)."""
        image = self.image_proj(_rms_normalize(jnp.mean(context, axis=1)))
        noise = self.noise_embedding(timestep_embedding(edm.c_noise(sigma), self.cond_dim).astype(context.dtype))
        return image + noise

    def frames(self, positions, dtype):
        """positions (T,) → (T, cond_dim)."""
        return self.frame_embedding(timestep_embedding(positions, self.cond_dim).astype(dtype))


class _Head(nnx.Module):
    """conv_in (1×1) → residual conv → SiLU(GroupNorm) → projection-conditioned logit, over `ndim` axes."""

    def __init__(self, in_channels: int, config: DiscriminatorConfig, kernel: tuple[int, ...], *, rngs: nnx.Rngs):
        w = config.head_channels
        ones = (1,) * len(kernel)
        self.conv_in = Conv(in_channels, w, ones, rngs=rngs)
        self.norm1 = GroupNorm(w, num_groups=config.norm_groups, eps=1e-5, rngs=rngs)
        self.conv1 = Conv(w, w, kernel, rngs=rngs)
        self.norm_out = GroupNorm(w, num_groups=config.norm_groups, eps=1e-5, rngs=rngs)
        self.to_logit = Linear(w, 1, rngs=rngs, axes=("embed", None))
        self.cond_proj = Linear(config.cond_dim, w, rngs=rngs)

    def features(self, x):
        h = self.conv_in(x)
        h = h + self.conv1(jax.nn.silu(self.norm1(h)))
        return jax.nn.silu(self.norm_out(h))


class SpatialHead(_Head):
    """Per frame: x (B·T, h, w, C), cond (B·T, cond_dim) → logits (B·T, h, w)."""

    def __init__(self, in_channels: int, config: DiscriminatorConfig, *, rngs: nnx.Rngs):
        super().__init__(in_channels, config, (config.spatial_kernel,) * 2, rngs=rngs)

    def __call__(self, x, cond):
        phi = self.features(x)
        proj = self.cond_proj(jax.nn.silu(cond))
        return self.to_logit(phi)[..., 0] + jnp.einsum("nhwc,nc->nhw", phi, proj) / np.sqrt(phi.shape[-1])


class TemporalHead(_Head):
    """Per location: x (B·M, T, C) with M locations per clip, cond (B, T, cond_dim) → logits (B·M, T)."""

    def __init__(self, in_channels: int, config: DiscriminatorConfig, *, rngs: nnx.Rngs):
        super().__init__(in_channels, config, (config.temporal_kernel,), rngs=rngs)

    def __call__(self, x, cond):
        b, t = cond.shape[:2]
        phi = self.features(x)
        proj = self.cond_proj(jax.nn.silu(cond))
        inner = jnp.einsum("bmtc,btc->bmt", phi.reshape(b, -1, t, phi.shape[-1]), proj).reshape(-1, t)
        return self.to_logit(phi)[..., 0] + inner / np.sqrt(phi.shape[-1])


class DiscriminatorHeads(nnx.Module):
    """All trainable parts: the shared condition embedding and one spatial + one temporal head per feature."""

    def __init__(self, feature_names, feature_channels, context_dim: int, config: DiscriminatorConfig, *,
                 rngs: nnx.Rngs):
        self.feature_names = tuple(feature_names)
        self.condition = ConditionEmbedding(context_dim, config.cond_dim, rngs=rngs)
        self.spatial = nnx.List([SpatialHead(c, config, rngs=rngs) for c in feature_channels])
        self.temporal = nnx.List([TemporalHead(c, config, rngs=rngs) for c in feature_channels])

    def __call__(self, features: list[Feature], sigma, context) -> dict[str, jax.Array]:
        """features from UNetEncoder; sigma (B,); context (B, S, D) → {"spatial/<name>": (B, T_l, h, w), …}."""
        names = tuple(f.name for f in features)
        if names != self.feature_names:
            raise ValueError(f"the heads were built for features {list(self.feature_names)}, got {list(names)}")
        b = context.shape[0]
        clip = self.condition.clip(context, sigma)  # (B, cond_dim)
        out = {}
        for feat, spatial, temporal in zip(features, self.spatial, self.temporal):
            _, h, w, ch = feat.x.shape
            t = feat.frames
            s = spatial(feat.x, jnp.repeat(clip, t, axis=0))
            out[f"spatial/{feat.name}"] = s.reshape(b, t, h, w)
            # (B·T, h, w, C) → (B·h·w, T, C): one sequence over frames per location.
            xt = feat.x.reshape(b, t, h, w, ch).transpose(0, 2, 3, 1, 4).reshape(b * h * w, t, ch)
            cond_t = clip[:, None, :] + self.condition.frames(feat.positions, clip.dtype)[None]
            tl = temporal(xt, cond_t)
            out[f"temporal/{feat.name}"] = tl.reshape(b, h, w, t).transpose(0, 3, 1, 2)
        return out


# ---- the discriminator -------------------------------------------------------------------------
class DiscriminatorOutput(NamedTuple):
    logits: jax.Array  # (B,): mean over heads of each head's mean logit
    heads: dict  # "spatial/down_blocks.0" … → (B, T_l, h_l, w_l)


def aggregate_logits(heads: Mapping[str, jax.Array]) -> jax.Array:
    """(B,) per-sample score: every head weighs the same, whatever its map size."""
    return jnp.mean(jnp.stack([v.reshape(v.shape[0], -1).mean(axis=1) for v in heads.values()]), axis=0)


class Discriminator(nnx.Module):
    """D(x′; σ′, cond): `backbone` (frozen UNet encoder) + `heads` (trainable). See the module docstring."""

    def __init__(self, unet: SpatioTemporalUNet, config=None, *, rngs: nnx.Rngs):
        config = as_discriminator_config(config)
        self.config = config
        self.backbone = UNetEncoder(unet, include_mid_block=config.include_mid_block)
        context_dims = set(unet.config.context_dims)
        if len(context_dims) != 1:
            raise UserError("the discriminator needs one cross_attention_dim for all blocks, "
                            f"got {sorted(context_dims)}")
        self.context_dim = context_dims.pop()
        self.heads = DiscriminatorHeads(self.backbone.feature_names, self.backbone.feature_channels,
                                        self.context_dim, config, rngs=rngs)

    def __call__(self, noisy, sigma, cond_latents, encoder_hidden_states, added_time_ids,
                 image_only_indicator=None) -> DiscriminatorOutput:
        """noisy: x′ = x0 + σ′ε (B, T, H, W, C); sigma: σ′, (B,) or scalar; cond_latents: (B, T, H, W, C)
        conditioning latent as the UNet takes it; encoder_hidden_states (B, S, D); added_time_ids (B, n)."""
        ucfg = self.backbone.config
        if noisy.ndim != 5:
            raise ValueError(f"noisy latents must be (B, T, H, W, C), got shape {noisy.shape}")
        b = noisy.shape[0]
        if cond_latents.shape != noisy.shape:
            raise ValueError(f"cond_latents {cond_latents.shape} must have the noisy latents' shape {noisy.shape}")
        if noisy.shape[-1] + cond_latents.shape[-1] != ucfg.in_channels:
            raise ValueError(f"noisy latents ({noisy.shape[-1]} channels) + conditioning latent "
                             f"({cond_latents.shape[-1]}) must give the UNet's in_channels={ucfg.in_channels}")
        if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[0] != b \
                or encoder_hidden_states.shape[-1] != self.context_dim:
            raise ValueError(f"encoder_hidden_states must be ({b}, S, {self.context_dim}), "
                             f"got {encoder_hidden_states.shape}")
        sigma = jnp.asarray(sigma, jnp.float32)  # c_in and c_noise in float32 whatever the activations' dtype
        if sigma.ndim > 1 or (sigma.ndim == 1 and sigma.shape[0] not in (1, b)):
            raise ValueError(f"sigma must be a scalar or ({b},), got shape {sigma.shape}")
        sigma = jnp.broadcast_to(sigma.reshape(-1), (b,))
        scale = edm.c_in(sigma).reshape(b, 1, 1, 1, 1).astype(noisy.dtype)
        sample = jnp.concatenate([scale * noisy, cond_latents.astype(noisy.dtype)], axis=-1)
        features = self.backbone(sample, edm.c_noise(sigma), encoder_hidden_states, added_time_ids,
                                 image_only_indicator)
        heads = self.heads(features, sigma, encoder_hidden_states.astype(noisy.dtype))
        return DiscriminatorOutput(aggregate_logits(heads), heads)


def discriminator_from_unet(unet: SpatioTemporalUNet, config=None, *, seed: int = 0) -> Discriminator:
    """D built from a (trained) UNet: backbone weights copied from it, heads freshly initialised from `seed`.

    config: a DiscriminatorConfig, a dict/ConfigDict of its fields, or None for the defaults.
    """
    return Discriminator(unet, config, rngs=nnx.Rngs(seed))


def abstract_discriminator(unet_config: UNetConfig, config=None) -> Discriminator:
    """The D of a UNet config with abstract (shape-only) variables, for restoring a checkpoint into
    (Orbax restores onto the `nnx.eval_shape` target; nothing is allocated)."""
    return nnx.eval_shape(lambda: discriminator_from_unet(SpatioTemporalUNet(unet_config, rngs=nnx.Rngs(0)), config))
