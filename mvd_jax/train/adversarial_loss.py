"""SF-V's adversarial objective for single-step finetuning (mobilevd_paper.md §2(f)): the noise
levels of generator and discriminator, the hinge losses, the R1 penalty and the pseudo-Huber
reconstruction loss. Pure functions; everything taking arrays is jit-able.

Noise levels
  * Generator: x_t = x0 + σε with σ uniform over {σ_1, …, σ_{T_g−1}}, the Karras/EDM discretisation
    with T_g = 4 levels over [σ_min, σ_max] = [0.002, 700], ρ = 7, without its smallest level σ_min:
    {2.2686, 70.54, 700} (SF-V Eq. 5). One step from σ_max = 700 is the 1-NFE sampler.
  * Discriminator: real and fake are re-noised, x′ = x0 + σ′ε, with σ′ drawn from a log-normal
    (P_mean = −1, P_std = 1; SF-V prints P_std = −1, which only makes sense as 1) discretised onto
    the T_d = 1000 Karras levels σ′_0 < … < σ′_999 (SF-V Eq. 7):
        p(σ′_t) ∝ erf((ln σ′_t − P_mean)/(√2·P_std)) − erf((ln σ′_{t−1} − P_mean)/(√2·P_std)),
    i.e. the normal probability of ln σ falling in (ln σ′_{t−1}, ln σ′_t]. Eq. 7 leaves the lowest
    level's lower edge open; we take σ′_{−1} = 0 (erf → −1), so level 0 collects the mass below σ_min.
    The mass above σ_max (ln 700 is 7.6 std above −1) is dropped by the normalisation.

Losses — SF-V's sign convention (as MoViE's): D is trained to output **low values on real** and high
on fake, and the generator minimises D(fake). This is the usual hinge loss with D → −D.
    L_D     = E[max(0, 1 + D(real))] + E[max(0, 1 − D(fake))]  (+ γ·R1 on real inputs, SF-V Eq. 11)
    L_G     = E[D(fake)] + λ·L_recon,   λ = 0.1                  (SF-V Eq. 8)
    L_recon = E[√(‖x̂0 − x0‖² + c²) − c]                          (pseudo-Huber, per sample)
The hinge and adversarial terms accept one logit array or a pytree of them (e.g. the discriminator's
`DiscriminatorOutput.heads`): each array is averaged over all its elements, and the arrays
(heads) are averaged with equal weight — the multi-head hinge of Projected GAN / StyleGAN-T.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import erf

from mvd_jax.diffusion.edm import RHO, SIGMA_MAX, SIGMA_MIN, karras_sigmas

GENERATOR_LEVELS = 4  # SF-V's T_g
DISCRIMINATOR_LEVELS = 1000  # SF-V's T_d
D_P_MEAN, D_P_STD = -1.0, 1.0  # SF-V's choice for σ′ (Table 3 ablation)
RECON_WEIGHT = 0.1  # SF-V's λ
HUBER_C_FACTOR = 0.00054  # c = 0.00054·√d (Song & Dhariwal 2023, "Improved techniques for consistency models")


# ---- noise levels ------------------------------------------------------------------------------
def karras_levels(num_levels: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX,
                  rho: float = RHO) -> np.ndarray:
    """The `num_levels` Karras σs, ascending (σ_min first, σ_max last), float32 (edm.karras_sigmas)."""
    return karras_sigmas(num_levels, sigma_min, sigma_max, rho)[:-1][::-1].copy()


def generator_sigmas(num_levels: int = GENERATOR_LEVELS, sigma_min: float = SIGMA_MIN,
                     sigma_max: float = SIGMA_MAX, rho: float = RHO) -> np.ndarray:
    """σ_1 < … < σ_{T_g−1}: the Karras levels without σ_min. T_g = 4 → [2.2686, 70.54, 700.0]."""
    if num_levels < 2:
        raise ValueError(f"the generator needs at least 2 Karras levels (σ_min is dropped), got {num_levels}")
    return karras_levels(num_levels, sigma_min, sigma_max, rho)[1:]


def sample_generator_sigmas(key, shape, num_levels: int = GENERATOR_LEVELS, sigma_min: float = SIGMA_MIN,
                            sigma_max: float = SIGMA_MAX, rho: float = RHO):
    """σ uniform over `generator_sigmas(...)`, float32 array of `shape`."""
    levels = jnp.asarray(generator_sigmas(num_levels, sigma_min, sigma_max, rho))
    return levels[jax.random.randint(key, shape, 0, levels.shape[0])]


def discretized_lognormal_probs(num_levels: int = DISCRIMINATOR_LEVELS, p_mean: float = D_P_MEAN,
                                p_std: float = D_P_STD, sigma_min: float = SIGMA_MIN,
                                sigma_max: float = SIGMA_MAX, rho: float = RHO) -> np.ndarray:
    """p(σ′_t) for the ascending Karras levels `karras_levels(num_levels, …)` (Eq. 7), float64, sums to 1.

    A NumPy constant of its Python-number arguments (computed on the host in float64, so that levels with
    tiny probability keep their digits); inside jit it is baked in as a constant.
    """
    if p_std <= 0:
        raise ValueError(f"p_std must be positive, got {p_std}")
    if num_levels < 1:
        raise ValueError(f"num_levels must be ≥ 1, got {num_levels}")
    log_levels = np.log(karras_levels(num_levels, sigma_min, sigma_max, rho).astype(np.float64))
    cdf = erf((log_levels - p_mean) / (math.sqrt(2.0) * p_std))  # 2·Φ − 1
    lower = np.concatenate([[-1.0], cdf[:-1]])  # σ′_{−1} = 0: erf(−∞) = −1
    p = cdf - lower
    total = p.sum()
    if not total > 0:
        raise ValueError(f"the log-normal (P_mean={p_mean}, P_std={p_std}) puts no mass on [{sigma_min}, {sigma_max}]")
    return p / total


def sample_discriminator_sigma_indices(key, shape, num_levels: int = DISCRIMINATOR_LEVELS,
                                       p_mean: float = D_P_MEAN, p_std: float = D_P_STD,
                                       sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX,
                                       rho: float = RHO):
    """Level indices t ~ p(σ′_t) (int32 array of `shape`), indexing `karras_levels(num_levels, …)`."""
    probs = discretized_lognormal_probs(num_levels, p_mean, p_std, sigma_min, sigma_max, rho)
    # Inverse-CDF sampling (jax.random.choice: cumsum + searchsorted), O(log T_d) per draw, where
    # categorical's Gumbel trick would draw T_d numbers per sample. Float32 uniforms resolve
    # probabilities down to ~1e-7: the levels below that (ln σ′ beyond ±5 std) are never drawn.
    return jax.random.choice(key, num_levels, tuple(shape), p=jnp.asarray(probs, jnp.float32)).astype(jnp.int32)


def sample_discriminator_sigmas(key, shape, num_levels: int = DISCRIMINATOR_LEVELS, p_mean: float = D_P_MEAN,
                                p_std: float = D_P_STD, sigma_min: float = SIGMA_MIN,
                                sigma_max: float = SIGMA_MAX, rho: float = RHO):
    """σ′ drawn from the discretised log-normal over the Karras levels (float32 array of `shape`)."""
    idx = sample_discriminator_sigma_indices(key, shape, num_levels, p_mean, p_std, sigma_min, sigma_max, rho)
    return jnp.asarray(karras_levels(num_levels, sigma_min, sigma_max, rho))[idx]


# ---- adversarial losses ------------------------------------------------------------------------
def _head_mean(logits, fn):
    """Mean over heads (pytree leaves, equal weight) of the mean of fn(leaf) over its elements."""
    leaves = jax.tree.leaves(logits)
    if not leaves:
        raise ValueError("no discriminator logits given")
    return sum(jnp.mean(fn(x.astype(jnp.float32))) for x in leaves) / len(leaves)


def discriminator_hinge_loss(real_logits, fake_logits):
    """L_D (without R1) = E[relu(1 + D(real))] + E[relu(1 − D(fake))]: D pushed ≤ −1 on real, ≥ +1 on fake.

    Each argument: a logit array or a pytree of logit arrays (one per head), see the module docstring.
    """
    return (_head_mean(real_logits, lambda d: jax.nn.relu(1.0 + d))
            + _head_mean(fake_logits, lambda d: jax.nn.relu(1.0 - d)))


def generator_adversarial_loss(fake_logits):
    """L_adv^G = E[D(fake)]: the generator lowers D on its samples (low = "real" in SF-V's convention)."""
    return _head_mean(fake_logits, lambda d: d)


def r1_penalty(fn, x_real, gamma: float = 1.0, *, has_aux: bool = False):
    """γ · E_b ‖∂D(x_real)_b / ∂x_real,b‖²: R1 (Mescheder et al. 2018) on real inputs, as SF-V Eq. 11
    writes it (γ·R1, not StyleGAN's γ/2·R1).

    fn: x (B, …) → per-sample scores (B,) (e.g. `lambda x: D(x, σ′, cond, …).logits`), or, with
    has_aux, → (scores, aux). Returns the penalty, or (penalty, (scores, aux)) with has_aux so the
    caller reuses the real forward for the hinge loss. One backward pass: the gradient of Σ_b score_b
    is every sample's own gradient because D treats samples independently (no batch statistics;
    models/discriminator.py uses GroupNorm). Differentiating this penalty w.r.t. D's parameters is
    a double backward, which JAX does through `jax.grad` of this function.
    """
    def total(x):
        out = fn(x)
        scores, aux = out if has_aux else (out, None)
        if scores.shape != (x.shape[0],):
            raise ValueError(f"fn must return one score per sample, shape ({x.shape[0]},), got {scores.shape}")
        return jnp.sum(scores.astype(jnp.float32)), (scores, aux)

    grads, (scores, aux) = jax.grad(total, has_aux=True)(x_real)
    sq = jnp.sum(jnp.square(grads.astype(jnp.float32)).reshape(grads.shape[0], -1), axis=1)
    penalty = gamma * jnp.mean(sq)
    return (penalty, (scores, aux)) if has_aux else penalty


# ---- reconstruction --------------------------------------------------------------------------
def default_huber_c(dim: int) -> float:
    """c = 0.00054·√d for d elements per sample (consistency-model practice; ≈0.18 for a 14×4×32×64 latent)."""
    return HUBER_C_FACTOR * math.sqrt(dim)


def pseudo_huber_loss(x_hat, x0, c: float | None = None):
    """E_b[√(‖x̂0,b − x0,b‖² + c²) − c], the norm over all of a sample's elements; c = None means
    default_huber_c(d). c is a Python number (it is checked here, not traced).

    Quadratic (‖·‖²/2c) for small errors, linear (‖·‖) for large ones: robust to a few bad samples,
    and not dominated by them as the squared error is.
    """
    if x_hat.shape != x0.shape:
        raise ValueError(f"prediction {x_hat.shape} and target {x0.shape} must have the same shape")
    b = x0.shape[0]
    d = int(np.prod(x0.shape[1:]))
    c = default_huber_c(d) if c is None else c
    if c <= 0:
        raise ValueError(f"the pseudo-Huber c must be positive, got {c}")
    diff = (x_hat.astype(jnp.float32) - x0.astype(jnp.float32)).reshape(b, -1)
    return jnp.mean(jnp.sqrt(jnp.sum(jnp.square(diff), axis=1) + c * c) - c)


def generator_loss(fake_logits, x_hat, x0, recon_weight: float = RECON_WEIGHT, huber_c: float | None = None,
                   adversarial_weight: float = 1.0):
    """L_G = w·E[D(fake)] + λ·pseudo-Huber(x̂0, x0) with w = 1 (SF-V); w = 0 is the reconstruction-only
    control that tells what the discriminator's signal adds. Returns (total, {"adversarial": …,
    "reconstruction": …}), the parts unweighted."""
    adv = generator_adversarial_loss(fake_logits)
    recon = pseudo_huber_loss(x_hat, x0, huber_c)
    return adversarial_weight * adv + recon_weight * recon, {"adversarial": adv, "reconstruction": recon}


def discriminator_loss(real_logits, fake_logits, r1=0.0):
    """L_D = hinge(real, fake) + r1, where r1 is `r1_penalty(...)` (already multiplied by γ); returns
    (total, {"hinge": …, "r1": …})."""
    hinge = discriminator_hinge_loss(real_logits, fake_logits)
    return hinge + r1, {"hinge": hinge, "r1": jnp.asarray(r1, jnp.float32)}
