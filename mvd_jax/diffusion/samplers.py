"""Samplers for SVD-style image→video diffusion: Euler (EDM) with frame-wise linearly increasing
classifier-free guidance, and the single step of the adversarially distilled model.

Both are pure functions of a `model_fn(unet_input, c_noise, context, added_time_ids) -> v` so one
`jax.jit` compiles a whole sample (the step loop is a `lax.fori_loop`). Guidance follows diffusers'
StableVideoDiffusionPipeline: the unconditional branch zeroes the image embedding and the
conditioning latent, both branches run in one batched forward ([uncond, cond] on the batch axis),
and the guidance scale of frame f is linspace(min_scale, max_scale, T)[f]; guidance is on when
max_scale > 1.

`clockwork_euler_sample` is the Euler sampler with Clockwork Diffusion's clock schedule
(models/clockwork.py): the full UNet on the first step and every `clock`-th step, on the others the
UNet's high-resolution parts around an adaptor's estimate of the low-resolution features — in the
same compiled loop.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mvd_jax.diffusion import edm
from mvd_jax.errors import UserError


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


# ---- Clockwork ---------------------------------------------------------------------------------
def clock_schedule(steps: int, clock: int) -> np.ndarray:
    """(steps,) booleans: True where the full UNet runs — the first step and every `clock`-th one after it
    (the paper's "clock N") — False where the adaptor stands in for the low-resolution part."""
    if isinstance(clock, bool) or not isinstance(clock, (int, np.integer)) or clock < 1:
        raise UserError(f"clock must be an integer ≥ 1 (1: the full UNet on every step), got {clock!r}")
    if steps < 1:
        raise UserError(f"steps must be ≥ 1, got {steps}")
    return np.arange(steps) % clock == 0


def clockwork_euler_sample(parts, noise, sigmas, cond_latents, context, added_time_ids, *, clock: int,
                           min_scale: float = 1.0, max_scale: float = 3.0, on_step=None):
    """`euler_sample` under a clock schedule (clock_schedule). `parts`: models/clockwork.ClockworkParts —
    the UNet split where its adaptor sits, and the adaptor.

    Each step runs the high-resolution input part, then either the low-resolution part (clock steps) or
    the adaptor on the previous step's r_out (the others, a `lax.cond` inside the loop, so the low part
    is really skipped), then the high-resolution output part; the step's r_out is carried to the next.
    With guidance both branches' features travel together ([uncond, cond] on the batch axis). clock 1
    runs the full UNet on every step, without the cond: the plain sampler's operations.
    """
    sigmas = jnp.asarray(sigmas, jnp.float32)
    steps = sigmas.shape[0] - 1
    full = jnp.asarray(clock_schedule(steps, clock))
    x = noise * jnp.sqrt(sigmas[0] ** 2 + 1.0)

    def denoise_step(i, x, cached):
        """(D(x; σ_i), this step's r_out); cached None: the full UNet. model_fn hands r_out out through `out`
        (the same trace)."""
        out = []

        def model_fn(unet_input, c_noise, ctx, ids):
            state = parts.high_in(unet_input, c_noise, ctx, ids)
            if clock == 1 or cached is None:
                r_out = parts.low(state)
            else:
                r_out = jax.lax.cond(full[i], lambda s, _: parts.low(s), parts.adapt, state, cached)
            out.append(r_out)
            return parts.high_out(state, r_out)

        d = guided_denoiser(model_fn, cond_latents, context, added_time_ids, min_scale, max_scale)(x, sigmas[i])
        return d, out[0]

    # The loop carries r_out, so its shape is needed before the first step: traced abstractly, nothing runs.
    # (The first step always runs the full UNet, so the zeros are never read.)
    shape = jax.eval_shape(lambda x: denoise_step(0, x, None)[1], x)

    def step(i, carry):
        x, cached = carry
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        d, r_out = denoise_step(i, x, cached)
        x = x + (sigma_next - sigma) * (x - d) / sigma
        if on_step is not None:
            jax.debug.callback(on_step, i, ordered=True)
        return x, r_out

    return jax.lax.fori_loop(0, steps, step, (x, jnp.zeros(shape.shape, shape.dtype)))[0]

