"""Channel funnels: coupled singular initialisation, merging, the convolution variant."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import oracle
from conftest import jax_forward
from mvd_jax.convert import load_unet, unet_to_tensors
from mvd_jax.convert.diffusers_unet import abstract_unet
from mvd_jax.errors import UserError
from mvd_jax.eval.flops import jaxpr_flops
from mvd_jax.models import UNetConfig
from mvd_jax.models.funnels import add_funnels, csi_pair, merge_funnels


@pytest.mark.parametrize("m,d,n,rank", [(40, 16, 40, 16), (40, 16, 40, 8), (24, 8, 56, 3)])
def test_csi_pair_is_the_best_rank_r_approximation(m, d, n, rank):
    rng = np.random.default_rng(m + rank)
    left, right = rng.standard_normal((m, d)), rng.standard_normal((d, n))
    p, q = csi_pair(left, right, rank)
    assert p.shape == (d, rank) and q.shape == (rank, d)
    u, s, vt = np.linalg.svd(left @ right)
    best = (u[:, :rank] * s[:rank]) @ vt[:rank]  # Eckart–Young, float64
    got = left @ p @ q @ right
    assert np.linalg.norm(got - best) / np.linalg.norm(best) < 1e-10


def test_csi_pair_handles_rank_deficient_factors():
    rng = np.random.default_rng(0)
    left = rng.standard_normal((30, 8))
    left[:, 5:] = 0  # a singular R factor
    right = rng.standard_normal((8, 30))
    p, q = csi_pair(left, right, 4)
    u, s, vt = np.linalg.svd(left @ right)
    best = (u[:, :4] * s[:4]) @ vt[:4]
    assert np.linalg.norm(left @ p @ q @ right - best) / np.linalg.norm(best) < 1e-8


@pytest.fixture(scope="module")
def tiny_base(diffusers_unets):
    _, folder = diffusers_unets("svd_like")
    return load_unet(folder)


def _inputs(seed=0):
    return oracle.random_inputs(oracle.SMALL_CONFIGS["svd_like"], 2, 3, 8, 16, seed=seed)


def test_csi_at_r1_reproduces_the_unfunneled_model(tiny_base):
    x = _inputs(1)
    assert oracle.rel_l2(jax_forward(add_funnels(tiny_base, 1.0), x), jax_forward(tiny_base, x)) <= 1e-5


def test_funneled_pair_products_are_best_rank_r(tiny_base):
    """After CSI at r = 0.5 every head's W_qᵀ·W_k and W_o·W_v (merged) equal NumPy's rank-r truncation."""
    merged = unet_to_tensors(merge_funnels(add_funnels(tiny_base, 0.5)))
    original = unet_to_tensors(tiny_base)
    name = "down_blocks.1.attentions.0.temporal_transformer_blocks.0.attn1"
    heads = 4  # svd_like level 1: 64 channels, 4 heads of 16 → funneled to 8
    for a, b, transpose in (("to_q", "to_k", True), ("to_out.0", "to_v", False)):
        wa0, wb0 = original[f"{name}.{a}.weight"].astype(np.float64), original[f"{name}.{b}.weight"].astype(np.float64)
        wa1, wb1 = merged[f"{name}.{a}.weight"].astype(np.float64), merged[f"{name}.{b}.weight"].astype(np.float64)
        for h in range(heads):
            r0, r1 = slice(16 * h, 16 * (h + 1)), slice(8 * h, 8 * (h + 1))
            if transpose:  # logits: W_qʰᵀ W_kʰ
                product0, product1 = wa0[r0].T @ wb0[r0], wa1[r1].T @ wb1[r1]
            else:  # values: W_oʰ W_vʰ
                product0, product1 = wa0[:, r0] @ wb0[r0], wa1[:, r1] @ wb1[r1]
            u, s, vt = np.linalg.svd(product0)
            best = (u[:, :8] * s[:8]) @ vt[:8]
            assert np.linalg.norm(product1 - best) / np.linalg.norm(best) < 1e-5, (a, h)


@pytest.mark.parametrize("target,init", [("attention", "csi"), ("attention", "he"), ("conv", "csi")])
def test_merge_funnels_computes_the_same_function(tiny_base, target, init):
    funneled = add_funnels(tiny_base, 0.5, init=init, target=target)
    merged = merge_funnels(funneled)
    assert merged.config.funnels_merged
    names = [".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(merged, nnx.Param))]
    assert not any("funnel" in n for n in names)
    x = _inputs(2)
    assert oracle.rel_l2(jax_forward(merged, x), jax_forward(funneled, x)) <= 1e-5


def test_csi_beats_he_initialisation(tiny_base):
    x = _inputs(3)
    ref = jax_forward(tiny_base, x)
    csi = oracle.rel_l2(jax_forward(add_funnels(tiny_base, 0.5), x), ref)
    he = oracle.rel_l2(jax_forward(add_funnels(tiny_base, 0.5, init="he"), x), ref)
    assert csi < he / 2


def _flops(config, t=3, h=16, w=16):
    graphdef, state = nnx.split(abstract_unet(config))
    S = jax.ShapeDtypeStruct
    args = (S((1, t, h, w, 8), jnp.float32), S((1,), jnp.float32), S((1, 1, config.context_dims[0]), jnp.float32),
            S((1, 3), jnp.float32))
    return jaxpr_flops(jax.make_jaxpr(lambda st, *a: nnx.merge(graphdef, st)(*a))(state, *args))


def test_merged_model_has_the_flops_of_the_reduced_width():
    """Merged r = 0.5 saves exactly half of every self-attention's projection and QKᵀ/AV FLOPs."""
    base = UNetConfig.from_dict(oracle.SMALL_CONFIGS["svd_like"])
    merged = dataclasses.replace(base, funnel_factor=0.5, funnels_merged=True)
    t, h, w = 3, 16, 16
    # Self-attention FLOPs of the base model, counted by hand: per attn1 with C channels over N tokens
    # in S sequences: 4 projections 2·S·N·C·C and QKᵀ + AV 2·2·S·N·N·C.
    attn = 0
    sizes = {32: (h, w), 64: (h // 2, w // 2), 96: (h // 4, w // 4)}
    for c, layers_down, layers_up, depth in ((32, 2, 3, 1), (64, 2, 3, 2), (96, 2, 3, 1)):
        hh, ww = sizes[c]
        n_spatial = hh * ww
        per_layer = (4 * 2 * t * n_spatial * c * c + 4 * t * n_spatial * n_spatial * c  # spatial attn1
                     + 4 * 2 * hh * ww * t * c * c + 4 * hh * ww * t * t * c)  # temporal attn1
        attn += per_layer * depth * (layers_down + layers_up)
    hh, ww = h // 8, w // 8  # level 3 down block has no attention; the mid block has one transformer
    attn += (4 * 2 * t * hh * ww * 96 * 96 + 4 * t * (hh * ww) ** 2 * 96 + 4 * 2 * hh * ww * t * 96 * 96
             + 4 * hh * ww * t * t * 96)
    assert _flops(base) - _flops(merged) == attn // 2


def test_funnel_errors(tiny_base):
    with pytest.raises(UserError, match="init"):
        add_funnels(tiny_base, 0.5, init="xavier")
    with pytest.raises(UserError, match="no unmerged funnels"):
        merge_funnels(tiny_base)
    with pytest.raises(UserError, match="funnel_factor"):
        UNetConfig(funnel_factor=1.5)


# ---- Table 5's truncated-SVD baseline ---------------------------------------------------------
def test_low_rank_factorisation(tiny_base):
    from mvd_jax.models.low_rank import factorize_attention

    x = _inputs(4)
    full_rank = factorize_attention(tiny_base, 1.0)
    assert oracle.rel_l2(jax_forward(full_rank, x), jax_forward(tiny_base, x)) <= 1e-5

    half = unet_to_tensors(factorize_attention(tiny_base, 0.5))
    original = unet_to_tensors(tiny_base)
    name = "up_blocks.1.attentions.2.transformer_blocks.0.attn1.to_out.0"
    w = original[f"{name}.weight"].astype(np.float64)
    u, s, vt = np.linalg.svd(w)
    k = w.shape[0] // 2
    best = (u[:, :k] * s[:k]) @ vt[:k]
    got = half[f"{name}.up.weight"].astype(np.float64) @ half[f"{name}.down.weight"].astype(np.float64)
    assert np.linalg.norm(got - best) / np.linalg.norm(best) < 1e-6
    np.testing.assert_array_equal(half[f"{name}.up.bias"], original[f"{name}.bias"])
