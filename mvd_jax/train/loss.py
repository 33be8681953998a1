"""SVD's diffusion training objective (EDM, v-parameterised through the preconditioning).

    σ: ln σ ~ N(P_mean, P_std²) per clip;  x_σ = x_0 + σ·ε
    with probability `cond_dropout` a clip's image embedding and conditioning latent are zeroed
        together (what the sampler's unconditional branch sees, so guidance has something to contrast);
    L = mean over clips of λ(σ)·mean‖D(x_σ; σ, cond) − x_0‖²,  λ(σ) = (σ² + 1)/σ²   (σ_data = 1)

With temporal gates (MobileVD §2(e)): "sampled" gating draws a 0/1 gate vector with `gate_keep` ones
per step (straight-through gradient to the importance logits); "l1" gating uses the continuous
scales and adds l1_weight·Σ|g|.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from mvd_jax.diffusion import edm


def diffusion_loss(unet, batch: dict, key, *, p_mean: float, p_std: float, cond_dropout: float,
                   gate_keep: int = 0, l1_weight: float = 0.0, dtype=jnp.float32):
    """batch: latents (B, T, h, w, C), cond_latent (B, h, w, C), image_embeds (B, 1, D), added_time_ids (B, 3).
    Returns (loss, aux dict)."""
    latents = batch["latents"].astype(jnp.float32)
    b, t = latents.shape[:2]
    k_sigma, k_noise, k_drop, k_gate = jax.random.split(key, 4)
    sigma = edm.sample_training_sigmas(k_sigma, (b,), p_mean, p_std)
    noisy = latents + sigma.reshape(b, 1, 1, 1, 1) * jax.random.normal(k_noise, latents.shape)
    keep = (jax.random.uniform(k_drop, (b,)) >= cond_dropout).astype(jnp.float32)
    embeds = batch["image_embeds"] * keep.reshape(b, 1, 1)
    cond = jnp.repeat((batch["cond_latent"] * keep.reshape(b, 1, 1, 1))[:, None], t, axis=1)

    gates, penalty = None, jnp.float32(0.0)
    mode = unet.config.temporal_gating
    if mode == "sampled":
        gates = unet.temporal_gates.sample(k_gate, gate_keep)
    elif mode == "l1":
        gates = unet.temporal_gates.continuous()
        penalty = l1_weight * unet.temporal_gates.l1_penalty()

    def model_fn(x, c_noise, context, ids):
        out = unet(x.astype(dtype), c_noise, context.astype(dtype), ids, temporal_gates=gates)
        return out.astype(jnp.float32)

    denoised = edm.denoise(model_fn, noisy, sigma, cond, embeds, batch["added_time_ids"])
    per_clip = jnp.mean(jnp.square(denoised - latents), axis=(1, 2, 3, 4)) * edm.loss_weight(sigma)
    loss = jnp.mean(per_clip)
    return loss + penalty, {"denoising_loss": loss, "sigma_mean": jnp.mean(sigma)}
