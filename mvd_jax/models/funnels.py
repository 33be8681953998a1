"""Channel funnels with coupled singular initialisation (MobileVD §2(d), Fig. 3, Tables 4–5).

"A channel funnel is placed between two affine layers, reducing intermediate channel dimensionality.
At training time, funnels serve as adaptors reducing model width. At inference, they are merged with
corresponding weight matrices without loss of quality." Placement (inferred from the paper's FLOPs,
mobilevd_paper.md §2(d)): the (to_q, to_k) and (to_v, to_out) pairs of every self-attention (`attn1`)
in the spatial and temporal transformer blocks, per head: head width d_h → d' = round(r·d_h) with the
head count unchanged. In each pair nothing nonlinear sits between the two affine maps:

    logits_h = x W_qʰᵀ W_kʰ yᵀ            out_h = A_h y W_vʰᵀ W_oʰᵀ

so with a left factor L and a right factor R (L = W_qʰᵀ, R = W_kʰ; or L = W_oʰ, R = W_vʰ) the pair
computes L·R, and funnels P (d_h×d'), Q (d'×d_h) turn it into L·P·Q·R.

Coupled singular initialisation (CSI; the paper names it, the formula is our reconstruction): choose
P and Q jointly so that L·P·Q·R is the best rank-d' approximation of L·R (Eckart–Young):
    L = Q_L R_L,  Rᵀ = Q_R R_R  (thin QR);   R_L R_Rᵀ = U Σ Vᵀ  (d_h×d_h SVD)
    P = R_L⁻¹ U_r Σ_r^½,   Q = Σ_r^½ V_rᵀ R_R⁻ᵀ     ⇒   L P Q R = Q_L U_r Σ_r V_rᵀ Q_Rᵀ
At r = 1 P·Q = I and the model is unchanged. Pseudo-inverses guard against singular R factors.
"He" initialisation (the paper's ablation) draws P, Q from N(0, 2/fan_in).

Stored (JAX layout, per head): funnel_q = P of (q,k) ; funnel_k = Qᵀ ; funnel_v = Qᵀ of (v,o) ;
funnel_o = Pᵀ of (v,o). `merge_funnels` folds them into to_q/to_k/to_v/to_out (kernel·funnel),
giving a plain model of inner width heads·d' that computes the same function.

Convolution funnels (Table 5's ablation, target "conv"; placement is our inference): the inner
width of every spatial res-block, between conv1 (+ time embedding) and conv2, goes C → r·C (rounded
to GroupNorm's 32 groups): funnel_1 after conv1, funnel_2 before conv2, norm2 over the funneled
channels. This reproduces Table 5's 7.2 TFLOPs within 2 %, and merging is exact (the funnels are
linear maps next to conv1 and conv2). GroupNorm + SiLU sit between the two, so no coupled closed form
exists; the "csi" init here is our analogue: funnel_1 projects onto the top-r left singular vectors
of conv1's weight (its dominant output directions), funnel_2 maps back with their transpose, and
norm2 keeps the original per-channel affine where it can (its first r·C entries) — so r = 1 is not
an identity for conv funnels (GroupNorm does not commute with the rotation).
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np

from mvd_jax.errors import UserError

_ATTN1 = re.compile(r"^(.*\.(?:transformer_blocks|temporal_transformer_blocks)\.\d+\.attn1)\.to_q\.weight$")


def csi_pair(left: np.ndarray, right: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """P (d×rank), Q (rank×d) with left·P·Q·right = best rank-`rank` approximation of left·right.

    left: (m, d), right: (d, n); computed in float64.
    """
    left, right = np.asarray(left, np.float64), np.asarray(right, np.float64)
    _, r_left = np.linalg.qr(left)
    _, r_right = np.linalg.qr(right.T)
    u, s, vt = np.linalg.svd(r_left @ r_right.T)
    root = np.sqrt(s[:rank])
    p = np.linalg.pinv(r_left) @ (u[:, :rank] * root)
    q = (root[:, None] * vt[:rank]) @ np.linalg.pinv(r_right).T
    return p, q


def attention_modules(tensors: dict) -> list[str]:
    """Names of the self-attention modules that carry funnels (spatial and temporal attn1)."""
    return sorted(m.group(1) for k in tensors if (m := _ATTN1.match(k)))


def add_funnels(model, factor: float, init: str = "csi", seed: int = 0, target: str = "attention"):
    """A copy of `model` with funnels of fun-factor `factor` on every self-attention (or, with
    target="conv", inside every spatial res-block).

    init "csi": coupled singular initialisation from the model's weights; "he": random N(0, 2/fan_in).
    The projections keep their weights; only funnel parameters are added.
    """
    from mvd_jax.models.unet_tensors import unet_from_tensors, unet_to_tensors
    from mvd_jax.models.unet_blocks import funnel_width

    c = model.config
    if c.funnel_factor is not None:
        raise UserError("the model already has funnels")
    if init not in ("csi", "he"):
        raise UserError(f"funnel init must be 'csi' or 'he', got {init!r}")
    if target not in ("attention", "conv"):
        raise UserError(f"funnel target must be 'attention' or 'conv', got {target!r}")
    tensors = unet_to_tensors(model)
    rng = np.random.default_rng(seed)
    if target == "conv":
        _add_conv_funnels(tensors, factor, init, rng)
        config = dataclasses.replace(c, funnel_factor=factor, funnel_target="conv", funnels_merged=False)
        return unet_from_tensors(tensors, config, source="funneled model")
    heads_of = _heads_by_module(model)
    for name in attention_modules(tensors):
        heads = heads_of[name]
        wq, wk, wv, wo = (tensors[f"{name}.{p}.weight"] for p in ("to_q", "to_k", "to_v", "to_out.0"))
        d = wq.shape[0] // heads
        r = funnel_width(d, factor)
        fq, fk, fv, fo = (np.zeros((heads, d, r)), np.zeros((heads, d, r)), np.zeros((heads, d, r)),
                          np.zeros((heads, r, d)))
        for h in range(heads):
            rows = slice(h * d, (h + 1) * d)
            if init == "csi":
                p, q = csi_pair(wq[rows].T, wk[rows], r)  # logits: W_qʰᵀ · W_kʰ
                fq[h], fk[h] = p, q.T
                p, q = csi_pair(wo[:, rows], wv[rows], r)  # values: W_oʰ · W_vʰ
                fo[h], fv[h] = p.T, q.T
            else:
                fq[h], fk[h], fv[h] = (rng.standard_normal((d, r)) * np.sqrt(2 / d) for _ in range(3))
                fo[h] = rng.standard_normal((r, d)) * np.sqrt(2 / r)
        for key, value in (("funnel_q", fq), ("funnel_k", fk), ("funnel_v", fv), ("funnel_o", fo)):
            tensors[f"{name}.{key}"] = value.astype(np.float32)
    config = dataclasses.replace(c, funnel_factor=factor, funnel_target="attention", funnels_merged=False)
    return unet_from_tensors(tensors, config, source="funneled model")


def merge_funnels(model):
    """A plain model (no funnel parameters, projections heads·d' wide) computing the same function."""
    from mvd_jax.models.unet_tensors import unet_from_tensors, unet_to_tensors

    c = model.config
    if c.funnel_factor is None or c.funnels_merged:
        raise UserError("the model has no unmerged funnels")
    tensors = unet_to_tensors(model)  # torch layout: weight (out, in); funnels as stored
    if c.funnel_target == "conv":
        _merge_conv_funnels(tensors)
        return unet_from_tensors(tensors, dataclasses.replace(c, funnels_merged=True), source="merged model")
    heads_of = _heads_by_module(model)
    for name in attention_modules(tensors):
        heads = heads_of[name]
        fq, fk, fv, fo = (tensors.pop(f"{name}.{p}").astype(np.float64) for p in ("funnel_q", "funnel_k", "funnel_v",
                                                                                   "funnel_o"))
        for proj, f in (("to_q", fq), ("to_k", fk), ("to_v", fv)):
            w = tensors[f"{name}.{proj}.weight"].astype(np.float64)  # (heads·d, c)
            w = w.reshape(heads, -1, w.shape[-1])
            tensors[f"{name}.{proj}.weight"] = np.einsum("hdc,hde->hec", w, f).reshape(-1, w.shape[-1]).astype(np.float32)
        wo = tensors[f"{name}.to_out.0.weight"].astype(np.float64)  # (c_out, heads·d)
        wo = wo.reshape(wo.shape[0], heads, -1)
        tensors[f"{name}.to_out.0.weight"] = np.einsum("chd,hed->che", wo, fo).reshape(wo.shape[0], -1).astype(np.float32)
    config = dataclasses.replace(c, funnels_merged=True)
    return unet_from_tensors(tensors, config, source="merged model")


def _heads_by_module(model) -> dict[str, int]:
    """Head count of every attn1 module, keyed by its diffusers name."""
    from flax import nnx

    from mvd_jax.models.attention import Attention

    out = {}
    for path, node in nnx.iter_graph(model):
        if isinstance(node, Attention):
            out[".".join(str(p) for p in path)] = node.heads
    return out


_SPATIAL_RES = re.compile(r"^(.*\.spatial_res_block)\.conv1\.weight$")


def _add_conv_funnels(tensors: dict, factor: float, init: str, rng) -> None:
    from mvd_jax.models.unet_blocks import funnel_width

    for name in sorted(m.group(1) for k in tensors if (m := _SPATIAL_RES.match(k))):
        w1 = tensors[f"{name}.conv1.weight"]  # (C, C_in, 3, 3)
        c = w1.shape[0]
        r = funnel_width(c, factor, multiple=32)
        if init == "csi":
            u, _, _ = np.linalg.svd(w1.reshape(c, -1).astype(np.float64), full_matrices=False)
            f1, f2 = u[:, :r].T, u[:, :r]  # (r, C) projection and (C, r) expansion, torch layout
            top = np.argsort(-np.abs(f1), axis=1)[:, 0]  # each funneled channel's dominant original channel
            scale, bias = tensors[f"{name}.norm2.weight"][top], tensors[f"{name}.norm2.bias"][top]
        else:
            f1 = rng.standard_normal((r, c)) * np.sqrt(2 / c)
            f2 = rng.standard_normal((c, r)) * np.sqrt(2 / r)
            scale, bias = np.ones(r), np.zeros(r)
        tensors[f"{name}.funnel_1.weight"] = f1.astype(np.float32)
        tensors[f"{name}.funnel_2.weight"] = f2.astype(np.float32)
        tensors[f"{name}.norm2.weight"] = np.asarray(scale, np.float32)
        tensors[f"{name}.norm2.bias"] = np.asarray(bias, np.float32)


def _merge_conv_funnels(tensors: dict) -> None:
    for name in sorted(m.group(1) for k in tensors if (m := _SPATIAL_RES.match(k))):
        f1 = tensors.pop(f"{name}.funnel_1.weight").astype(np.float64)  # (r, C)
        f2 = tensors.pop(f"{name}.funnel_2.weight").astype(np.float64)  # (C, r)
        get = lambda k: tensors[f"{name}.{k}"].astype(np.float64)
        tensors[f"{name}.conv1.weight"] = np.einsum("rc,cikl->rikl", f1, get("conv1.weight")).astype(np.float32)
        tensors[f"{name}.conv1.bias"] = (f1 @ get("conv1.bias")).astype(np.float32)
        tensors[f"{name}.time_emb_proj.weight"] = (f1 @ get("time_emb_proj.weight")).astype(np.float32)
        tensors[f"{name}.time_emb_proj.bias"] = (f1 @ get("time_emb_proj.bias")).astype(np.float32)
        tensors[f"{name}.conv2.weight"] = np.einsum("ockl,cr->orkl", get("conv2.weight"), f2).astype(np.float32)
