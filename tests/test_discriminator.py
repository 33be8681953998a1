"""SF-V discriminator (models/discriminator.py) and adversarial losses (train/adversarial_loss.py).

The backbone is checked against diffusers' own down blocks (PyTorch forward hooks on a random
UNet whose every parameter is random) and against our UNet's forward internals under the
multiscale options diffusers cannot express; the heads' reshapes by what each head may and may not
see; the σ sets, the σ′ distribution, the hinge losses, R1 and the pseudo-Huber loss against
independent NumPy/float64 computations. Odd shapes throughout: batch 2, 3–5 frames, non-square maps.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

import oracle
from mvd_jax.convert import unet_from_tensors
from mvd_jax.errors import UserError
from mvd_jax.models import discriminator as dm
from mvd_jax.models import unet_blocks
from mvd_jax.models.unet_config import UNetConfig
from mvd_jax.train import adversarial_loss as al

HEADS = dict(head_channels=32, cond_dim=16, norm_groups=8)
B, T, H, W = 2, 3, 7, 10  # batch 2, frames ≠ 14, odd non-square latents

# Two levels (a cross-attention down block, a plain one, the mid block): every block kind of the encoder
# at a fraction of the 4-level oracle config's cost — most of this file's time is XLA compiling ops.
CONFIG = dict(down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
              up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
              block_out_channels=(32, 64), num_attention_heads=(2, 4), cross_attention_dim=16,
              addition_time_embed_dim=8, projection_class_embeddings_input_dim=24, layers_per_block=1, num_frames=8)


@pytest.fixture(scope="module")
def tiny():
    """(torch UNet, our UNet with its weights, our UNet with temporal + spatial multiscaling)."""
    torch_model = oracle.random_diffusers_unet(CONFIG, seed=5)
    tensors = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
    cfg = UNetConfig.from_dict(CONFIG)
    unet = unet_from_tensors(tensors, cfg)
    unet_ms = unet_from_tensors(tensors, dataclasses.replace(cfg, temporal_multiscale=True, spatial_multiscale=True))
    return torch_model, unet, unet_ms


@pytest.fixture(scope="module")
def disc(tiny):
    return dm.discriminator_from_unet(tiny[1], dict(HEADS, include_mid_block=True), seed=1)


def _inputs(cfg, seed=0, b=B, t=T, h=H, w=W):
    ins = oracle.random_inputs(dataclasses.asdict(cfg), b, t, h, w, seed=seed)
    c = cfg.out_channels
    sample = ins["sample"].transpose(0, 1, 3, 4, 2)  # channels-last
    return dict(noisy=jnp.asarray(sample[..., :c]), cond=jnp.asarray(sample[..., c:]),
                sigma=jnp.asarray(np.exp(ins["timestep"] * 4)),  # c_noise = ln σ / 4
                context=jnp.asarray(ins["encoder_hidden_states"]), ids=jnp.asarray(ins["added_time_ids"]),
                raw=ins)


def _call(d, x):
    return d(x["noisy"], x["sigma"], x["cond"], x["context"], x["ids"])


# ---- backbone ------------------------------------------------------------------------------------
def test_backbone_features_equal_diffusers_down_blocks(tiny):
    """Every feature (after each down block and after the mid block) equals diffusers' block output."""
    torch_model, unet, _ = tiny
    enc = dm.UNetEncoder(unet, include_mid_block=True)
    x = _inputs(unet.config, seed=11)
    raw = x["raw"]

    captured = []
    hooks = [m.register_forward_hook(lambda mod, args, out: captured.append(out[0] if isinstance(out, tuple) else out))
             for m in [*torch_model.down_blocks, torch_model.mid_block]]
    try:
        oracle.diffusers_forward(torch_model, raw["sample"], raw["timestep"], raw["encoder_hidden_states"],
                                 raw["added_time_ids"])
    finally:
        for h in hooks:
            h.remove()

    sample = jnp.asarray(raw["sample"].transpose(0, 1, 3, 4, 2))
    feats = enc(sample, jnp.asarray(raw["timestep"]), x["context"], x["ids"])
    assert [f.name for f in feats] == ["down_blocks.0", "down_blocks.1", "mid_block"]
    assert len(captured) == len(feats)
    for f, ref in zip(feats, captured):
        ref = ref.numpy().transpose(0, 2, 3, 1)  # (B·T, C, h, w) → (B·T, h, w, C)
        assert f.x.shape == ref.shape, f.name
        err = oracle.rel_l2(f.x, ref)
        assert err <= 1e-5, f"{f.name}: relative L2 error {err:.2e}"
        assert f.frames == T and np.array_equal(f.positions, np.arange(T))


