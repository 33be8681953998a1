"""The image UNet's configuration, keyed exactly like diffusers' `UNet2DConditionModel` config (SD-1.5,
InstructPix2Pix), plus MoViE's two options.

A diffusers `unet/config.json` loads into `UNet2DConditionConfig.from_dict` unchanged: its bookkeeping keys
(starting with "_") are ignored, the architecture keys this UNet implements become fields, and diffusers'
other keys (class embeddings, added embeddings, scale-shift res-blocks, ...) are accepted only at the value
SD-1.5 / InstructPix2Pix give them — any other value is an error naming the key, as is any key diffusers
does not have: a typo must not silently fall back to a default.

Field defaults are diffusers' own `__init__` defaults (old config.json files, SD-1.5's among them, omit keys
such as `use_linear_projection` and rely on them); `sd15()` and `instruct_pix2pix()` give the two published
UNets (they differ from the defaults in `cross_attention_dim` 768 and, for InstructPix2Pix, 8 input
channels: the noisy latent concatenated with the input image's latent).

diffusers' naming quirk, kept: `attention_head_dim` is the NUMBER of heads per block (8 in SD-1.5, so the
head width is channels / 8 = 40, 80, 160); `num_attention_heads` must stay None (diffusers refuses it too).
See https://github.com/huggingface/diffusers/issues/2011.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from mvd_jax.errors import UserError
from mvd_jax.models.unet_config import PerBlockViews

DOWN_BLOCK_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_BLOCK_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D")
MID_BLOCK_TYPES = ("UNetMidBlock2DCrossAttn",)

# diffusers keys this UNet implements only at one setting (SD-1.5's and InstructPix2Pix's), with that value.
# Keys that are only bookkeeping when their feature is off (addition_embed_type_num_heads) take any value.
_FIXED_KEYS: dict[str, Any] = {
    "center_input_sample": False,
    "only_cross_attention": False,
    "mid_block_only_cross_attention": (None, False),
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "dropout": 0.0,
    "act_fn": "silu",
    "reverse_transformer_layers_per_block": None,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "num_attention_heads": None,
    "dual_cross_attention": False,
    "class_embed_type": None,
    "addition_embed_type": None,
    "addition_time_embed_dim": None,
    "num_class_embeds": None,
    "resnet_time_scale_shift": "default",
    "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "time_embedding_act_fn": None,
    "timestep_post_act": None,
    "time_cond_proj_dim": None,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "projection_class_embeddings_input_dim": None,
    "attention_type": "default",
    "class_embeddings_concat": False,
    "cross_attention_norm": None,
}
_ANY_VALUE_KEYS = ("addition_embed_type_num_heads",)

MOVIE_KEYS = ("cross_frame_attention", "drop_top_attention", "guidance_scales")


@dataclasses.dataclass(frozen=True)
class UNet2DConditionConfig(PerBlockViews):
    """Architecture of the SD-1.5 UNet. Defaults are diffusers' UNet2DConditionModel defaults."""

    # Recorded only: the latent size the model was trained at (64 for SD-1.5); inputs may have any size.
    sample_size: int | tuple[int, ...] | None = None
    in_channels: int = 4
    out_channels: int = 4
    flip_sin_to_cos: bool = True
    freq_shift: float = 0
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                         "DownBlock2D")
    mid_block_type: str = "UNetMidBlock2DCrossAttn"
    up_block_types: tuple[str, ...] = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int | tuple[int, ...] = 2
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int | tuple[int, ...] = 1280
    transformer_layers_per_block: int | tuple[int, ...] = 1
    # The number of heads per block (diffusers' name; see the module docstring).
    attention_head_dim: int | tuple[int, ...] = 8
    # proj_in / proj_out of every Transformer2DModel: 1×1 convs (False, SD-1.5) or linear layers (True, SD-2.x).
    use_linear_projection: bool = False
    # Recorded only: diffusers computes q·kᵀ in float32 when set; our attention kernels always take the
    # logits and the softmax in float32 (float64 for float64 inputs), so the flag changes nothing here.
    upcast_attention: bool = False

    # ---- MoViE options: not diffusers keys; the defaults give diffusers' UNet --------------------------
    # Zero-shot video editing (MoViE §6.1): every frame's self-attention (attn1) attends to the keys and
    # values of one anchor frame — the middle one, index num_frames // 2 of each video — instead of its own.
    # A forward-mode switch: no parameter changes; the call's `num_frames` says how the batch splits into
    # videos (unet2d_condition.cross_frame_attention).
    cross_frame_attention: bool = False
    # Mobile-Pix2Pix (SnapFusion-style): no self-/cross-attention at the highest resolution — the first down
    # block and the last up block are built without their Transformer2DModels (diffusers' DownBlock2D /
    # UpBlock2D there). A base checkpoint loads by dropping exactly those attentions' tensors
    # (convert.diffusers_unet2d.load_unet2d(..., drop_unused=True)).
    drop_top_attention: bool = False
    # Multimodal guidance distillation (MoViE Algorithm 1; models/guidance_embedding.py): the number of guidance
    # scales the UNet reads (2: s_I and s_T), embedded and added in every ResNet block through zero-initialised
    # projections (`guidance_embedding`, `…resnets[j].guidance_emb_proj`); 0: none (diffusers' UNet). A base
    # checkpoint loads with the new weights created fresh (convert.diffusers_unet2d.load_unet2d(...,
    # guidance_scales=2)): the projections at zero, so the model computes what the checkpoint did.
    guidance_scales: int = 0

    # ---- presets ---------------------------------------------------------------------------------------
    @classmethod
    def sd15(cls, **overrides) -> "UNet2DConditionConfig":
        """runwayml/stable-diffusion-v1-5's UNet (859.5 M parameters)."""
        return cls(**{"cross_attention_dim": 768, "sample_size": 64, **overrides})

    @classmethod
    def instruct_pix2pix(cls, **overrides) -> "UNet2DConditionConfig":
        """timbrooks/instruct-pix2pix's UNet: SD-1.5 with 8 input channels (noisy latent ‖ image latent)."""
        return cls.sd15(**{"in_channels": 8, **overrides})

    # ---- construction / validation ----------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "UNet2DConditionConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        known = fields | set(_FIXED_KEYS) | set(_ANY_VALUE_KEYS)
        unknown = sorted(k for k in d if k not in known and not k.startswith("_"))
        if unknown:
            raise UserError(f"unknown UNet2DConditionModel config key(s) {unknown}; known keys: {sorted(known)}")
        unsupported = [f"{k}={d[k]!r} (supported: {_FIXED_KEYS[k]!r})" for k in sorted(_FIXED_KEYS)
                       if k in d and not _fixed_value_ok(d[k], _FIXED_KEYS[k])]
        if unsupported:
            raise UserError(f"unsupported UNet2DConditionModel config value(s): {', '.join(unsupported)}; this UNet "
                            "implements SD-1.5 / InstructPix2Pix's architecture")
        kwargs = {k: _freeze(v) for k, v in d.items() if k in fields}
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as e:
            if isinstance(e, UserError):
                raise
            raise UserError(f"invalid UNet2DConditionModel config: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        """All fields (MoViE options included) as a JSON-ready dict."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    def to_diffusers_dict(self) -> dict[str, Any]:
        """diffusers' keys for the SAME network: a UNet with drop_top_attention is diffusers' UNet2DConditionModel
        with DownBlock2D / UpBlock2D at the top level; cross_frame_attention changes no weights and is left out.
        (A UNet with guidance_scales has weights diffusers' class does not: its dict describes the rest.)"""
        d = {k: v for k, v in self.to_dict().items() if k not in MOVIE_KEYS}
        d["down_block_types"], d["up_block_types"] = list(self.down_types), list(self.up_types)
        return d

    def __post_init__(self):
        n = self._check_levels("in_channels", "out_channels", "norm_num_groups")
        for t in self.down_block_types:
            if t not in DOWN_BLOCK_TYPES:
                raise UserError(f"unsupported down block type {t!r}; expected one of {DOWN_BLOCK_TYPES}")
        for t in self.up_block_types:
            if t not in UP_BLOCK_TYPES:
                raise UserError(f"unsupported up block type {t!r}; expected one of {UP_BLOCK_TYPES}")
        if self.mid_block_type not in MID_BLOCK_TYPES:
            raise UserError(f"unsupported mid_block_type {self.mid_block_type!r}; expected one of {MID_BLOCK_TYPES}")
        for name in ("layers_per_block", "cross_attention_dim", "transformer_layers_per_block", "attention_head_dim"):
            v = getattr(self, name)
            values = (v,) if isinstance(v, int) else v
            if not isinstance(values, tuple) or not all(
                    isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in values):
                raise UserError(f"{name} must be a positive integer or one per block, got {v!r}")
            if not isinstance(v, int) and len(v) != n:
                raise UserError(f"{name} has {len(values)} entries, expected {n} (one per block)")
        for i, c in enumerate(self.block_out_channels):
            if c % self.norm_num_groups:
                raise UserError(f"block_out_channels[{i}]={c} is not divisible by norm_num_groups "
                                f"{self.norm_num_groups}")
            if c % self.heads[i]:
                raise UserError(f"block_out_channels[{i}]={c} is not divisible by its {self.heads[i]} attention heads")
        if isinstance(self.guidance_scales, bool) or not isinstance(self.guidance_scales, int) \
                or self.guidance_scales < 0:
            raise UserError(f"guidance_scales must be an integer ≥ 0, got {self.guidance_scales!r}")
        for name in ("flip_sin_to_cos", "use_linear_projection", "upcast_attention", "cross_frame_attention",
                     "drop_top_attention"):
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"{name} must be true or false, got {getattr(self, name)!r}")

    @property
    def heads(self) -> tuple[int, ...]:
        return self._per_block(self.attention_head_dim)  # diffusers' name for SD's head count


    @property
    def down_types(self) -> tuple[str, ...]:
        """The down blocks as built: with drop_top_attention the first one has no attentions."""
        if not self.drop_top_attention:
            return tuple(self.down_block_types)
        return ("DownBlock2D", *self.down_block_types[1:])

    @property
    def up_types(self) -> tuple[str, ...]:
        """The up blocks as built: with drop_top_attention the last one has no attentions."""
        if not self.drop_top_attention:
            return tuple(self.up_block_types)
        return (*self.up_block_types[:-1], "UpBlock2D")

    @property
    def removed_attention_prefixes(self) -> tuple[str, ...]:
        """diffusers-name prefixes of the attentions drop_top_attention removes from a base checkpoint."""
        n = len(self.block_out_channels)
        out = []
        if self.down_types[0] != self.down_block_types[0]:
            out.append("down_blocks.0.attentions.")
        if self.up_types[-1] != self.up_block_types[-1]:
            out.append(f"up_blocks.{n - 1}.attentions.")
        return tuple(out)


def _fixed_value_ok(value, allowed) -> bool:
    options = allowed if isinstance(allowed, tuple) else (allowed,)
    # `type(...) is bool` on both sides keeps 0 == False and 1 == True from passing for each other.
    return any(value == a and (type(value) is bool) == (type(a) is bool) for a in options)


def _freeze(v):
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    return v
