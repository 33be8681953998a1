"""EDM preconditioning for SVD (v-prediction with EDM's c_noise, σ_data = 1), σ schedules and the
training-σ distribution — shared by sampling and training.

    D(x; σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x; c_noise(σ))
    c_skip = 1/(σ²+1),  c_out = −σ/√(σ²+1),  c_in = 1/√(σ²+1),  c_noise = ¼·ln σ

(generative-models' VScalingWithEDMcNoise; diffusers' EulerDiscreteScheduler with
prediction_type="v_prediction", timestep_type="continuous"). F is the UNet; the conditioning
latent is concatenated to c_in·x on the channel axis (it is not scaled).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

SIGMA_MIN = 0.002
SIGMA_MAX = 700.0
RHO = 7.0


def c_skip(sigma):
    return 1.0 / (sigma**2 + 1.0)


def c_out(sigma):
    return -sigma / jnp.sqrt(sigma**2 + 1.0)


def c_in(sigma):
    return 1.0 / jnp.sqrt(sigma**2 + 1.0)


def c_noise(sigma):
    return 0.25 * jnp.log(sigma)


def karras_sigmas(num_steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX,
                  rho: float = RHO) -> np.ndarray:
    """Karras et al. σ_0 > … > σ_{n−1} plus a final 0, as float32 (computed in float64 like diffusers)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be ≥ 1, got {num_steps}")
    ramp = np.linspace(0, 1, num_steps)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return np.concatenate([sigmas, [0.0]]).astype(np.float32)


def initial_noise_scale(sigma_max: float) -> float:
    """Std of the starting latents: √(σ_max²+1), as diffusers' scheduler ("leading" spacing) uses for SVD.

    (EDM proper starts at σ_max; the two differ by a factor 1 + 1e-6 at σ_max = 700.)
    """
    return float(np.sqrt(np.float32(sigma_max) ** 2 + 1))


def denoise(model_fn, x, sigma, cond_latents, context, added_time_ids):
    """D(x; σ): model_fn(unet_input (B,T,H,W,2C), c_noise (B,), context, added_time_ids) → v-prediction.

    x (B, T, H, W, C) noisy latents; sigma (B,) or scalar; cond_latents (B, T, H, W, C).
    """
    b = x.shape[0]
    sigma = jnp.broadcast_to(jnp.asarray(sigma, x.dtype).reshape(-1), (b,))
    s = sigma.reshape(b, 1, 1, 1, 1)
    unet_input = jnp.concatenate([c_in(s) * x, cond_latents], axis=-1)
    v = model_fn(unet_input, c_noise(sigma), context, added_time_ids)
    return c_skip(s) * x + c_out(s) * v


# ---- training --------------------------------------------------------------------------------
def sample_training_sigmas(key, shape, p_mean: float, p_std: float):
    """ln σ ~ N(P_mean, P_std²) (EDM's training distribution; SVD finetunes commonly use 0.7 / 1.6)."""
    return jnp.exp(p_mean + p_std * jax.random.normal(key, shape))


def loss_weight(sigma):
    """λ(σ) = (σ²+σ_data²)/(σ·σ_data)² with σ_data = 1: makes the loss on D a unit-variance v-loss."""
    return (sigma**2 + 1.0) / sigma**2