class _StopAfterMid(Exception):
    pass


def test_backbone_features_equal_unet_internals_with_multiscaling(tiny, monkeypatch):
    """With temporal + spatial multiscaling (no diffusers counterpart) the features equal the block
    outputs recorded inside our UNet's own forward, and the lower level sees T' frames at 0, 2, …"""
    _, _, unet = tiny
    recorded = []
    for cls in (unet_blocks.DownBlockSpatioTemporal, unet_blocks.CrossAttnDownBlockSpatioTemporal,
                unet_blocks.UNetMidBlockSpatioTemporal):
        def hooked(self, *args, _orig=cls.__call__, _cls=cls, **kw):
            out = _orig(self, *args, **kw)
            recorded.append(out[0] if isinstance(out, tuple) else out)
            if _cls is unet_blocks.UNetMidBlockSpatioTemporal and stop_at_mid[0]:
                raise _StopAfterMid  # the up path is not needed: save its compile time
            return out
        monkeypatch.setattr(cls, "__call__", hooked)

    x = _inputs(unet.config, seed=12)
    raw = x["raw"]
    sample = jnp.asarray(raw["sample"].transpose(0, 1, 3, 4, 2))
    args = (sample, jnp.asarray(raw["timestep"]), x["context"], x["ids"])
    stop_at_mid = [True]
    with pytest.raises(_StopAfterMid):
        unet(*args)
    expected = list(recorded)  # down block 0, down block 1, mid block, in forward order
    stop_at_mid[0] = False
    recorded.clear()
    feats = dm.UNetEncoder(unet, include_mid_block=True)(*args)
    assert len(expected) == len(feats) == 3
    assert [f.frames for f in feats] == [T, 2, 2]
    np.testing.assert_array_equal(feats[1].positions, [0, 2])
    assert feats[0].x.shape[1:3] == (4, 5) and feats[1].x.shape[1:3] == (2, 3)  # spatial halving below level 0
    for f, ref in zip(feats, expected):
        np.testing.assert_allclose(np.asarray(f.x), np.asarray(ref), rtol=0, atol=1e-6, err_msg=f.name)


def test_backbone_is_a_separate_copy_with_unet_names(tiny, disc):
    _, unet, _ = tiny
    flat_unet = {p: v for p, v in nnx.to_flat_state(nnx.state(unet, nnx.Param))}
    backbone = list(nnx.to_flat_state(nnx.state(disc, dm.BACKBONE_PARAMS)))
    heads = list(nnx.to_flat_state(nnx.state(disc, dm.HEAD_PARAMS)))
    everything = list(nnx.to_flat_state(nnx.state(disc, nnx.Param)))
    assert len(backbone) + len(heads) == len(everything) and backbone and heads
    assert all(p[0] == "backbone" for p, _ in backbone) and all(p[0] == "heads" for p, _ in heads)
    for path, v in backbone:
        ref = flat_unet[path[1:]]  # the UNet's own name under backbone/
        assert np.array_equal(np.asarray(v[...]), np.asarray(ref[...])), path
        assert v[...].unsafe_buffer_pointer() != ref[...].unsafe_buffer_pointer(), f"{path} aliases the UNet"
    tops = {p[1] for p, _ in backbone}
    assert tops == {"conv_in", "time_embedding", "add_embedding", "down_blocks", "mid_block"}
    no_mid = dm.discriminator_from_unet(unet, HEADS)
    assert "mid_block" not in {p[1] for p, _ in nnx.to_flat_state(nnx.state(no_mid, dm.BACKBONE_PARAMS))}
    assert no_mid.backbone.feature_names == ["down_blocks.0", "down_blocks.1"]
    assert len(no_mid.heads.spatial) == len(no_mid.heads.temporal) == 2
    # the abstract D (checkpoint restore target) has the real one's parameter tree
    abstract = dm.abstract_discriminator(unet.config, dict(HEADS, include_mid_block=True))
    def shapes(m):
        return {p: (v.get_value().shape, v.get_value().dtype) for p, v in nnx.to_flat_state(nnx.state(m, nnx.Param))}
    assert shapes(abstract) == shapes(disc)


