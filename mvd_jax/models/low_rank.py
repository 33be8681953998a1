"""Truncated-SVD low-rank attention layers: the width-reduction baseline of MobileVD's Table 5.

"Finetuned low-rank approximation of individual attention layers with truncated singular
decomposition": each projection of every self-attention (to_q, to_k, to_v, to_out of `attn1`, the
layers the funnels act on) becomes two linears, W ≈ up·down with rank k = round(r·min(in, out)),
initialised from W's truncated SVD (down = Σ_k^½ V_kᵀ, up = U_k Σ_k^½; the bias stays on `up`).
Unlike funnels, each layer is factored on its own: at r = 0.5 a square layer costs as much as before
(Table 5: 8.6 TFLOPs), at r = 0.25 half.
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np
from flax import nnx

from mvd_jax.errors import UserError
from mvd_jax.models.layers import Linear


def low_rank_width(in_features: int, out_features: int, factor: float) -> int:
    return max(1, int(round(factor * min(in_features, out_features))))


class LowRankLinear(nnx.Module):
    """x @ down @ up + bias: a Linear of rank `rank`."""

    def __init__(self, in_features: int, out_features: int, rank: int, *, rngs: nnx.Rngs, use_bias: bool = True,
                 axes=("embed", "mlp")):
        self.down = Linear(in_features, rank, use_bias=False, axes=(axes[0], None), rngs=rngs)
        self.up = Linear(rank, out_features, use_bias=use_bias, axes=(None, axes[1]), rngs=rngs)

    def __call__(self, x):
        return self.up(self.down(x))


_PROJECTION = re.compile(r"^(.*\.attn1\.(?:to_q|to_k|to_v|to_out\.0))\.weight$")


def factorize_attention(model, factor: float):
    """A copy of `model` whose self-attention projections are rank-`factor` truncated SVDs of the originals."""
    from mvd_jax.models.unet_tensors import unet_from_tensors, unet_to_tensors

    if model.config.low_rank_factor is not None:
        raise UserError("the model's attention is already low-rank")
    if not 0 < factor <= 1:
        raise UserError(f"low-rank factor must be in (0, 1], got {factor}")
    tensors = unet_to_tensors(model)
    for name in sorted(m.group(1) for k in list(tensors) if (m := _PROJECTION.match(k))):
        w = tensors.pop(f"{name}.weight").astype(np.float64)  # (out, in)
        k = low_rank_width(w.shape[1], w.shape[0], factor)
        u, s, vt = np.linalg.svd(w, full_matrices=False)
        root = np.sqrt(s[:k])
        tensors[f"{name}.down.weight"] = (root[:, None] * vt[:k]).astype(np.float32)  # (k, in)
        tensors[f"{name}.up.weight"] = (u[:, :k] * root).astype(np.float32)  # (out, k)
        if f"{name}.bias" in tensors:
            tensors[f"{name}.up.bias"] = tensors.pop(f"{name}.bias")
    config = dataclasses.replace(model.config, low_rank_factor=factor)
    return unet_from_tensors(tensors, config, source="low-rank model")
