"""Oracle tests of the building blocks whose numerics are easy to get subtly wrong."""
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers.models.embeddings import get_timestep_embedding
from flax import nnx

import oracle
from mvd_jax.models.layers import Conv, GroupNorm, LayerNorm, timestep_embedding
from mvd_jax.models.resnet import resize_nearest


@pytest.mark.parametrize("dim,shift", [(320, 0.0), (256, 0.0), (7, 1.0)])
def test_timestep_embedding(dim, shift):
    t = np.array([-1.7, 0.0, 0.3, 6.0, 127.0, 999.0], np.float32)
    expected = get_timestep_embedding(torch.from_numpy(t), dim, flip_sin_to_cos=True, downscale_freq_shift=shift)
    got = timestep_embedding(jnp.asarray(t), dim, downscale_freq_shift=shift)
    # float32 frequencies may differ by one ulp (~6e-8 relative) between torch's exp and ours; the
    # sinusoid argument t·f then moves by up to |t|·1.2e-7, and sin/cos by as much.
    atol = 1e-6 + 1.2e-7 * np.abs(t)[:, None]
    assert np.all(np.abs(np.asarray(got) - expected.numpy()) <= atol)


@pytest.mark.parametrize("size,out", [((4, 6), None), ((5, 7), (9, 13)), ((3, 4), (5, 7)), ((2, 2), (4, 3))])
def test_resize_nearest_matches_torch_interpolate(size, out):
    x = np.random.default_rng(0).standard_normal((2, 3, *size)).astype(np.float32)
    target = out or (2 * size[0], 2 * size[1])
    expected = F.interpolate(torch.from_numpy(x), size=target, mode="nearest").numpy()
    got = resize_nearest(jnp.asarray(x.transpose(0, 2, 3, 1)), target)
    np.testing.assert_array_equal(np.asarray(got).transpose(0, 3, 1, 2), expected)


def test_group_norm_spans_frames_like_torch_5d():
    """On (B, T, H, W, C) the statistics must cover all frames, as torch GroupNorm on (B, C, T, H, W)."""
    rng = np.random.default_rng(1)
    x = (3.0 + 2.0 * rng.standard_normal((2, 5, 3, 4, 64))).astype(np.float32)
    norm = GroupNorm(64, eps=1e-6, rngs=nnx.Rngs(0))
    norm.scale[...] = jnp.asarray(rng.standard_normal(64), jnp.float32)
    norm.bias[...] = jnp.asarray(rng.standard_normal(64), jnp.float32)
    ref = torch.nn.GroupNorm(32, 64, eps=1e-6)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(np.asarray(norm.scale[...])))
        ref.bias.copy_(torch.tensor(np.asarray(norm.bias[...])))
        expected = ref(torch.from_numpy(x.transpose(0, 4, 1, 2, 3))).numpy().transpose(0, 2, 3, 4, 1)
    assert oracle.rel_l2(np.asarray(norm(jnp.asarray(x))), expected) < 1e-6


def test_norms_keep_float64():
    """GroupNorm and LayerNorm take bf16/float32 statistics in float32 but float64 in float64, against a NumPy
    float64 reference to 1e-12 — a float32 norm capped the float64 gated-vs-pruned identity of the whole UNet
    at 2e-7 (tests/test_mobilevd_options.py)."""
    import jax

    rng = np.random.default_rng(2)
    x = 3.0 + 2.0 * rng.standard_normal((2, 5, 3, 4, 64))
    g = x.reshape(2, 5, 3, 4, 32, 2)
    mean, var = g.mean(axis=(1, 2, 3, 5), keepdims=True), g.var(axis=(1, 2, 3, 5), keepdims=True)
    group_ref = ((g - mean) / np.sqrt(var + 1e-6)).reshape(x.shape)
    layer_ref = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    with jax.enable_x64(True):
        group = GroupNorm(64, eps=1e-6, rngs=nnx.Rngs(0))(jnp.asarray(x))
        layer = LayerNorm(64, rngs=nnx.Rngs(0))(jnp.asarray(x))
        assert group.dtype == layer.dtype == jnp.float64
        assert oracle.rel_l2(np.asarray(group), group_ref) < 1e-12
        assert oracle.rel_l2(np.asarray(layer), layer_ref) < 1e-12
    bf16 = GroupNorm(64, eps=1e-6, rngs=nnx.Rngs(0))(jnp.asarray(x, jnp.bfloat16))
    assert bf16.dtype == jnp.bfloat16 and oracle.rel_l2(np.asarray(bf16, np.float64), group_ref) < 1e-2


def test_strided_conv_uses_torch_symmetric_padding():
    """A stride-2 conv with padding=1 on an even input: XLA 'SAME' would pad (0, 1) and differ."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 8, 10, 4)).astype(np.float32)
    conv = Conv(4, 6, (3, 3), strides=(2, 2), padding=(1, 1), rngs=nnx.Rngs(0))
    w = np.asarray(conv.kernel[...]).transpose(3, 2, 0, 1)
    expected = F.conv2d(torch.tensor(x.transpose(0, 3, 1, 2)), torch.tensor(w),
                        torch.tensor(np.asarray(conv.bias[...])), stride=2, padding=1).numpy()
    got = np.asarray(conv(jnp.asarray(x))).transpose(0, 3, 1, 2)
    assert got.shape == expected.shape == (1, 6, 4, 5)
    assert oracle.rel_l2(got, expected) < 1e-6