def _kw(x):
    return dict(noisy=x["noisy"], sigma=x["sigma"], cond_latents=x["cond"], encoder_hidden_states=x["context"],
                added_time_ids=x["ids"])


# ---- discriminator output and gradients ------------------------------------------------------------
def test_output_shapes_and_aggregate(disc):
    x = _inputs(disc.backbone.config, seed=3)
    out = _call(disc, x)
    # 7×10 latents → 4×5 after block 0's stride-2 conv (padding 1: ceil(n/2)); block 1 and mid keep the size
    sizes = {"down_blocks.0": (4, 5), "down_blocks.1": (4, 5), "mid_block": (4, 5)}
    assert sorted(out.heads) == sorted(f"{k}/{n}" for k in ("spatial", "temporal") for n in sizes)
    for name, v in out.heads.items():
        assert v.shape == (B, T, *sizes[name.split("/")[1]]), name
        assert np.all(np.isfinite(v))
    manual = np.mean([np.asarray(v).reshape(B, -1).mean(axis=1) for v in out.heads.values()], axis=0)
    np.testing.assert_allclose(out.logits, manual, rtol=1e-6, atol=1e-7)
    # D feeds its backbone exactly what the UNet would get at σ′: [c_in(σ′)·x′, cond] and c_noise(σ′)
    sig = np.asarray(x["sigma"], np.float64)
    c_in = (1.0 / np.sqrt(sig**2 + 1.0)).astype(np.float32).reshape(B, 1, 1, 1, 1)
    sample = jnp.concatenate([c_in * x["noisy"], x["cond"]], axis=-1)
    feats = disc.backbone(sample, jnp.asarray(0.25 * np.log(sig), jnp.float32), x["context"], x["ids"])
    by_hand = disc.heads(feats, x["sigma"], x["context"])
    for k, v in out.heads.items():
        np.testing.assert_allclose(v, by_hand[k], rtol=1e-5, atol=1e-6, err_msg=k)
    # the scalar σ form equals the per-sample form
    one = dict(x, sigma=jnp.float32(0.7))
    np.testing.assert_allclose(_call(disc, one).logits, _call(disc, dict(x, sigma=jnp.full((B,), 0.7))).logits,
                               rtol=1e-6)


def test_gradients_reach_every_head_and_skip_the_backbone(disc):
    x = _inputs(disc.backbone.config, seed=4)

    def loss(d):  # the real half of L_D (with both halves active everywhere, the logit biases' gradients cancel)
        return al.discriminator_hinge_loss(_call(d, x).heads, jnp.full((1,), 5.0))  # fake term: relu(1 − 5) = 0

    grads = nnx.grad(loss, argnums=nnx.DiffState(0, dm.HEAD_PARAMS))(disc)
    flat = list(nnx.to_flat_state(grads))
    head_paths = {p for p, _ in nnx.to_flat_state(nnx.state(disc, dm.HEAD_PARAMS))}
    assert {p for p, _ in flat} == head_paths  # no backbone entry at all
    dead = [p for p, g in flat if not np.any(np.asarray(g[...]) != 0)]
    assert not dead, f"no gradient reaches {dead}"


