"""The UNet's configuration, keyed exactly like diffusers' `UNetSpatioTemporalConditionModel` config.

A diffusers `unet/config.json` loads into `UNetConfig.from_dict` unchanged (its bookkeeping keys that
start with "_" and the unused `sample_size` are accepted and ignored). Any other unknown key is an
error: a typo must not silently fall back to a default.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

from mvd_jax.errors import UserError

DOWN_BLOCK_TYPES = ("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal")
UP_BLOCK_TYPES = ("CrossAttnUpBlockSpatioTemporal", "UpBlockSpatioTemporal")
GROUPS = 32  # every GroupNorm in the SVD UNet uses 32 groups

# diffusers writes these into config.json; they do not describe the architecture.
_IGNORED_KEYS = ("sample_size",)


class PerBlockViews:
    """What diffusers' UNet configs share: the per-level structure check (`_check_levels`), settings given as one
    int or one value per resolution level, read per level (`layers`, `context_dims`, `transformer_layers`), and the
    time embedding's width (4 × the first level's).
    Mixed into UNetConfig (SVD) and UNet2DConditionConfig (SD-1.5); each names its own head-count key."""

    def _check_levels(self, *positive: str) -> int:
        """UserError unless the named fields are positive integers, block_out_channels too, and the down/up block
        types give one per level; returns the number of levels."""
        for name in positive:
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise UserError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not all(isinstance(c, int) and c > 0 for c in self.block_out_channels):
            raise UserError(f"block_out_channels must be positive integers, got {self.block_out_channels!r}")
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise UserError(f"down_block_types ({len(self.down_block_types)}), up_block_types "
                            f"({len(self.up_block_types)}) and block_out_channels ({n}) must have the same length")
        return n

    def _per_block(self, v) -> tuple:
        return (v,) * len(self.block_out_channels) if isinstance(v, int) else tuple(v)

    @property
    def layers(self) -> tuple[int, ...]:
        return self._per_block(self.layers_per_block)

    @property
    def context_dims(self) -> tuple[int, ...]:
        return self._per_block(self.cross_attention_dim)

    @property
    def transformer_layers(self) -> tuple[int, ...]:
        return self._per_block(self.transformer_layers_per_block)

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.block_out_channels[0]


@dataclasses.dataclass(frozen=True)
class UNetConfig(PerBlockViews):
    """Architecture of the SVD spatio-temporal UNet. Defaults are SVD's (stable-video-diffusion-img2vid)."""

    in_channels: int = 8
    out_channels: int = 4
    down_block_types: tuple[str, ...] = (
        "CrossAttnDownBlockSpatioTemporal",
        "CrossAttnDownBlockSpatioTemporal",
        "CrossAttnDownBlockSpatioTemporal",
        "DownBlockSpatioTemporal",
    )
    up_block_types: tuple[str, ...] = (
        "UpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
    )
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    addition_time_embed_dim: int = 256
    projection_class_embeddings_input_dim: int = 768
    layers_per_block: int | tuple[int, ...] = 2
    cross_attention_dim: int | tuple[int, ...] = 1024
    transformer_layers_per_block: int | tuple[int, ...] = 1
    num_attention_heads: int | tuple[int, ...] = (5, 10, 20, 20)
    # Only recorded (diffusers uses it for nothing in the forward either); frames come from the input.
    num_frames: int = 25

    # ---- MobileVD options: not diffusers keys; the defaults give SVD's UNet -------------------------
    # §2(c): 1-token cross-attention computed as to_out(to_v(context)) broadcast (models/attention.py).
    collapse_cross_attention: bool = False
    # §2(b): halve the frame axis below the top resolution level (models/multiscale.py).
    temporal_multiscale: bool = False
    # Table 3: an extra 2× spatial reduction below the top level (models/multiscale.py).
    spatial_multiscale: bool = False
    # §2(e): gates on the 38 temporal blocks: None, "sampled" (MobileVD) or "l1" (Table 6 baseline).
    temporal_gating: str | None = None
    # Temporal blocks physically removed, by name (see models/gates.py: temporal_block_names).
    pruned_temporal_blocks: tuple[str, ...] = ()
    # §2(d): channel funnels with fun-factor r (models/funnels.py) on self-attention ("attention") or
    # on the res-blocks' inner channels ("conv"); merged = folded into the weights (inference form).
    funnel_factor: float | None = None
    funnel_target: str = "attention"
    funnels_merged: bool = False
    # Table 5 baseline: self-attention projections as rank-r truncated SVDs (models/low_rank.py).
    low_rank_factor: float | None = None
    # Guidance distillation (train.phase guidance_distill with guidance.model "svd"; models/guidance_embedding.py):
    # the UNet reads this many guidance scales — 1: the largest scale of SVD's frame-wise guidance ramp (from 1
    # at the first frame) — added in every res-block through zero-initialised projections, so ONE pass per
    # sampling step replaces the guided two. 0: none (SVD's UNet).
    guidance_scales: int = 0

    # ---- construction / validation -------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "UNetConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in d if k not in fields and not k.startswith("_") and k not in _IGNORED_KEYS)
        if unknown:
            raise UserError(f"unknown UNet config key(s) {unknown}; known keys: {sorted(fields)}")
        kwargs = {k: _freeze(v) for k, v in d.items() if k in fields}
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as e:  # e.g. a string where a list of ints belongs
            if isinstance(e, UserError):
                raise
            raise UserError(f"invalid UNet config: {e}") from None

    @classmethod
    def from_json(cls, path) -> "UNetConfig":
        try:
            with open(path) as f:
                d = json.load(f)
        except FileNotFoundError:
            raise UserError(f"config file not found: {path}") from None
        except json.JSONDecodeError as e:
            raise UserError(f"config file {path} is not valid JSON: {e}") from None
        if not isinstance(d, dict):
            raise UserError(f"config file {path} must hold a JSON object")
        return cls.from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-ready dict (lists, not tuples)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    def to_diffusers_dict(self) -> dict[str, Any]:
        """Only diffusers' keys, for a config.json that diffusers reads. Refuses MobileVD structures that
        diffusers' UNetSpatioTemporalConditionModel cannot represent (the collapse changes no weights)."""
        structural = [k for k in MOBILEVD_KEYS if k != "collapse_cross_attention"
                      and getattr(self, k) != getattr(UNetConfig, k)]
        if structural:
            raise UserError(f"diffusers cannot represent a UNet with {structural}; export it instead")
        return {k: v for k, v in self.to_dict().items() if k not in MOBILEVD_KEYS}

    @property
    def is_svd(self) -> bool:
        return all(getattr(self, k) == getattr(UNetConfig, k) for k in MOBILEVD_KEYS)

    def __post_init__(self):
        n = self._check_levels("in_channels", "out_channels", "addition_time_embed_dim",
                               "projection_class_embeddings_input_dim")
        for t in self.down_block_types:
            if t not in DOWN_BLOCK_TYPES:
                raise UserError(f"unsupported down block type {t!r}; expected one of {DOWN_BLOCK_TYPES}")
        for t in self.up_block_types:
            if t not in UP_BLOCK_TYPES:
                raise UserError(f"unsupported up block type {t!r}; expected one of {UP_BLOCK_TYPES}")
        for name in ("layers_per_block", "cross_attention_dim", "transformer_layers_per_block", "num_attention_heads"):
            v = getattr(self, name)
            if not isinstance(v, int) and len(v) != n:
                raise UserError(f"{name} has {len(v)} entries, expected {n} (one per block)")
        for i, c in enumerate(self.block_out_channels):
            if c % GROUPS:
                raise UserError(f"block_out_channels[{i}]={c} is not divisible by {GROUPS} (GroupNorm groups)")
            if c % self.heads[i]:
                raise UserError(f"block_out_channels[{i}]={c} is not divisible by num_attention_heads {self.heads[i]}")
        if self.funnel_factor is not None and not 0 < self.funnel_factor <= 1:
            raise UserError(f"funnel_factor must be in (0, 1], got {self.funnel_factor}")
        if self.low_rank_factor is not None and not 0 < self.low_rank_factor <= 1:
            raise UserError(f"low_rank_factor must be in (0, 1], got {self.low_rank_factor}")
        if self.funnel_target not in ("attention", "conv"):
            raise UserError(f"funnel_target must be 'attention' or 'conv', got {self.funnel_target!r}")
        if self.temporal_gating not in (None, "sampled", "l1"):
            raise UserError(f"temporal_gating must be None, 'sampled' or 'l1', got {self.temporal_gating!r}")
        if (self.temporal_multiscale or self.spatial_multiscale) and n < 2:
            raise UserError("multiscaling needs at least two resolution levels")
        if isinstance(self.guidance_scales, bool) or not isinstance(self.guidance_scales, int) \
                or self.guidance_scales < 0:
            raise UserError(f"guidance_scales must be an integer ≥ 0, got {self.guidance_scales!r}")
        if self.guidance_scales and self.funnel_factor is not None and self.funnel_target == "conv":
            raise UserError("guidance_scales with convolution funnels is not supported (the funnel merge does not "
                            "fold the guidance projections)")
        if self.projection_class_embeddings_input_dim % self.addition_time_embed_dim:
            raise UserError("projection_class_embeddings_input_dim must be a multiple of addition_time_embed_dim")

    @property
    def heads(self) -> tuple[int, ...]:
        return self._per_block(self.num_attention_heads)

    @property
    def num_added_time_ids(self) -> int:
        return self.projection_class_embeddings_input_dim // self.addition_time_embed_dim


def _freeze(v):
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    return v


MOBILEVD_KEYS = ("collapse_cross_attention", "temporal_multiscale", "spatial_multiscale", "temporal_gating",
                 "pruned_temporal_blocks", "funnel_factor", "funnel_target", "funnels_merged", "low_rank_factor",
                 "guidance_scales")
