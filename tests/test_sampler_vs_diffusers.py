"""EDM preconditioning and the Euler sampler against diffusers' EulerDiscreteScheduler and the
denoising loop of StableVideoDiffusionPipeline (same UNet weights, same initial noise)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler

import oracle
from mvd_jax.convert import load_unet
from mvd_jax.diffusion import edm, samplers

# SVD's scheduler_config.json (stable-video-diffusion-img2vid/scheduler).
SVD_SCHEDULER = dict(beta_end=0.012, beta_schedule="scaled_linear", beta_start=0.00085, clip_sample=False,
                     interpolation_type="linear", num_train_timesteps=1000, prediction_type="v_prediction",
                     set_alpha_to_one=False, sigma_max=700.0, sigma_min=0.002, skip_prk_steps=True, steps_offset=1,
                     timestep_spacing="leading", timestep_type="continuous", trained_betas=None,
                     use_karras_sigmas=True)


def svd_scheduler(steps):
    s = EulerDiscreteScheduler.from_config(SVD_SCHEDULER)
    s.set_timesteps(steps)
    return s


@pytest.mark.parametrize("steps", [1, 3, 25])
def test_sigmas_timesteps_and_initial_scale_equal_the_scheduler(steps):
    s = svd_scheduler(steps)
    sigmas = edm.karras_sigmas(steps)
    np.testing.assert_array_equal(sigmas, s.sigmas.numpy())
    np.testing.assert_allclose(np.asarray(edm.c_noise(jnp.asarray(sigmas[:-1]))), s.timesteps.numpy(), rtol=1e-6)
    assert edm.initial_noise_scale(700.0) == pytest.approx(float(s.init_noise_sigma), rel=1e-7)
    if steps == 25:
        np.testing.assert_allclose(sigmas[:3], [700.0, 545.7, 421.6], rtol=2e-4)  # mobilevd_paper.md §1.5


def test_euler_step_equals_the_scheduler_step():
    s = svd_scheduler(5)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 4, 4, 4)).astype(np.float32) * 50
    v = rng.standard_normal(x.shape).astype(np.float32)
    sigmas = edm.karras_sigmas(5)
    for i in range(3):  # walk three steps of the schedule
        t = s.timesteps[i]
        expected = s.step(torch.from_numpy(v), t, torch.from_numpy(x)).prev_sample.numpy()
        sigma, nxt = sigmas[i], sigmas[i + 1]
        d = edm.c_skip(sigma) * x + edm.c_out(sigma) * v
        got = np.asarray(x + (nxt - sigma) * (x - d) / sigma)
        assert oracle.rel_l2(got, expected) < 1e-6
        x = expected


def test_guidance_scales_equal_the_pipeline():
    np.testing.assert_allclose(np.asarray(samplers.guidance_scales(14, 1.0, 3.0)),
                               torch.linspace(1.0, 3.0, 14).numpy(), rtol=2e-7)  # 1 ulp


def test_training_sigma_distribution_and_weight():
    s = np.asarray(edm.sample_training_sigmas(jax.random.key(0), (200_000,), 0.7, 1.6))
    assert abs(np.log(s).mean() - 0.7) < 0.02 and abs(np.log(s).std() - 1.6) < 0.02
    assert float(edm.loss_weight(1.0)) == 2.0


@torch.no_grad()
def diffusers_denoising_loop(unet, noise, cond_latents, context, added_time_ids, steps, min_scale, max_scale):
    """The loop of StableVideoDiffusionPipeline.__call__ (diffusers 0.42), in diffusers' layouts."""
    s = svd_scheduler(steps)
    latents = torch.from_numpy(noise) * s.init_noise_sigma
    cond = torch.from_numpy(cond_latents)
    ctx = torch.from_numpy(context)
    ids = torch.from_numpy(added_time_ids)
    cfg = max_scale > 1
    if cfg:
        cond, ctx, ids = torch.cat([torch.zeros_like(cond), cond]), torch.cat([torch.zeros_like(ctx), ctx]), \
            torch.cat([ids, ids])
    t_frames = noise.shape[1]
    scale = torch.linspace(min_scale, max_scale, t_frames).unsqueeze(0)[..., None, None, None]
    for t in s.timesteps:
        inp = torch.cat([latents] * 2) if cfg else latents
        inp = s.scale_model_input(inp, t)
        inp = torch.cat([inp, cond], dim=2)
        v = unet(inp, t, encoder_hidden_states=ctx, added_time_ids=ids, return_dict=False)[0]
        if cfg:
            v_u, v_c = v.chunk(2)
            v = v_u + scale * (v_c - v_u)
        latents = s.step(v, t, latents).prev_sample
    return latents.numpy()


@pytest.mark.parametrize("steps,max_scale", [(3, 3.0), (1, 3.0), (2, 1.0)])
def test_euler_sampler_equals_the_pipeline_loop(diffusers_unets, steps, max_scale):
    torch_unet, folder = diffusers_unets("tiny")
    unet = load_unet(folder)
    cfg = oracle.SMALL_CONFIGS["tiny"]
    rng = np.random.default_rng(steps)
    b, t, h, w = 2, 4, 8, 16
    noise = rng.standard_normal((b, t, 4, h, w)).astype(np.float32)
    cond = rng.standard_normal((b, t, 4, h, w)).astype(np.float32)
    ctx = rng.standard_normal((b, 1, cfg["cross_attention_dim"])).astype(np.float32)
    ids = np.array([[6.0, 127.0, 0.02], [10.0, 60.0, 0.1]], np.float32)

    expected = diffusers_denoising_loop(torch_unet, noise, cond, ctx, ids, steps, 1.0, max_scale)

    cl = lambda a: jnp.asarray(a.transpose(0, 1, 3, 4, 2))  # (B,T,C,H,W) → channels-last

    @jax.jit
    def sample(state, noise, cond, ctx, ids):
        from flax import nnx
        model = nnx.merge(graphdef, state)
        return samplers.euler_sample(lambda *a: model(*a), noise, edm.karras_sigmas(steps), cond, ctx, ids,
                                     min_scale=1.0, max_scale=max_scale)

    from flax import nnx
    graphdef, state = nnx.split(unet)
    got = np.asarray(sample(state, cl(noise), cl(cond), jnp.asarray(ctx), jnp.asarray(ids))).transpose(0, 1, 4, 2, 3)
    assert oracle.rel_l2(got, expected) <= 1e-4


def test_single_step_sampler_is_one_denoiser_call_at_sigma_max():
    calls = []

    def model_fn(x, c_noise, ctx, ids):
        calls.append(x.shape)
        return jnp.zeros(x.shape[:-1] + (4,))

    noise = jnp.ones((1, 2, 4, 4, 4))
    out = samplers.single_step_sample(model_fn, noise, jnp.zeros_like(noise), jnp.zeros((1, 1, 8)), jnp.zeros((1, 3)))
    assert len(calls) == 1 and calls[0] == (1, 2, 4, 4, 8)
    # v = 0 → D = c_skip(σ)·σ·noise = σ/(σ²+1)·noise
    np.testing.assert_allclose(np.asarray(out), 700.0 / (700.0**2 + 1), rtol=1e-6)