def test_remat_gives_the_same_logits_and_input_gradient(disc):
    """train.remat recomputes each backbone layer in the backward pass (layers.remat_call): the same logits and
    the same gradient with respect to the generated clip, through which the generator learns."""
    x = _inputs(disc.backbone.config, seed=6)
    graphdef, weights = nnx.split(disc)

    def logits_and_grad(remat):
        def f(noisy):  # fresh Variables inside the traced function, as the adversarial step's merge makes
            d = nnx.merge(graphdef, jax.tree.map(lambda a: a, weights))
            d.backbone.remat = remat
            return _call(d, dict(x, noisy=noisy)).logits.sum()

        return jax.jit(jax.value_and_grad(f))(x["noisy"])

    (plain, plain_grad), (remat, remat_grad) = logits_and_grad(False), logits_and_grad(True)
    np.testing.assert_allclose(remat, plain, rtol=1e-6)
    assert np.abs(plain_grad).max() > 0
    assert np.linalg.norm(remat_grad - plain_grad) <= 1e-5 * np.linalg.norm(plain_grad)


def test_samples_are_independent(disc):
    """R1's one-backward trick (adversarial_loss.r1_penalty) needs sample b's score to depend on sample
    b's input only: changing clip 1 leaves clip 0's score and every one of its head logits unchanged."""
    x = _inputs(disc.backbone.config, seed=5)
    base = _call(disc, x)
    other = _call(disc, dict(x, noisy=x["noisy"].at[1].multiply(-1.0)))
    assert float(other.logits[0]) == float(base.logits[0]) and float(other.logits[1]) != float(base.logits[1])
    for k in base.heads:
        np.testing.assert_array_equal(other.heads[k][0], base.heads[k][0], err_msg=k)


# ---- heads: what each head sees --------------------------------------------------------------------
@pytest.fixture(scope="module")
def heads():
    cfg = dm.DiscriminatorConfig(**HEADS)
    return dm.DiscriminatorHeads(["a"], [16], context_dim=8, config=cfg, rngs=nnx.Rngs(3))


def _head_inputs(seed=0, b=2, t=5, h=3, w=4, c=16):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, t, h, w, c)).astype(np.float32)
    context = jnp.asarray(rng.standard_normal((b, 2, 8)).astype(np.float32))
    sigma = jnp.asarray([0.3, 20.0], jnp.float32)
    return x, context, sigma


def _run_heads(heads, x, context, sigma, positions=None):
    b, t, h, w, c = x.shape
    pos = jnp.arange(t) if positions is None else jnp.asarray(positions)
    out = heads([dm.Feature("a", jnp.asarray(x.reshape(b * t, h, w, c)), t, pos)], sigma, context)
    return np.asarray(out["spatial/a"]), np.asarray(out["temporal/a"])


def test_spatial_head_is_per_frame(heads):
    x, ctx, sig = _head_inputs(1)
    s0, t0 = _run_heads(heads, x, ctx, sig)
    x2 = x.copy()
    x2[1, 3] += 1.0  # change frame 3 of clip 1
    s1, t1 = _run_heads(heads, x2, ctx, sig)
    changed = np.any(s1 != s0, axis=(2, 3))
    assert changed[1, 3] and changed.sum() == 1, changed
    assert np.array_equal(t1[0], t0[0]) and np.any(t1[1] != t0[1])  # clip 0 untouched; temporal heads react
    # reversing the frames reverses the spatial logits (no frame index in spatial heads)
    s_rev, _ = _run_heads(heads, x[:, ::-1].copy(), ctx, sig)
    np.testing.assert_allclose(s_rev, s0[:, ::-1], rtol=1e-5, atol=1e-6)


