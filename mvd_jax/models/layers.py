"""Basic layers of the SVD UNet, channels-last, with parameters named for the checkpoint converter.

Parameter names follow Flax (`kernel`, `bias`, `scale`); the converter maps them to diffusers'
(`weight`, `bias`) with a fixed layout transpose (see `mvd_jax.convert.diffusers_unet`).
Every parameter carries logical axis names (`out_sharding` metadata) so a mesh plus rules in the
training config decide placement. Parameters are never sharded eagerly at construction
(`eager_sharding=False`): the trainer places them with `jax.jit(..., out_shardings=...)`, so building a
model needs no mesh.

Convolutions take explicit PyTorch-style symmetric padding. XLA's 'SAME' pads a stride-2 conv on an
even input as (0, 1), PyTorch's `padding=1` as (1, 1): they give different numbers.
"""
from __future__ import annotations

import itertools
import weakref
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Axes = tuple[str | None, ...]


_param_counts: "weakref.WeakKeyDictionary[nnx.Rngs, itertools.count]" = weakref.WeakKeyDictionary()


def _next_param_key(rngs: nnx.Rngs):
    """The key for the next parameter: fold_in(params stream key, n) with n counted per Rngs object.

    Calling `rngs.params()` would advance the stream's counter Variable; inside `nnx.eval_shape`/`jit`
    each such update makes JAX 0.10 build an error message by walking the whole trace (flax's
    set_value probes `tracer.sharding`), which made abstract construction of even a tiny UNet take
    ~30 s. Counting in Python gives the same determinism (same seed → same weights) at no cost.
    """
    n = next(_param_counts.setdefault(rngs, itertools.count()))
    return jax.random.fold_in(rngs.params.key[...], n)


def param(rngs: nnx.Rngs, init, shape: Sequence[int], axes: Axes, dtype=jnp.float32) -> nnx.Param:
    """A parameter with logical axis names and no eager sharding."""
    return nnx.Param(init(_next_param_key(rngs), tuple(shape), dtype), out_sharding=axes, eager_sharding=False)


