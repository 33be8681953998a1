"""Attention and transformer blocks of the SVD UNet (diffusers' `attention.py` / `attention_processor.py`).

Shapes are (batch, tokens, channels). Names mirror diffusers: `attn1` self-attention, `attn2`
cross-attention, `to_out[0]` the output projection, `ff.net[0].proj` the GEGLU input projection and
`ff.net[2]` the output projection (index 1 is diffusers' parameterless Dropout).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mvd_jax.models.attention_kernel import AttentionForm, batch_split, dot_product_attention
from mvd_jax.models.layers import Identity, LayerNorm, Linear, param
from mvd_jax.models.low_rank import LowRankLinear, low_rank_width


class Attention(nnx.Module):
    """Multi-head attention without q/k/v bias and with an output bias (diffusers' defaults for SVD).

    Channel funnels (MobileVD §2(d), funnels.py): with `funnel_dim` d' < dim_head each head's q, k and
    v are mapped d_h → d' by `funnel_q/k/v` (heads, d_h, d') and the attention output back d' → d_h by
    `funnel_o` (heads, d', d_h) before `to_out`. With `funnels_merged` the funnels are folded into the
    projections (inner width heads·d'). The softmax scale stays 1/√d_h in both forms: the funnels
    absorb any rescaling, and merging must not change the function.
    """

    def __init__(self, query_dim: int, *, heads: int, dim_head: int, cross_attention_dim: int | None = None,
                 rngs: nnx.Rngs, funnel_dim: int | None = None, funnels_merged: bool = False,
                 low_rank_factor: float | None = None):
        kv_dim = cross_attention_dim or query_dim
        self.heads = heads
        self.dim_head = dim_head
        self.scale = dim_head ** -0.5
        self.funnel_dim = funnel_dim
        proj_head = funnel_dim if (funnel_dim and funnels_merged) else dim_head
        inner = heads * proj_head
        self.proj_head = proj_head
        if low_rank_factor is None:
            linear = Linear
        else:  # Table 5's truncated-SVD baseline (low_rank.py)
            linear = lambda i, o, **kw: LowRankLinear(i, o, low_rank_width(i, o, low_rank_factor), **kw)
        self.to_q = linear(query_dim, inner, use_bias=False, axes=("embed", "heads"), rngs=rngs)
        self.to_k = linear(kv_dim, inner, use_bias=False, axes=("embed", "heads"), rngs=rngs)
        self.to_v = linear(kv_dim, inner, use_bias=False, axes=("embed", "heads"), rngs=rngs)
        self.to_out = nnx.List([linear(inner, query_dim, axes=("heads", "embed"), rngs=rngs)])
        if funnel_dim and not funnels_merged:
            he = lambda fan_in: (lambda key, shape, dtype: jax.random.normal(key, shape, dtype) * (2.0 / fan_in) ** 0.5)
            self.funnel_q = param(rngs, he(dim_head), (heads, dim_head, funnel_dim), ("heads", None, None))
            self.funnel_k = param(rngs, he(dim_head), (heads, dim_head, funnel_dim), ("heads", None, None))
            self.funnel_v = param(rngs, he(dim_head), (heads, dim_head, funnel_dim), ("heads", None, None))
            self.funnel_o = param(rngs, he(funnel_dim), (heads, funnel_dim, dim_head), ("heads", None, None))
        else:
            self.funnel_q = self.funnel_k = self.funnel_v = self.funnel_o = None
        # How softmax(q kᵀ) v is computed (CPU loops, XLA, the TPU kernel, cuDNN): a static attribute, so
        # jitted functions of the model are traced again when it changes (attention_kernel.set_form).
        self.attention_form = AttentionForm()

    def single_token(self, context):
        """Cross-attention to a 1-token context, collapsed (MobileVD's "optimized cross-attention").

        softmax over a single key is identically 1, so every query receives the same row
        to_out(to_v(c)): the result, (N, 1, C), broadcasts over all query positions. to_q, to_k, QKᵀ,
        the softmax and A·V drop out of the computation.
        """
        if context.shape[1] != 1:
            raise ValueError(f"collapsed cross-attention needs a 1-token context, got {context.shape[1]} tokens; "
                             "turn off collapse_cross_attention for multi-token contexts")
        return self.to_out[0](self.to_v(context))

    def __call__(self, x, context=None):
        x = batch_split(x, self.attention_form)  # activations stay split over the batch (attention_kernel.py)
        context = x if context is None else context
        b, n, _ = x.shape
        split = lambda t: t.reshape(t.shape[0], t.shape[1], self.heads, self.proj_head)
        q, k, v = split(self.to_q(x)), split(self.to_k(context)), split(self.to_v(context))
        if self.funnel_q is not None:
            funnel = lambda t, f: jnp.einsum("bnhd,hde->bnhe", t, f[...].astype(t.dtype))
            q, k, v = funnel(q, self.funnel_q), funnel(k, self.funnel_k), funnel(v, self.funnel_v)
        # softmax(q kᵀ · scale) v, the same math as torch's scaled_dot_product_attention.
        out = dot_product_attention(q, k, v, self.scale, self.attention_form)
        if self.funnel_o is not None:
            out = jnp.einsum("bnhe,hed->bnhd", out, self.funnel_o[...].astype(out.dtype))
        return batch_split(self.to_out[0](out.reshape(b, n, -1)), self.attention_form)


class GEGLU(nnx.Module):
    """proj(x) split in two halves (h, gate); returns h · GELU(gate) with the exact (erf) GELU."""

    def __init__(self, dim_in: int, dim_out: int, *, rngs: nnx.Rngs):
        self.proj = Linear(dim_in, 2 * dim_out, rngs=rngs)

    def __call__(self, x):
        # Two products on the kernel's halves instead of one product split afterwards (the same numbers):
        # XLA:CPU fused the preceding LayerNorm into the single wide product and ran it at ~95 GFLOP/s
        # against ~164 for the two plain ones (per-op profile of the SVD forward, README "Performance").
        kernel, bias = self.proj.kernel[...].astype(x.dtype), self.proj.bias[...].astype(x.dtype)
        half = kernel.shape[-1] // 2
        h = jnp.matmul(x, kernel[:, :half]) + bias[:half]
        gate = jnp.matmul(x, kernel[:, half:]) + bias[half:]
        return h * jax.nn.gelu(gate, approximate=False)


class FeedForward(nnx.Module):
    """GEGLU feed-forward with inner width mult·dim: net = [GEGLU, Dropout(=identity), Linear]."""

    def __init__(self, dim: int, *, dim_out: int | None = None, mult: int = 4, rngs: nnx.Rngs):
        inner = dim * mult
        self.net = nnx.List([
            GEGLU(dim, inner, rngs=rngs),
            Identity(),
            Linear(inner, dim_out or dim, axes=("mlp", "embed"), rngs=rngs),
        ])

    def __call__(self, x):
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nnx.Module):
    """Spatial block: LN → self-attn → LN → cross-attn(context) → LN → GEGLU FF, each residual."""

    def __init__(self, dim: int, heads: int, dim_head: int, *, cross_attention_dim: int, rngs: nnx.Rngs,
                 collapse_cross_attention: bool = False, funnel: dict | None = None):
        self.collapse_cross_attention = collapse_cross_attention
        self.norm1 = LayerNorm(dim, rngs=rngs)
        self.attn1 = Attention(dim, heads=heads, dim_head=dim_head, rngs=rngs, **(funnel or {}))
        self.norm2 = LayerNorm(dim, rngs=rngs)
        self.attn2 = Attention(dim, heads=heads, dim_head=dim_head, cross_attention_dim=cross_attention_dim, rngs=rngs)
        self.norm3 = LayerNorm(dim, rngs=rngs)
        self.ff = FeedForward(dim, rngs=rngs)

    def __call__(self, x, context):
        x = self.attn1(self.norm1(x)) + x
        if self.collapse_cross_attention:  # independent of x: norm2 and the queries drop out
            x = x + self.attn2.single_token(context)
        else:
            x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class TemporalBasicTransformerBlock(nnx.Module):
    """Temporal block: attention runs over the frame axis at every spatial position.

    Input (B·T, S, C) is regrouped to (B·S, T, C); then LN → ff_in (GEGLU, residual when widths match)
    → LN → self-attn over T → LN → cross-attn to `context` (B·S, 1, D) → LN → FF; regrouped back.
    """

    def __init__(self, dim: int, time_mix_inner_dim: int, heads: int, dim_head: int, *,
                 cross_attention_dim: int | None, rngs: nnx.Rngs, collapse_cross_attention: bool = False,
                 funnel: dict | None = None):
        self.collapse_cross_attention = collapse_cross_attention
        self.is_res = dim == time_mix_inner_dim
        self.norm_in = LayerNorm(dim, rngs=rngs)
        self.ff_in = FeedForward(dim, dim_out=time_mix_inner_dim, rngs=rngs)
        self.norm1 = LayerNorm(time_mix_inner_dim, rngs=rngs)
        self.attn1 = Attention(time_mix_inner_dim, heads=heads, dim_head=dim_head, rngs=rngs, **(funnel or {}))
        if cross_attention_dim is not None:
            self.norm2 = LayerNorm(time_mix_inner_dim, rngs=rngs)
            self.attn2 = Attention(time_mix_inner_dim, heads=heads, dim_head=dim_head,
                                   cross_attention_dim=cross_attention_dim, rngs=rngs)
        else:
            self.norm2 = self.attn2 = None
        self.norm3 = LayerNorm(time_mix_inner_dim, rngs=rngs)
        self.ff = FeedForward(time_mix_inner_dim, rngs=rngs)

    def __call__(self, x, num_frames: int, context=None):
        """x: (B·T, S, C). context: (B·S, L, D) per position, or with collapse_cross_attention the
        per-clip (B, 1, D) context, whose collapsed attention output is broadcast to all positions."""
        bt, s, c = x.shape
        b = bt // num_frames
        x = x.reshape(b, num_frames, s, c).transpose(0, 2, 1, 3).reshape(b * s, num_frames, c)

        h = self.ff_in(self.norm_in(x))
        x = h + x if self.is_res else h
        x = self.attn1(self.norm1(x)) + x
        if self.attn2 is not None and self.collapse_cross_attention:
            x = (x.reshape(b, s, num_frames, -1) + self.attn2.single_token(context)[:, None]).reshape(x.shape)
        elif self.attn2 is not None:
            x = self.attn2(self.norm2(x), context) + x
        h = self.ff(self.norm3(x))
        x = h + x if self.is_res else h

        c = x.shape[-1]
        return x.reshape(b, s, num_frames, c).transpose(0, 2, 1, 3).reshape(b * num_frames, s, c)