def test_temporal_head_is_per_location(heads):
    x, ctx, sig = _head_inputs(2)
    s0, t0 = _run_heads(heads, x, ctx, sig)
    x2 = x.copy()
    x2[1, :, 2, 1] += 1.0  # change one location of clip 1 in every frame
    _, t1 = _run_heads(heads, x2, ctx, sig)
    changed = np.any(t1 != t0, axis=1)  # (B, h, w)
    assert changed[1, 2, 1] and changed.sum() == 1, changed
    # permuting the locations consistently permutes the temporal logits the same way
    b, t, h, w, c = x.shape
    perm = np.random.default_rng(0).permutation(h * w)
    xp = x.reshape(b, t, h * w, c)[:, :, perm].reshape(x.shape)
    _, tp = _run_heads(heads, xp, ctx, sig)
    np.testing.assert_allclose(tp, t0.reshape(b, t, h * w)[:, :, perm].reshape(t0.shape), rtol=1e-5, atol=1e-6)
    # the frame index conditions the temporal heads only
    s2, t2 = _run_heads(heads, x, ctx, sig, positions=np.arange(t) * 2)
    assert np.array_equal(s2, s0) and np.any(t2 != t0)


def test_heads_are_conditioned_on_image_and_noise_level(heads):
    x, ctx, sig = _head_inputs(3)
    s0, t0 = _run_heads(heads, x, ctx, sig)
    s1, t1 = _run_heads(heads, x, ctx.at[1].multiply(-1.0), sig)
    assert np.array_equal(s1[0], s0[0]) and np.any(s1[1] != s0[1]) and np.any(t1[1] != t0[1])
    s2, _ = _run_heads(heads, x, ctx, sig.at[0].set(5.0))
    assert np.any(s2[0] != s0[0]) and np.array_equal(s2[1], s0[1])


# ---- noise levels --------------------------------------------------------------------------------
def _karras64(n, smin=0.002, smax=700.0, rho=7.0):
    i = np.arange(n, dtype=np.float64)
    return (smin ** (1 / rho) + i / (n - 1) * (smax ** (1 / rho) - smin ** (1 / rho))) ** rho  # ascending


def test_generator_sigmas_are_the_karras_tg4_levels():
    got = al.generator_sigmas()
    expected = _karras64(4)[1:]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_allclose(got, [2.2691, 70.541, 700.0], rtol=5e-5)  # SF-V Eq. 5 values
    draws = np.asarray(al.sample_generator_sigmas(jax.random.key(0), (3000,)))
    values, counts = np.unique(draws, return_counts=True)
    np.testing.assert_array_equal(values, got)
    assert np.all(np.abs(counts / 3000 - 1 / 3) < 0.03)


def test_discretized_lognormal_matches_eq7_in_float64():
    p = al.discretized_lognormal_probs()
    assert p.shape == (1000,) and np.all(p >= 0)
    assert abs(p.sum() - 1.0) < 1e-12
    levels = _karras64(1000)
    z = (np.log(levels) + 1.0) / math.sqrt(2.0)  # P_mean = −1, P_std = 1
    cdf = np.array([math.erf(v) for v in z])
    ref = np.diff(np.concatenate([[-1.0], cdf]))
    ref /= ref.sum()
    np.testing.assert_allclose(p, ref, rtol=1e-4, atol=1e-15)
    # the mode sits near σ′ = e^(−1) in log space weighted by the level density: check the mean of ln σ′
    # against the truncated normal's (the mass outside [σ_min, σ_max] is < 1e-6)
    assert abs(np.sum(p * np.log(levels)) - (-1.0)) < 0.02


