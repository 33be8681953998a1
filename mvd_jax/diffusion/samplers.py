"""Samplers for SVD-style image→video diffusion: Euler (EDM) with frame-wise linearly increasing
classifier-free guidance, and the single step of the adversarially distilled model.

Both are pure functions of a `model_fn(unet_input, c_noise, context, added_time_ids) -> v` so one
`jax.jit` compiles a whole sample (the step loop is a `lax.fori_loop`). Guidance follows diffusers'
StableVideoDiffusionPipeline: the unconditional branch zeroes the image embedding and the
conditioning latent, both branches run in one batched forward ([uncond, cond] on the batch axis),
and the guidance scale of frame f is linspace(min_scale, max_scale, T)[f]; guidance is on when
max_scale > 1.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from mvd_jax.diffusion import edm


def guidance_scales(num_frames: int, min_scale: float, max_scale: float):
    """(T,) per-frame scales, rising linearly from the first frame to the last."""
    return jnp.linspace(min_scale, max_scale, num_frames, dtype=jnp.float32)


def guided_denoiser(model_fn, cond_latents, context, added_time_ids, min_scale: float, max_scale: float):
    """x, σ → D(x; σ) with frame-wise CFG (or plain D when max_scale ≤ 1)."""
    if max_scale <= 1.0:
        return lambda x, sigma: edm.denoise(model_fn, x, sigma, cond_latents, context, added_time_ids)

    b, t = cond_latents.shape[:2]
    scales = guidance_scales(t, min_scale, max_scale).reshape(1, t, 1, 1, 1)
    both_latents = jnp.concatenate([jnp.zeros_like(cond_latents), cond_latents])
    both_context = jnp.concatenate([jnp.zeros_like(context), context])
    both_ids = jnp.concatenate([added_time_ids, added_time_ids])

    def denoiser(x, sigma):
        d = edm.denoise(model_fn, jnp.concatenate([x, x]), sigma, both_latents, both_context, both_ids)
        d_uncond, d_cond = d[:b], d[b:]
        # CFG on D equals diffusers' CFG on v: D is affine in v with the same c_skip·x in both branches.
        return d_uncond + scales * (d_cond - d_uncond)

    return denoiser


def euler_sample(model_fn, noise, sigmas, cond_latents, context, added_time_ids, *, min_scale: float = 1.0,
                 max_scale: float = 3.0, on_step=None):
    """Euler ODE sampling over `sigmas` (σ_0 > … > σ_{n−1}, 0), starting from `noise` (unit normal).

    x_0 = noise·√(σ_0²+1) (diffusers' initial scale); each step x ← x + (σ_next − σ)·(x − D(x; σ))/σ.
    `on_step(i)` (optional, a host function) is called after each step, e.g. for a progress bar.
    """
    sigmas = jnp.asarray(sigmas, jnp.float32)
    denoiser = guided_denoiser(model_fn, cond_latents, context, added_time_ids, min_scale, max_scale)
    x = noise * jnp.sqrt(sigmas[0] ** 2 + 1.0)

    def step(i, x):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        d = denoiser(x, sigma)
        x = x + (sigma_next - sigma) * (x - d) / sigma
        if on_step is not None:
            jax.debug.callback(on_step, i, ordered=True)
        return x

    return jax.lax.fori_loop(0, sigmas.shape[0] - 1, step, x)


def single_step_sample(model_fn, noise, cond_latents, context, added_time_ids, *, sigma_max: float = edm.SIGMA_MAX):
    """The distilled one-step generator: x̂_0 = D(σ_max·noise; σ_max), no guidance (one UNet call)."""
    return edm.denoise(model_fn, noise * sigma_max, sigma_max, cond_latents, context, added_time_ids)
