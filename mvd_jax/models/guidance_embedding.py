"""The guidance-scale embedding of MoViE's multimodal guidance distillation (arXiv 2412.06578 Algorithm 1;
mobilevd_paper.md §6.1).

A guided sampler runs the UNet once per guidance branch and mixes the outputs with the scales s_I (image) and
s_T (text): 3 passes per step for InstructPix2Pix. The distilled student is the same UNet that also *reads* the
scales and returns the mixture in one pass. The scales enter like the timestep does:

    each scale s_k → sinusoidal embedding of s_k · SCALE_MULTIPLIER (diffusers' get_timestep_embedding, the
                     UNet's own frequencies and layout), the K embeddings concatenated
                 → linear → SiLU → linear  (the TimestepEmbedding MLP): g, time_embed_dim wide
    every ResNet block adds guidance_emb_proj(SiLU(g)) to its hidden state, beside time_emb_proj(SiLU(temb))
                 (models/resnet.py ResnetBlock2D `guidance_channels`)

Every guidance_emb_proj starts at zero, so the student starts as the teacher's fully conditional model
ε(x, c_I, c_T) — the paper's initialisation — while the MLP starts at random (a zero MLP would leave the
projections without gradient).

SCALE_MULTIPLIER: the sinusoids were made for timesteps 0…1000; the scales are 1…14, so they are multiplied
by 100 before embedding (as LCM's guidance embedding multiplies w by 1000 for w in 0…15-ish): a step of 0.1 in
a scale then moves the fastest sinusoid by 10 radians and the slowest stays informative over the range.
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from mvd_jax.models.layers import TimestepEmbedding, timestep_embedding

SCALE_MULTIPLIER = 100.0
PROJECTION = ".guidance_emb_proj."  # in the torch-style name of every res-block's projection
EMBEDDING = "guidance_embedding."  # the MLP's names start so


def is_guidance_tensor(name: str) -> bool:
    return name.startswith(EMBEDDING) or PROJECTION in name


def with_fresh_guidance(tensors: dict, expected: dict, embedding: "GuidanceEmbedding") -> dict:
    """`tensors` (a checkpoint's, torch-style names) completed with the guidance weights a UNet built with
    guidance_scales expects (`expected`: name → torch shape) when the checkpoint has none of them: every
    res-block's projection at zero, the embedding's MLP from `embedding` (a freshly initialised module). A
    checkpoint with some of them is returned unchanged (the strict load then names anything missing)."""
    import numpy as np

    from mvd_jax.models.tensors import module_to_tensors

    if any(is_guidance_tensor(k) for k in tensors):
        return tensors
    out = dict(tensors)
    out.update({k: np.zeros(shape, np.float32) for k, shape in expected.items() if PROJECTION in k})
    out.update({EMBEDDING + k: v for k, v in module_to_tensors(embedding).items()})
    return out


class GuidanceEmbedding(nnx.Module):
    """(B, K) guidance scales → (B, out_channels): K sinusoidal embeddings of `channels` each, concatenated,
    through diffusers' TimestepEmbedding MLP (linear_1 → SiLU → linear_2)."""

    def __init__(self, num_scales: int, channels: int, out_channels: int, *, flip_sin_to_cos: bool = True,
                 freq_shift: float = 0.0, rngs: nnx.Rngs):
        if num_scales < 1:
            raise ValueError(f"num_scales must be ≥ 1, got {num_scales}")
        self.num_scales, self.channels = num_scales, channels
        self.flip_sin_to_cos, self.freq_shift = flip_sin_to_cos, freq_shift
        self.mlp = TimestepEmbedding(num_scales * channels, out_channels, rngs=rngs)

    def __call__(self, scales, dtype=jnp.float32):
        scales = jnp.asarray(scales, jnp.float32)
        if scales.ndim != 2 or scales.shape[1] != self.num_scales:
            raise ValueError(f"guidance scales must be (batch, {self.num_scales}), got {scales.shape}")
        b = scales.shape[0]
        emb = timestep_embedding(scales.reshape(-1) * SCALE_MULTIPLIER, self.channels,
                                 flip_sin_to_cos=self.flip_sin_to_cos, downscale_freq_shift=self.freq_shift)
        return self.mlp(emb.reshape(b, self.num_scales * self.channels).astype(dtype))