def test_discriminator_sigma_histogram_matches_probabilities():
    n = 200_000
    p = al.discretized_lognormal_probs()
    idx = np.asarray(al.sample_discriminator_sigma_indices(jax.random.key(7), (n,)))
    assert idx.min() >= 0 and idx.max() < 1000
    counts = np.bincount(idx, minlength=1000)
    expected = n * p
    # Pearson χ² over the levels, the sparse tails pooled so that every cell expects ≥ 5 draws
    order = np.arange(1000)
    lo, hi = order[np.cumsum(expected) >= 5][0], order[::-1][np.cumsum(expected[::-1]) >= 5][0]
    obs = np.concatenate([[counts[:lo + 1].sum()], counts[lo + 1:hi], [counts[hi:].sum()]])
    exp = np.concatenate([[expected[:lo + 1].sum()], expected[lo + 1:hi], [expected[hi:].sum()]])
    chi2 = np.sum((obs - exp) ** 2 / exp)
    dof = len(obs) - 1
    assert chi2 < stats.chi2.ppf(0.999, dof), (chi2, dof)
    sig = np.asarray(al.sample_discriminator_sigmas(jax.random.key(7), (n,)))
    np.testing.assert_array_equal(sig, al.karras_levels(1000)[idx])


# ---- losses ------------------------------------------------------------------------------------
def test_hinge_losses_follow_sf_v_sign_convention():
    rng = np.random.default_rng(0)
    heads = lambda: {"s": rng.normal(size=(2, 3, 4, 5)).astype(np.float32),
                     "t": rng.normal(size=(2, 3, 2, 2)).astype(np.float32)}
    real, fake = heads(), heads()
    relu = lambda a: np.maximum(a, 0.0)
    expected = (np.mean([relu(1 + real[k]).mean() for k in real]) + np.mean([relu(1 - fake[k]).mean() for k in fake]))
    np.testing.assert_allclose(al.discriminator_hinge_loss(real, fake), expected, rtol=1e-6)
    np.testing.assert_allclose(al.generator_adversarial_loss(fake), np.mean([fake[k].mean() for k in fake]), rtol=1e-6)
    # hand-built outputs: a D that is low (≤ −1) on real and high (≥ +1) on fake has zero loss ...
    assert float(al.discriminator_hinge_loss(jnp.array([-1.5, -1.0]), jnp.array([1.0, 3.0]))) == 0.0
    # ... the reverse is penalised: 1 + 2 for real at +2, 1 + 2 for fake at −2
    assert float(al.discriminator_hinge_loss(jnp.array([2.0]), jnp.array([-2.0]))) == 6.0
    # the generator gains by lowering D on its samples
    g_adv = lambda v: float(al.generator_adversarial_loss(jnp.array([v])))
    assert g_adv(-1.0) < g_adv(1.0)
    total, parts = al.discriminator_loss(jnp.array([2.0]), jnp.array([-2.0]), r1=jnp.float32(0.5))
    assert float(total) == 6.5 and float(parts["hinge"]) == 6.0 and float(parts["r1"]) == 0.5


def test_r1_equals_finite_differences_on_a_tiny_discriminator():
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        w1, w2 = rng.normal(size=(6, 7)), rng.normal(size=(7,))

        def d(x):  # a tiny nonlinear per-sample D: x (B, 2, 3) → (B,)
            hidden = jnp.tanh(x.reshape(x.shape[0], -1) @ w1)
            return hidden @ w2 + 0.3 * jnp.sum(jnp.sin(x) ** 2, axis=(1, 2))

        x = rng.normal(size=(3, 2, 3))
        eps = 1e-6
        grads = np.zeros_like(x)
        for idx in np.ndindex(*x.shape):
            e = np.zeros_like(x)
            e[idx] = eps
            grads[idx] = (np.asarray(d(x + e)) - np.asarray(d(x - e)))[idx[0]] / (2 * eps)
        expected = 2.5 * np.mean(np.sum(grads.reshape(3, -1) ** 2, axis=1))
        got = al.r1_penalty(d, jnp.asarray(x), gamma=2.5)
        np.testing.assert_allclose(float(got), expected, rtol=1e-7)
        jitted = jax.jit(lambda x: al.r1_penalty(d, x, gamma=2.5))
        assert float(jitted(jnp.asarray(x))) == pytest.approx(expected, rel=1e-7)


