"""MobileVD's architecture options: cross-attention collapse, multiscaling, temporal-block gates and pruning."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import oracle
from conftest import jax_forward
from mvd_jax.convert import load_unet
from mvd_jax.convert.diffusers_unet import read_unet_checkpoint, unet_from_tensors
from mvd_jax.models import UNetConfig
from mvd_jax.models import multiscale as ms
from mvd_jax.models.attention import BasicTransformerBlock, TemporalBasicTransformerBlock
from mvd_jax.models.gates import (
    inclusion_probabilities, prune_temporal_blocks, sample_gates, temporal_block_names, top_n_gates)


def load_with(folder, **options):
    """The diffusers checkpoint in `folder` loaded into a config with MobileVD options switched on."""
    tensors, config, _ = read_unet_checkpoint(folder)
    return unet_from_tensors(tensors, dataclasses.replace(config, **options))


# ---- cross-attention collapse ----------------------------------------------------------------
def test_collapsed_unet_equals_full_attention(diffusers_unets):
    """Same SVD-structured weights (every down/up block type, tests/oracle.py's "tiny"), collapse on/off. The
    identity is exact: in float64 the two agree to 1e-12; in float32 they differ by rounding only (the whole
    UNet accumulates it over its layers). The input shape is test_unet_vs_diffusers.py's, so the full model's
    float32 program is compiled once per run (the persistent compilation cache, tests/conftest.py)."""
    _, folder = diffusers_unets("tiny")
    full, collapsed = load_unet(folder), load_with(folder, collapse_cross_attention=True)
    inputs = oracle.random_inputs(oracle.SMALL_CONFIGS["tiny"], 2, 3, 9, 13, seed=21)
    assert oracle.rel_l2(jax_forward(collapsed, inputs), jax_forward(full, inputs)) <= 3e-6
    with jax.enable_x64(True):
        inputs64 = {k: v.astype(np.float64) for k, v in inputs.items()}
        assert oracle.rel_l2(jax_forward(collapsed, inputs64), jax_forward(full, inputs64)) <= 1e-12


@pytest.mark.parametrize("temporal", [False, True])
def test_collapsed_block_equals_full_block(temporal):
    rngs = nnx.Rngs(0)
    rng = np.random.default_rng(1)
    if temporal:
        block = TemporalBasicTransformerBlock(64, 64, 4, 16, cross_attention_dim=24, rngs=rngs)
        b, t, s = 2, 5, 6
        x = jnp.asarray(rng.standard_normal((b * t, s, 64)), jnp.float32)
        clip_context = jnp.asarray(rng.standard_normal((b, 1, 24)), jnp.float32)
        full = block(x, t, jnp.repeat(clip_context, s, axis=0))  # per-position copies, as diffusers does
        block.collapse_cross_attention = True
        collapsed = block(x, t, clip_context)
    else:
        block = BasicTransformerBlock(64, 4, 16, cross_attention_dim=24, rngs=rngs)
        x = jnp.asarray(rng.standard_normal((3, 10, 64)), jnp.float32)
        context = jnp.asarray(rng.standard_normal((3, 1, 24)), jnp.float32)
        full = block(x, context)
        block.collapse_cross_attention = True
        collapsed = block(x, context)
    assert oracle.rel_l2(collapsed, full) <= 1e-6


def test_collapse_refuses_multi_token_context():
    block = BasicTransformerBlock(64, 4, 16, cross_attention_dim=24, rngs=nnx.Rngs(0), collapse_cross_attention=True)
    with pytest.raises(ValueError, match="1-token context"):
        block(jnp.zeros((1, 4, 64)), jnp.zeros((1, 2, 24)))


def test_collapsed_forward_never_uses_queries_or_keys(diffusers_unets):
    """The collapsed model's output does not depend on attn2.to_q / to_k at all."""
    _, folder = diffusers_unets("tiny")
    model = load_with(folder, collapse_cross_attention=True)
    inputs = oracle.random_inputs(oracle.SMALL_CONFIGS["tiny"], 1, 3, 8, 8, seed=2)
    before = jax_forward(model, inputs)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        if "attn2" in path and path[-2] in ("to_q", "to_k"):
            var[...] = jnp.full(var.shape, 1e3)
    assert np.array_equal(jax_forward(model, inputs), before)


# ---- multiscaling ----------------------------------------------------------------------------
# Both switches together at an even, an odd and a single frame count (the temporal halving pads odd counts and
# leaves one frame alone); each switch alone once. (Each case is a compile of its own.)
@pytest.mark.parametrize("t, options", [(14, dict(temporal_multiscale=True, spatial_multiscale=True)),
                                        (7, dict(temporal_multiscale=True, spatial_multiscale=True)),
                                        (1, dict(temporal_multiscale=True, spatial_multiscale=True)),
                                        (7, dict(temporal_multiscale=True)),
                                        (14, dict(spatial_multiscale=True))])
def test_multiscale_preserves_shape_and_frames(diffusers_unets, t, options):
    _, folder = diffusers_unets("tiny")
    model = load_with(folder, **options)
    inputs = oracle.random_inputs(oracle.SMALL_CONFIGS["tiny"], 2, t, 16, 24, seed=t)
    out = jax_forward(model, inputs)
    assert out.shape == (2, t, 4, 16, 24) and np.all(np.isfinite(out))


def test_temporal_pool_and_repeat():
    x = jnp.arange(2 * 5 * 3, dtype=jnp.float32).reshape(2 * 5, 3)  # B=2, T=5 (odd), 3 features
    half = ms.halve_frames(x, 2, 5)
    ref = np.arange(30, dtype=np.float32).reshape(2, 5, 3)
    ref = np.concatenate([ref, ref[:, -1:]], axis=1).reshape(2, 3, 2, 3).mean(2)
    np.testing.assert_array_equal(np.asarray(half).reshape(2, 3, 3), ref)
    back = np.asarray(ms.double_frames(half, 2, 5)).reshape(2, 5, 3)
    np.testing.assert_array_equal(back, ref[:, [0, 0, 1, 1, 2]])
    iio = jnp.asarray([[1, 1, 1, 0, 1]], jnp.float32)
    np.testing.assert_array_equal(np.asarray(ms.halve_indicator(iio)), [[1, 0, 1]])
    np.testing.assert_array_equal(np.asarray(ms.halved_positions(5)), [0, 2, 4])


# ---- gates and pruning -----------------------------------------------------------------------
def test_svd_has_38_temporal_blocks():
    names = temporal_block_names(UNetConfig())
    assert len(names) == 38
    assert sum(".temporal_transformer_blocks." in n for n in names) == 16


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n", [1, 5, 11, 37])
def test_inclusion_probabilities_sum_to_n(seed, n):
    q = jax.random.normal(jax.random.key(seed), (38,)) * [0.1, 1.0, 5.0, 30.0][seed]
    p = np.asarray(inclusion_probabilities(q, n), np.float64)
    assert abs(p.sum() - n) < 1e-4 and np.all(p >= 0) and np.all(p <= 1 + 1e-6)  # exp may underflow to 0
    # p ∝ exp(q) below the cap, and capped blocks have the largest logits.
    free = p < 1 - 1e-6
    if free.sum() > 1:
        ratio = p[free] / np.exp(np.asarray(q, np.float64)[free])
        assert np.allclose(ratio, ratio[0], rtol=1e-4)
    if (~free).any() and free.any():
        assert np.asarray(q)[~free].min() >= np.asarray(q)[free].max()


def test_inclusion_probabilities_with_a_traced_keep_count_equal_the_static_ones():
    """The trainer's keep-count schedule passes n as a traced integer inside the jitted step."""
    q = jax.random.normal(jax.random.key(7), (38,)) * 2.0
    traced = jax.jit(inclusion_probabilities)
    for n in (1, 11, 20, 37, 38):
        np.testing.assert_allclose(np.asarray(traced(q, jnp.int32(n))), np.asarray(inclusion_probabilities(q, n)),
                                   rtol=1e-6, atol=1e-7)
    assert np.all(np.asarray(traced(q, jnp.int32(38))) == 1.0)


def test_straight_through_gradient_is_the_gradient_of_p():
    q = jax.random.normal(jax.random.key(3), (38,))
    w = jax.random.normal(jax.random.key(4), (38,))
    n = 11
    z = sample_gates(jax.random.key(5), q, n)
    assert set(np.unique(np.asarray(z))) <= {0.0, 1.0}
    grad = jax.grad(lambda q: jnp.sum(w * sample_gates(jax.random.key(5), q, n)))(q)
    expected = jax.jacobian(lambda q: inclusion_probabilities(q, n))(q).T @ w
    np.testing.assert_allclose(np.asarray(grad), np.asarray(expected), rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(grad)).max() > 0


def test_top_n_gates():
    q = jnp.asarray([0.3, -1.0, 2.0, 0.0, 1.5])
    np.testing.assert_array_equal(np.asarray(top_n_gates(q, 2)), [0, 0, 1, 0, 1])


def test_gated_model_equals_pruned_model(diffusers_unets):
    _, folder = diffusers_unets("svd_like")
    model = load_with(folder, temporal_gating="sampled")
    n_blocks = len(temporal_block_names(model.config))
    gates = np.asarray(top_n_gates(jax.random.normal(jax.random.key(0), (n_blocks,)), n_blocks // 3))
    pruned = prune_temporal_blocks(model, gates)

    assert pruned.temporal_gates is None
    n_before = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    n_after = sum(x.size for x in jax.tree.leaves(nnx.state(pruned, nnx.Param)))
    assert n_after < n_before - n_blocks
    inputs = oracle.random_inputs(oracle.SMALL_CONFIGS["svd_like"], 2, 3, 8, 16, seed=7)
    forward = nnx.jit(lambda m, g, *a: m(*a, temporal_gates=g))  # one trace per model and dtype, gates an argument

    def run(m, dtype, gate_values=None):
        sample = jnp.asarray(inputs["sample"].transpose(0, 1, 3, 4, 2), dtype)
        args = [jnp.asarray(inputs[k], dtype) for k in ("timestep", "encoder_hidden_states", "added_time_ids")]
        return forward(m, gate_values, sample, *args)

    # Two different compiled programs: float64 shows the identity (float32 would differ by rounding only).
    with jax.enable_x64(True):
        assert oracle.rel_l2(run(pruned, jnp.float64), run(model, jnp.float64, jnp.asarray(gates))) <= 1e-12
    # all gates on = the same weights without gates; some gates off is not (the gates are in the program)
    ungated = np.asarray(jax_forward(load_unet(folder), inputs)).transpose(0, 1, 3, 4, 2)
    assert oracle.rel_l2(run(model, jnp.float32, jnp.ones(n_blocks)), ungated) <= 3e-6
    assert oracle.rel_l2(run(model, jnp.float32, jnp.asarray(gates)), ungated) > 1e-3


def test_l1_gating_baseline(diffusers_unets):
    """Table 6's L1 baseline: continuous gates start at 1 (= SVD), the penalty is Σ|g|, top-n by |g|."""
    _, folder = diffusers_unets("tiny")
    model = load_with(folder, temporal_gating="l1")
    gates = model.temporal_gates
    n = len(temporal_block_names(model.config))
    np.testing.assert_array_equal(np.asarray(gates.continuous()), np.ones(n))
    assert float(gates.l1_penalty()) == n
    grad = nnx.grad(lambda g: g.l1_penalty())(gates)
    np.testing.assert_array_equal(np.asarray(grad.scales[...]), np.ones(n))
    gates.scales[...] = jnp.linspace(-1.0, 0.5, n)
    np.testing.assert_array_equal(np.asarray(gates.top_n(2)), [1, 1] + [0] * (n - 2))  # largest |g|: −1, −0.93…
    inputs = oracle.random_inputs(oracle.SMALL_CONFIGS["tiny"], 1, 3, 8, 8, seed=9)
    plain = jax_forward(load_unet(folder), inputs)
    sample = jnp.asarray(inputs["sample"].transpose(0, 1, 3, 4, 2))
    ones = model(sample, inputs["timestep"], inputs["encoder_hidden_states"], inputs["added_time_ids"],
                 temporal_gates=jnp.ones(n))
    assert oracle.rel_l2(np.asarray(ones).transpose(0, 1, 4, 2, 3), plain) <= 3e-6
