"""Stable Diffusion's discrete-time Euler samplers: diffusers' `EulerDiscreteScheduler` and
`EulerAncestralDiscreteScheduler`, as InstructPix2Pix (MoViE's base model) samples with them.

SD trains on 1000 discrete timesteps t with ᾱ_t = ∏(1 − β_s) ("scaled_linear": β from √β_start to √β_end,
squared). In σ terms (σ_t = √((1 − ᾱ_t)/ᾱ_t)) the noisy latent is x = x0 + σ·ε, the UNet sees
x / √(σ² + 1) at timestep t and predicts ε ("epsilon") or v ("v_prediction"). Sampling picks `steps`
timesteps by the config's `timestep_spacing`, interpolates σ at them, appends σ = 0, and steps

    x0 = x − σ·ε                                        (epsilon)
    x0 = x/(σ² + 1) − v·σ/√(σ² + 1)                     (v_prediction)
    Euler:            x ← x + (x − x0)/σ · (σ' − σ)
    Euler ancestral:  σ↑ = √(σ'²(σ² − σ'²)/σ²), σ↓ = √(σ'² − σ↑²);  x ← x + (x − x0)/σ · (σ↓ − σ) + σ↑·z

with fresh noise z per step (the caller passes it, so a run is reproducible and testable). The initial
latent is unit noise times `init_noise_sigma` (σ_max for "linspace"/"trailing", √(σ_max² + 1) for "leading").
Numbers are float32 NumPy as diffusers computes them, so timesteps and σ match its schedulers exactly.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from mvd_jax.errors import UserError

KINDS = {"EulerDiscreteScheduler": "euler", "EulerAncestralDiscreteScheduler": "euler_ancestral"}
# keys of diffusers' scheduler configs that do not change these samplers (DDIM/PNDM leftovers in SD folders,
# bookkeeping), accepted and ignored
_IGNORED = {"_class_name", "_diffusers_version", "skip_prk_steps", "set_alpha_to_one", "clip_sample",
            "clip_sample_range", "sample_max_value", "thresholding", "dynamic_thresholding_ratio",
            "interpolation_type", "use_karras_sigmas", "timestep_type", "final_sigmas_type", "sigma_min",
            "sigma_max", "use_exponential_sigmas", "use_beta_sigmas", "rescale_betas_zero_snr",
            "trained_betas", "use_flow_sigmas", "flow_shift", "solver_order"}
# the non-default values of the ignored keys that WOULD change the schedule: refused rather than ignored
_UNSUPPORTED = {"interpolation_type": ("linear",), "use_karras_sigmas": (False,), "timestep_type": ("discrete",),
                "final_sigmas_type": ("zero",), "use_exponential_sigmas": (False,), "use_beta_sigmas": (False,),
                "rescale_betas_zero_snr": (False,), "trained_betas": (None,), "use_flow_sigmas": (False,)}


@dataclasses.dataclass(frozen=True)
class DiscreteEulerConfig:
    """The fields of diffusers' scheduler_config.json these samplers read (defaults: diffusers' own)."""

    kind: str = "euler_ancestral"  # "euler" | "euler_ancestral"
    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"  # "linear" | "scaled_linear"
    prediction_type: str = "epsilon"  # "epsilon" | "v_prediction"
    timestep_spacing: str = "linspace"  # "linspace" | "leading" | "trailing"
    steps_offset: int = 0

    def __post_init__(self):
        for name, allowed in (("kind", ("euler", "euler_ancestral")), ("beta_schedule", ("linear", "scaled_linear")),
                              ("prediction_type", ("epsilon", "v_prediction")),
                              ("timestep_spacing", ("linspace", "leading", "trailing"))):
            if getattr(self, name) not in allowed:
                raise UserError(f"scheduler {name} must be one of {allowed}, got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, d: dict) -> "DiscreteEulerConfig":
        d = dict(d)
        name = d.pop("_class_name", "EulerAncestralDiscreteScheduler")
        if name not in KINDS:
            raise UserError(f"scheduler {name!r} is not supported; supported: {sorted(KINDS)} (diffusers' "
                            f"InstructPix2Pix checkpoints ship EulerAncestralDiscreteScheduler)")
        for key, allowed in _UNSUPPORTED.items():
            if key in d and d[key] not in allowed:
                raise UserError(f"scheduler option {key}={d[key]!r} is not supported (only {allowed[0]!r})")
        fields = {f.name for f in dataclasses.fields(cls)} - {"kind"}
        unknown = sorted(set(d) - fields - _IGNORED)
        if unknown:
            raise UserError(f"unknown scheduler config key(s) {unknown}")
        return cls(kind=KINDS[name], **{k: v for k, v in d.items() if k in fields})

    @classmethod
    def from_folder(cls, path) -> "DiscreteEulerConfig":
        """From `scheduler/scheduler_config.json` of a diffusers pipeline folder (or that file, or its folder)."""
        path = Path(path)
        for candidate in (path, path / "scheduler_config.json", path / "scheduler" / "scheduler_config.json"):
            if candidate.is_file():
                return cls.from_dict(json.loads(candidate.read_text()))
        raise UserError(f"no scheduler/scheduler_config.json under {path}")


@dataclasses.dataclass(frozen=True)
class DiscreteEulerPlan:
    """One sampling run's schedule: `timesteps` (what the UNet is told, float32, steps of them) and `sigmas`
    (steps + 1, the last 0)."""

    config: DiscreteEulerConfig
    timesteps: np.ndarray
    sigmas: np.ndarray

    @property
    def init_noise_sigma(self) -> float:
        s = float(self.sigmas.max())
        return s if self.config.timestep_spacing in ("linspace", "trailing") else float((s ** 2 + 1) ** 0.5)


def train_sigmas(config: DiscreteEulerConfig) -> np.ndarray:
    """σ_t for t = 0 … num_train_timesteps − 1 (float32 betas as torch makes them, then diffusers' float math)."""
    n = config.num_train_timesteps
    if config.beta_schedule == "linear":
        betas = np.linspace(config.beta_start, config.beta_end, n, dtype=np.float32)
    else:
        betas = np.linspace(config.beta_start ** 0.5, config.beta_end ** 0.5, n, dtype=np.float32) ** 2
    alphas_cumprod = np.cumprod(1.0 - betas, dtype=np.float32)
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


def plan(config: DiscreteEulerConfig, steps: int) -> DiscreteEulerPlan:
    """The timesteps and σ of a `steps`-step run (diffusers' set_timesteps)."""
    if steps < 1:
        raise UserError(f"the number of sampling steps must be ≥ 1, got {steps}")
    n = config.num_train_timesteps
    if steps > n:
        raise UserError(f"{steps} sampling steps is more than the {n} training timesteps")
    if config.timestep_spacing == "linspace":
        timesteps = np.linspace(0, n - 1, steps, dtype=np.float32)[::-1].copy()
    elif config.timestep_spacing == "leading":
        ratio = n // steps
        timesteps = (np.arange(0, steps) * ratio).round()[::-1].copy().astype(np.float32) + config.steps_offset
    else:  # trailing
        timesteps = np.arange(n, 0, -n / steps).round().copy().astype(np.float32) - 1
    sigmas = np.interp(timesteps, np.arange(n), train_sigmas(config))
    return DiscreteEulerPlan(config, timesteps, np.concatenate([sigmas, [0.0]]).astype(np.float32))


def scale_input(x, sigma):
    """What the UNet sees at σ: x / √(σ² + 1)."""
    return x / jnp.sqrt(sigma ** 2 + 1)


def predicted_x0(config: DiscreteEulerConfig, x, model_output, sigma):
    if config.prediction_type == "epsilon":
        return x - sigma * model_output
    return model_output * (-sigma / jnp.sqrt(sigma ** 2 + 1)) + x / (sigma ** 2 + 1)


def step(config: DiscreteEulerConfig, x, model_output, sigma, sigma_next, noise=None):
    """One Euler (ancestral) step from σ to σ_next; `noise` (unit normal, x's shape) is needed by the ancestral
    sampler only. Works on arrays and traced scalars alike (σ may come from a lax loop over plan.sigmas)."""
    x0 = predicted_x0(config, x, model_output, sigma)
    derivative = (x - x0) / sigma
    if config.kind == "euler":
        return x + derivative * (sigma_next - sigma)
    if noise is None:
        raise ValueError("the ancestral Euler step needs fresh noise")
    sigma_up = jnp.sqrt(sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2) / sigma ** 2)
    sigma_down = jnp.sqrt(sigma_next ** 2 - sigma_up ** 2)
    return x + derivative * (sigma_down - sigma) + noise * sigma_up