def test_pseudo_huber_and_generator_loss():
    rng = np.random.default_rng(2)
    x0 = rng.normal(size=(2, 3, 4, 5, 4)).astype(np.float32)
    xh = (x0 + 0.1 * rng.normal(size=x0.shape)).astype(np.float32)
    d = 3 * 4 * 5 * 4
    c = 0.00054 * math.sqrt(d)
    sq = np.sum((xh.astype(np.float64) - x0) ** 2, axis=(1, 2, 3, 4))
    expected = np.mean(np.sqrt(sq + c * c) - c)
    np.testing.assert_allclose(al.pseudo_huber_loss(xh, x0), expected, rtol=1e-5)
    np.testing.assert_allclose(al.pseudo_huber_loss(xh, x0, c=2.0), np.mean(np.sqrt(sq + 4.0) - 2.0), rtol=1e-5)
    assert float(al.pseudo_huber_loss(x0, x0)) == 0.0
    fake = jnp.asarray([0.2, -0.4])
    total, parts = al.generator_loss(fake, xh, x0)
    np.testing.assert_allclose(total, -0.1 + 0.1 * expected, rtol=1e-5)
    np.testing.assert_allclose(parts["reconstruction"], expected, rtol=1e-5)
    # the reconstruction-only control: D's term weighted out, the parts still reported unweighted
    total0, parts0 = al.generator_loss(fake, xh, x0, recon_weight=0.5, adversarial_weight=0.0)
    np.testing.assert_allclose(total0, 0.5 * expected, rtol=1e-5)
    np.testing.assert_allclose(parts0["adversarial"], -0.1, rtol=1e-6)
    total2, _ = al.generator_loss(fake, xh, x0, adversarial_weight=2.0)
    np.testing.assert_allclose(total2, -0.2 + 0.1 * expected, rtol=1e-5)


# ---- errors ------------------------------------------------------------------------------------
def test_bad_inputs_raise_clear_errors(disc):
    x = _inputs(disc.backbone.config, seed=6, t=2, h=4, w=6)
    k = _kw(x)
    with pytest.raises(ValueError, match="in_channels=8"):
        disc(**dict(k, noisy=jnp.zeros((B, 2, 4, 6, 5)), cond_latents=jnp.zeros((B, 2, 4, 6, 5))))
    with pytest.raises(ValueError, match="cond_latents"):
        disc(**dict(k, cond_latents=k["cond_latents"][:, :1]))
    with pytest.raises(ValueError, match=r"\(B, T, H, W, C\)"):
        disc(**dict(k, noisy=k["noisy"][0], cond_latents=k["cond_latents"][0]))
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        disc(**dict(k, encoder_hidden_states=jnp.zeros((B, 1, 7))))
    with pytest.raises(ValueError, match="sigma"):
        disc(**dict(k, sigma=jnp.ones((3,))))
    with pytest.raises(ValueError, match="added_time_ids"):
        disc(**dict(k, added_time_ids=jnp.zeros((B, 2))))
    with pytest.raises(UserError, match="unknown discriminator config"):
        dm.as_discriminator_config({"head_channel": 32})
    with pytest.raises(UserError, match="not divisible"):
        dm.DiscriminatorConfig(head_channels=40, norm_groups=32)
    with pytest.raises(UserError, match="odd"):
        dm.DiscriminatorConfig(temporal_kernel=2)
    with pytest.raises(ValueError, match="one score per sample"):
        al.r1_penalty(lambda v: v.sum(axis=1), jnp.ones((2, 3, 4)))
    with pytest.raises(ValueError, match="same shape"):
        al.pseudo_huber_loss(jnp.ones((2, 3)), jnp.ones((2, 4)))
    with pytest.raises(ValueError, match="at least 2"):
        al.generator_sigmas(1)
    with pytest.raises(ValueError, match="p_std"):
        al.discretized_lognormal_probs(p_std=0.0)
    with pytest.raises(ValueError, match="no discriminator logits"):
        al.generator_adversarial_loss({})