def _torch_default_init(fan_in: int):
    """PyTorch's default Linear/Conv init (uniform ±1/sqrt(fan_in)), so fresh models look like diffusers'."""
    bound = 1.0 / np.sqrt(max(fan_in, 1))

    def init(key, shape, dtype):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Linear(nnx.Module):
    """y = x @ kernel + bias.  kernel: (in_features, out_features) = torch weight transposed.
    `zero_init`: kernel and bias start at 0 (a new branch that must not change a pretrained model's output)."""

    def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs, use_bias: bool = True,
                 axes: Axes = ("embed", "mlp"), zero_init: bool = False):
        init = nnx.initializers.zeros if zero_init else _torch_default_init(in_features)
        self.kernel = param(rngs, init, (in_features, out_features), axes)
        self.bias = param(rngs, init, (out_features,), (axes[1],)) if use_bias else None

    def __call__(self, x):
        y = jnp.matmul(x, self.kernel[...].astype(x.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(x.dtype)
        return y


class Conv(nnx.Module):
    """N-d convolution over the axes between batch and channels (channels-last).

    kernel: (*kernel_size, in_features, out_features) = torch weight (out, in, *k) moved to the back.
    `padding` is per spatial axis, symmetric, as in torch (`padding=1` → ((1, 1), (1, 1))).
    """

    def __init__(self, in_features: int, out_features: int, kernel_size: Sequence[int], *, rngs: nnx.Rngs,
                 strides: Sequence[int] | None = None, padding: Sequence[int] | None = None, use_bias: bool = True):
        kernel_size = tuple(kernel_size)
        fan_in = in_features * int(np.prod(kernel_size))
        init = _torch_default_init(fan_in)
        spatial_axes = (None,) * len(kernel_size)
        self.kernel = param(rngs, init, (*kernel_size, in_features, out_features), (*spatial_axes, "conv_in", "conv_out"))
        self.bias = param(rngs, init, (out_features,), ("conv_out",)) if use_bias else None
        self.strides = tuple(strides) if strides is not None else (1,) * len(kernel_size)
        pad = tuple(padding) if padding is not None else tuple(k // 2 for k in kernel_size)
        self.padding = tuple((p, p) for p in pad)

    def __call__(self, x):
        n = len(self.strides)
        kernel_size, (cin, cout) = self.kernel.shape[:n], self.kernel.shape[n:]
        if all(k == 1 for k in kernel_size) and all(s == 1 for s in self.strides) \
                and all(p == (0, 0) for p in self.padding):
            # A 1×1 convolution is a product over channels; as a matmul XLA:CPU runs it at its matmul rate
            # (the convolution kernel was slower on the res-blocks' shortcut shapes). Same numbers.
            kernel = self.kernel[...].reshape(cin, cout).astype(x.dtype)
            return self._add_bias(jnp.matmul(x, kernel))
        spec = "N" + "DHW"[-n:] + "C"
        dn = jax.lax.conv_dimension_numbers(x.shape, self.kernel.shape, (spec, "DHW"[-n:] + "IO", spec))
        y = jax.lax.conv_general_dilated(
            x, self.kernel[...].astype(x.dtype), window_strides=self.strides, padding=self.padding,
            dimension_numbers=dn)
        return self._add_bias(y)

    def _add_bias(self, y):
        return y if self.bias is None else y + self.bias[...].astype(y.dtype)


def statistics_dtype(x):
    """The dtype norms take their statistics in: float32 for bf16/fp16/float32 input (as torch does); float64
    stays float64 — a float32 norm would cap every float64 check of a whole model at float32 rounding (~2e-7,
    measured on the gated-vs-pruned identity at 16×24 latents, where XLA's float32 reductions happened to be
    fused differently in the two programs)."""
    return jnp.promote_types(x.dtype, jnp.float32)


def _normalize(x, axes, eps):
    # Two-pass variance, not E[x²]−E[x]²: the latter loses digits.
    x32 = x.astype(statistics_dtype(x))
    mean = jnp.mean(x32, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=axes, keepdims=True)
    return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


class GroupNorm(nnx.Module):
    """torch.nn.GroupNorm on channels-last input: statistics over every axis but the batch (first) one,
    per group of channels. On a (B, T, H, W, C) input the statistics span all frames, exactly like
    torch's GroupNorm on (B, C, T, H, W) inside the temporal res-block."""

    def __init__(self, num_channels: int, *, num_groups: int = 32, eps: float = 1e-5, rngs: nnx.Rngs):
        self.num_groups = num_groups
        self.eps = eps
        self.scale = param(rngs, nnx.initializers.ones, (num_channels,), ("norm",))
        self.bias = param(rngs, nnx.initializers.zeros, (num_channels,), ("norm",))

    def __call__(self, x):
        c = x.shape[-1]
        g = x.reshape(*x.shape[:-1], self.num_groups, c // self.num_groups)
        reduce_axes = tuple(range(1, g.ndim - 2)) + (g.ndim - 1,)
        y = _normalize(g, reduce_axes, self.eps).reshape(x.shape)
        return y * self.scale[...].astype(x.dtype) + self.bias[...].astype(x.dtype)


class LayerNorm(nnx.Module):
    """torch.nn.LayerNorm over the last axis."""

    def __init__(self, num_features: int, *, eps: float = 1e-5, rngs: nnx.Rngs):
        self.eps = eps
        self.scale = param(rngs, nnx.initializers.ones, (num_features,), ("norm",))
        self.bias = param(rngs, nnx.initializers.zeros, (num_features,), ("norm",))

    def __call__(self, x):
        y = _normalize(x, (-1,), self.eps)
        return y * self.scale[...].astype(x.dtype) + self.bias[...].astype(x.dtype)


class Identity(nnx.Module):
    """Stands where diffusers has a parameterless module (Dropout at p=0) so list indices match its names."""

    def __call__(self, x):
        return x


def timestep_embedding(timesteps, dim: int, *, flip_sin_to_cos: bool = True, downscale_freq_shift: float = 0.0,
                       max_period: float = 10000.0):
    """diffusers' `get_timestep_embedding`: sinusoids of `timesteps` (any shape (N,)) → (N, dim), float32."""
    half = dim // 2
    # The exponent in float32 as diffusers computes it, then exp() on the host in float64 rounded to
    # float32: the correctly rounded frequencies (XLA's float32 exp is off by an ulp on ~10% of them,
    # which at timestep 127 already moves the sinusoid arguments by ~1e-5).
    exponent = (np.float32(-np.log(max_period)) * np.arange(half, dtype=np.float32)) / np.float32(half - downscale_freq_shift)
    freqs = jnp.asarray(np.exp(exponent.astype(np.float64)).astype(np.float32))
    args = jnp.asarray(timesteps, jnp.float32)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    if flip_sin_to_cos:
        emb = jnp.concatenate([emb[:, half:], emb[:, :half]], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class TimestepEmbedding(nnx.Module):
    """diffusers' TimestepEmbedding: linear_1 → SiLU → linear_2."""

    def __init__(self, in_channels: int, time_embed_dim: int, *, out_dim: int | None = None, rngs: nnx.Rngs):
        self.linear_1 = Linear(in_channels, time_embed_dim, rngs=rngs)
        self.linear_2 = Linear(time_embed_dim, out_dim or time_embed_dim, rngs=rngs)

    def __call__(self, x):
        return self.linear_2(jax.nn.silu(self.linear_1(x)))


def remat_call(module, *args, remat: bool = False, **static):
    """`module(*args, **static)`; with `remat`, the call's activations are not kept for the backward pass but
    recomputed there (`nnx.remat`), same numbers. The UNet applies it per layer — each res-block and each
    spatial / temporal transformer layer (train.remat) — so the backward pass holds one layer's
    intermediates at a time: rematerialising whole down/up blocks instead held all of a block's layers at
    once, ≈ 47 GiB per 14-frame clip at 1024×576 in SVD's top up-block (TPU compile of the train step).
    Python ints among `args` (a frame count) and the `static` keywords shape the computation: they stay
    static, not traced."""
    if not remat:
        return module(*args, **static)
    ints = tuple(i + 1 for i, a in enumerate(args) if isinstance(a, int))  # + 1: the module is argument 0
    return nnx.remat(lambda m, *a: m(*a, **static), static_argnums=ints)(module, *args)
