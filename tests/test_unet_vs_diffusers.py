"""Oracle: the JAX UNet loaded through `load_unet` equals diffusers' UNetSpatioTemporalConditionModel.

Random weights (every parameter, norms and mix factors included) are saved by diffusers and loaded
by mvd_jax; both run on the same fresh random inputs. Tolerance: 1e-5 relative L2 in float32.
"""
import zlib

import numpy as np
import pytest

import oracle
from conftest import jax_forward
from mvd_jax.convert import load_unet

TOL = 1e-5

CASES = [
    # config, batch, frames, latent height, latent width, image_only_indicator pattern
    ("tiny", 1, 1, 16, 16, None),
    ("tiny", 2, 3, 16, 24, None),
    ("tiny", 1, 8, 24, 16, None),
    ("tiny", 2, 3, 9, 13, None),        # sizes not divisible by 8: upsamplers follow the skips' sizes
    ("tiny", 2, 8, 16, 24, "mixed"),
    ("tiny", 1, 3, 8, 8, "all"),
    ("svd_like", 1, 3, 16, 24, None),
    ("svd_like", 2, 8, 8, 16, "mixed"),
]


def _indicator(pattern, b, t, seed):
    if pattern is None:
        return None
    if pattern == "all":
        return np.ones((b, t), np.float32)
    iio = (np.random.default_rng(seed).uniform(size=(b, t)) > 0.5).astype(np.float32)
    iio[0, 0], iio[-1, -1] = 1.0, 0.0  # at least one of each
    return iio


@pytest.mark.parametrize("name,b,t,h,w,pattern", CASES)
def test_unet_matches_diffusers(diffusers_unets, name, b, t, h, w, pattern):
    torch_model, folder = diffusers_unets(name)
    model = load_unet(folder)
    seed = zlib.crc32(repr((name, b, t, h, w, pattern)).encode())  # deterministic, differs per case
    inputs = oracle.random_inputs(oracle.SMALL_CONFIGS[name], b, t, h, w, seed=seed)
    iio = _indicator(pattern, b, t, seed)

    expected = oracle.diffusers_forward(torch_model, **inputs, image_only_indicator=iio)
    got = jax_forward(model, inputs, iio)

    assert got.shape == expected.shape == (b, t, 4, h, w)
    err = oracle.rel_l2(got, expected)
    assert err <= TOL, f"relative L2 error {err:.2e} > {TOL}"


def test_image_only_indicator_changes_the_output(diffusers_unets):
    """Guards the test above: the indicator must matter, or 'matches with indicator' proves nothing."""
    torch_model, folder = diffusers_unets("tiny")
    model = load_unet(folder)
    inputs = oracle.random_inputs(oracle.SMALL_CONFIGS["tiny"], 1, 3, 8, 8, seed=3)
    plain = jax_forward(model, inputs)
    images = jax_forward(model, inputs, np.ones((1, 3), np.float32))
    assert oracle.rel_l2(images, plain) > 1e-2


def test_replayed_forward_equals_diffusers_forward(diffusers_unets):
    """The oracle's replay of diffusers' top-level forward (used for image_only_indicator) with zeros
    gives diffusers' own forward bit-for-bit-close: the replay adds no error of its own."""
    torch_model, _ = diffusers_unets("tiny")
    inputs = oracle.random_inputs(oracle.SMALL_CONFIGS["tiny"], 2, 3, 9, 13, seed=5)
    direct = oracle.diffusers_forward(torch_model, **inputs)
    replay = oracle.diffusers_forward(torch_model, **inputs, image_only_indicator=np.zeros((2, 3), np.float32))
    assert oracle.rel_l2(replay, direct) < 1e-6
