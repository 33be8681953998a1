"""Clockwork model-step distillation (`train.phase=clockwork`; issue 23; mobilevd_paper.md §6.2).

A Clockwork adaptor ϕ (models/clockwork.py) stands in for the UNet's low-resolution part on the sampler's
non-clock steps. It learns, on unrolled sampling trajectories of the frozen UNet (the teacher, `init_from`),

    E_t ‖r_out^t − ϕ(r_in^t, r_out^{t+1}, t_emb^t, image_emb)‖²

where r_in^t, r_out^t are the low part's input and output at sampler step t (models/unet_split.py) and
r_out^{t+1} the low part's output one step earlier (noisier: the paper counts t downwards). Per batch:

  * conditioning of real clips, encoded as the diffusion phase encodes it (trainer.make_encode, or a latent
    cache): conditioning latent, CLIP image embedding, added time ids. The clips' own latents only give the
    shape: the trajectory starts from noise, as sampling does (the paper needs only captions);
  * the teacher's Euler trajectory from σ_max noise over `clockwork.steps` Karras levels
    (diffusion/samplers.euler_sample's steps exactly), without gradient, inside the compiled step (one
    lax.fori_loop; the split forward in its body), with frame-wise CFG when clockwork.max_guidance_scale > 1
    (both branches' features are then training pairs: the clock sampler runs the adaptor on both);
  * the step pairs (t−1 → t), t = 1 … steps−1: all of them, or `clockwork.pairs` drawn at random per batch
    (without replacement) — only those pairs' features are kept from the loop, so `pairs` bounds the memory
    (SVD at 512×256, cut 1: r_out is 18 M values per clip and branch and step);
  * loss = the mean squared error over all kept pairs (and both branches), logged beside the identity
    adaptor's (cache reuse, ϕ = r_out^{t+1}) on the same pairs: `identity_loss`, and `loss_ratio` = loss /
    identity_loss (< 1: the adaptor beats reuse). A fresh adaptor IS the identity (its last layer starts at
    zero), so the first step's ratio is exactly 1.

Only the adaptor is trained (AdamW, EMA, checkpoints, resume: the shared single-loss step,
train/programs.build_loss_programs); the teacher's weights travel with the frozen parameters.

What a run directory holds (the contract `load_clockwork_adaptor` and `read_clockwork_run` read):
  * checkpoints/config.json: the resolved config, train.phase == "clockwork" (PHASE); the adaptor's
    architecture follows from its `model` and `clockwork` sections (`adaptor_config`);
  * the Orbax checkpoints every phase writes: the teacher UNet's parameters among the frozen ones under the
    UNet's own keys (so `--unet RUN_DIR` and stages.read_run_unet read the teacher from the run), the
    adaptor's trained (raw and EMA) parameters keyed PARAM_PREFIX + its ParamCodec keys
    ("clockwork_adaptor/conv_down/kernel", …), so they cannot clash with the UNet's.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mvd_jax.diffusion import edm, samplers
from mvd_jax.errors import UserError
from mvd_jax.models import attention_kernel
from mvd_jax.models.clockwork import (ClockworkAdaptor, ClockworkConfig, abstract_adaptor, build_adaptor,
                                      clockwork_parts, identity_adaptor)
from mvd_jax.models.unet_split import forward_high_in, forward_high_out, forward_low
from mvd_jax.train import sharding as shd
from mvd_jax.train.model_state import PairCodec, ParamCodec, make_optimizer
from mvd_jax.train.programs import Programs, build_loss_programs

PHASE = "clockwork"
PARAM_PREFIX = "clockwork_adaptor/"
TAKES = "'identity' or a clockwork run directory"


def adaptor_config(cfg) -> ClockworkConfig:
    """The adaptor a (resolved) config's clockwork section describes, for its UNet."""
    from mvd_jax.settings import unet_config

    cw = cfg.clockwork
    return ClockworkConfig.for_unet(unet_config(cfg), cw.kind, int(cw.cut_level), int(cw.channels) or None,
                                    int(cw.num_res_blocks))


class ClockworkCodec(PairCodec):
    """The teacher UNet's and the adaptor's parameters as one flat dict (train/model_state.PairCodec): the UNet's
    keys as every phase stores them, the adaptor's behind PARAM_PREFIX. merge → (unet, adaptor)."""

    def __init__(self, unet, adaptor):
        super().__init__(unet, adaptor, PARAM_PREFIX)
        self.adaptor_keys = self.second_keys


# =============================================================================================
# The teacher's trajectory and the loss
# =============================================================================================
class StepPairs(NamedTuple):
    """Training pairs of one batch: P step pairs × B′ clips (B′ = 2B with guidance: [uncond, cond])."""
    r_in: jax.Array  # (P, B′, T_L, h, w, C_in): the low part's input at step t
    r_out_prev: jax.Array  # (P, B′, T_L, H, W, C_out): the low part's output at step t − 1 (the adaptor's input)
    r_out: jax.Array  # (P, B′, T_L, H, W, C_out): … at step t (the target)
    temb: jax.Array  # (P, B′, Ct): the UNet's time embedding (noise level + added time ids) at step t
    context: jax.Array  # (P, B′, 1, D): the image embedding each branch saw
    step: jax.Array  # (P,): t, the trajectory step (1 … steps − 1) of each pair


def pair_steps(key, steps: int, pairs: int = 0):
    """The trajectory steps t whose pair (t − 1 → t) a batch learns from, in order: 1 … steps − 1, or `pairs`
    of them drawn without replacement."""
    every = jnp.arange(1, steps)
    if not pairs or pairs >= steps - 1:
        return every
    return jnp.sort(jax.random.choice(key, every, (pairs,), replace=False))


def teacher_pairs(unet, batch: dict, key, *, sigmas, cut_level: int, pairs: int = 0, min_scale: float = 1.0,
                  max_scale: float = 1.0, dtype=jnp.float32, noise=None) -> StepPairs:
    """The teacher's Euler trajectory (diffusion/samplers.euler_sample's steps: x_0 = noise·√(σ_0² + 1), x ← x +
    (σ_{i+1} − σ_i)·(x − D(x; σ_i))/σ_i, frame-wise CFG when max_scale > 1) for a model batch (latents: the
    shape, cond_latent, image_embeds, added_time_ids), as one fori_loop that keeps the features of the chosen
    pairs (`pair_steps`; `key` draws the noise, unless `noise` is given, and the pairs). No gradient flows."""
    latents = batch["latents"]
    t = latents.shape[1]
    k_noise, k_pairs = jax.random.split(key)
    if noise is None:
        noise = jax.random.normal(k_noise, latents.shape, jnp.float32)
    cond = jnp.repeat(batch["cond_latent"].astype(jnp.float32)[:, None], t, axis=1)
    sigmas = jnp.asarray(sigmas, jnp.float32)
    n = sigmas.shape[0] - 1
    chosen = pair_steps(k_pairs, n, pairs)
    p = chosen.shape[0]

    def denoise(x, sigma):
        """(D(x; σ), this step's (r_in, r_out, temb, context)); model_fn hands them out through `seen`."""
        seen = []

        def model_fn(unet_input, c_noise, context, ids):
            state = forward_high_in(unet, unet_input.astype(dtype), c_noise, context.astype(dtype), ids,
                                    cut_level=cut_level)
            r_out = forward_low(unet, state)
            seen.append((state.r_in, r_out, state.emb, state.context))
            return forward_high_out(unet, state, r_out).astype(jnp.float32)

        d = samplers.guided_denoiser(model_fn, cond, batch["image_embeds"].astype(jnp.float32),
                                     batch["added_time_ids"].astype(jnp.float32), min_scale, max_scale)(x, sigma)
        return d, seen[0]

    x0 = noise * jnp.sqrt(sigmas[0] ** 2 + 1.0)
    r_in_s, r_out_s, emb_s, ctx_s = jax.eval_shape(lambda x: denoise(x, sigmas[0])[1], x0)  # nothing runs
    # one slot per chosen pair, plus a last one the steps that are not chosen write into
    buffers = tuple(jnp.zeros((p + 1, *s.shape), s.dtype) for s in (r_in_s, r_out_s, r_out_s, emb_s, ctx_s))

    def step(i, carry):
        x, prev, buf = carry
        d, (r_in, r_out, emb, ctx) = denoise(x, sigmas[i])
        hit = chosen == i
        slot = jnp.where(jnp.any(hit), jnp.argmax(hit), p)
        buf = tuple(jax.lax.dynamic_update_index_in_dim(b, v, slot, 0)
                    for b, v in zip(buf, (r_in, prev, r_out, emb, ctx)))
        x = x + (sigmas[i + 1] - sigmas[i]) * (x - d) / sigmas[i]
        return x, r_out, buf

    _, _, buf = jax.lax.fori_loop(0, n, step, (x0, jnp.zeros(r_out_s.shape, r_out_s.dtype), buffers))
    return StepPairs(*jax.lax.stop_gradient(tuple(a[:p] for a in buf)), chosen)


def pair_errors(adaptor, pairs: StepPairs):
    """(the adaptor's squared error, the identity adaptor's) per pair and clip: two (P, B′) float32 arrays, each
    the mean over the features' elements."""
    p, b = pairs.r_in.shape[:2]
    flat = lambda a: a.reshape(p * b, *a.shape[2:])
    pred = adaptor(flat(pairs.r_in), flat(pairs.r_out_prev), flat(pairs.temb), flat(pairs.context))
    target = pairs.r_out.astype(jnp.float32)
    mse = lambda a: jnp.mean(jnp.square(a.astype(jnp.float32) - target), axis=tuple(range(2, target.ndim)))
    return mse(pred.reshape(pairs.r_out.shape)), mse(pairs.r_out_prev)


def adaptor_losses(adaptor, pairs: StepPairs):
    """(loss, aux): the mean squared error of ϕ over every pair and clip; the identity adaptor's beside it."""
    learned, identity = pair_errors(adaptor, pairs)
    loss, reuse = jnp.mean(learned), jnp.mean(identity)
    return loss, {"identity_loss": reuse, "loss_ratio": loss / jnp.maximum(reuse, 1e-30)}


def build_clockwork_programs(cfg, unet_abstract, mesh, encode) -> Programs:
    """The Programs of the clockwork phase: the adaptor trained, the teacher UNet frozen. `encode`: the
    diffusion phase's clip encoder (trainer.make_encode), None for a latent cache. `initial_arrays` takes the
    teacher UNet; the adaptor starts fresh (clockwork.seed): the identity adaptor's output."""
    t, cw = cfg.train, cfg.clockwork
    config = adaptor_config(cfg)
    config.check_unet(unet_abstract.config)
    codec = ClockworkCodec(unet_abstract, abstract_adaptor(config))
    tx, schedule = make_optimizer(cfg.optimizer)
    dtype = jnp.bfloat16 if t.dtype == "bfloat16" else jnp.float32
    form = attention_kernel.form_for_mesh(t.attention, mesh)
    sigmas = edm.karras_sigmas(int(cw.steps))
    options = dict(sigmas=sigmas, cut_level=config.cut_level, pairs=int(cw.pairs),
                   min_scale=float(cw.min_guidance_scale), max_scale=float(cw.max_guidance_scale), dtype=dtype)

    def loss_on(params_train, frozen, batch, key, step):
        unet, adaptor = codec.merge({**frozen, **params_train})
        attention_kernel.set_form(unet, form)
        loss, aux = adaptor_losses(adaptor, teacher_pairs(unet, batch, key, **options))
        return loss, aux

    programs = build_loss_programs(cfg, codec, list(codec.adaptor_keys), mesh, tx, schedule, loss_on, encode,
                                   shd.model_batch_shardings(mesh))
    pair_arrays = programs.initial_arrays
    return dataclasses.replace(programs,
                               initial_arrays=lambda unet: pair_arrays((unet, build_adaptor(config, int(cw.seed)))))


# =============================================================================================
# The phase's sample video
# =============================================================================================
def write_comparison(cfg, programs, state, frozen, autoencoder, batch, workdir, step):
    """workdir/samples/step_N.mp4: the first clip of the first batch sampled from the same noise by the teacher's
    full Euler sampler (left), at clockwork.clock with the identity adaptor (middle) and with the EMA adaptor
    (right), clockwork.steps steps and guidance; returns (path, {"identity"/"adaptor": PSNR of the decode
    against the full sampler's (dB), "…_latent_rel": relative L2 error of the latents})."""
    from mvd_jax.train.metrics import psnr, write_sample_video

    cw = cfg.clockwork
    unet, adaptor = programs.codec.merge({**jax.device_get(frozen), **jax.device_get(state["ema"])})
    identity = identity_adaptor(unet.config, adaptor.config.cut_level)
    first = jax.tree.map(lambda x: jnp.asarray(np.asarray(jax.device_get(x))[:1]), batch)
    t = first["latents"].shape[1]
    noise = jax.random.normal(jax.random.key(cfg.train.seed + 3), first["latents"].shape)
    cond = jnp.repeat(first["cond_latent"][:, None], t, axis=1)
    sigmas = edm.karras_sigmas(int(cw.steps))
    loop = dict(min_scale=float(cw.min_guidance_scale), max_scale=float(cw.max_guidance_scale))
    graphdef, st = nnx.split((unet, adaptor, identity))

    @jax.jit
    def run(st, noise, cond, embeds, ids):
        unet, adaptor, identity = nnx.merge(graphdef, st)
        full = samplers.euler_sample(lambda *a: unet(*a), noise, sigmas, cond, embeds, ids, **loop)
        clock = [samplers.clockwork_euler_sample(clockwork_parts(unet, a), noise, sigmas, cond, embeds, ids,
                                                 clock=int(cw.clock), **loop) for a in (identity, adaptor)]
        return full, *clock

    latents = run(st, noise, cond, first["image_embeds"], first["added_time_ids"])
    frames = [autoencoder.decode(z[0] / autoencoder.config.scaling_factor, t) for z in latents]
    values = {}
    for name, z, x in zip(("identity", "adaptor"), latents[1:], frames[1:]):
        values[name] = float(psnr(x, frames[0]))
        values[f"{name}_latent_rel"] = float(jnp.linalg.norm(z - latents[0]) / jnp.linalg.norm(latents[0]))
    side = np.concatenate([np.asarray(f) for f in frames], axis=2)  # (T, H, 3W, 3)
    path = write_sample_video(cfg, workdir, step, np.clip(side / 2 + 0.5, 0, 1))
    return path, values


# =============================================================================================
# Reading a run: the adaptor (and the teacher) for sampling
# =============================================================================================
def check_adaptor_spec(spec: str) -> None:
    """Checks a `--clockwork` value before any model is loaded: 'identity', or a run directory with an adaptor."""
    if spec != "identity":
        _adaptor_run_config(spec)


def _adaptor_run_config(run_dir):
    """(the adaptor's config, the run's config) of a clockwork run directory; a UserError for anything else."""
    from mvd_jax.train import stages

    if not stages.is_run_dir(run_dir):
        raise UserError(f"--clockwork takes {TAKES}; {run_dir} is not a training run directory "
                        f"(no checkpoints/config.json)")
    cfg = stages.read_run_config(run_dir)
    phase = cfg.get("train", {}).get("phase")
    if phase != PHASE:
        raise UserError(f"{run_dir} is a {phase!r} run and holds no Clockwork adaptor (train.phase {PHASE!r} "
                        f"trains one)")
    try:
        return adaptor_config(cfg), cfg
    except (UserError, AttributeError, KeyError, TypeError) as e:
        raise UserError(f"{run_dir}: its config does not describe a Clockwork adaptor ({e})") from None


def read_clockwork_run(run_dir, *, use_ema: bool = True):
    """(the teacher UNet, the trained adaptor, the run's config, the step) of a clockwork run's latest
    checkpoint: the adaptor's EMA weights by default (the teacher is frozen: both copies are the same)."""
    from mvd_jax.settings import unet_config
    from mvd_jax.train import stages
    from mvd_jax.train.model_state import build_unet

    config, _ = _adaptor_run_config(run_dir)
    params, cfg, step = stages.read_run_params(run_dir, use_ema=use_ema)
    unet_cfg = dataclasses.replace(unet_config(cfg), num_frames=cfg.frames)
    codec = ClockworkCodec(nnx.eval_shape(lambda: build_unet(unet_cfg, 0)), abstract_adaptor(config))
    unet, adaptor = stages.module_from_params(codec, params, run_dir)
    return unet, adaptor, cfg, step


def load_clockwork_adaptor(run_dir, *, use_ema: bool = True) -> ClockworkAdaptor:
    """The adaptor a clockwork distillation run trained, with its latest checkpoint's weights (EMA by default).
    A UserError when `run_dir` holds no adaptor (not a run, another phase's run, no checkpoint)."""
    from mvd_jax.train import stages

    config, _ = _adaptor_run_config(run_dir)
    params, _, _ = stages.read_run_params(run_dir, use_ema=use_ema)
    ours = {k[len(PARAM_PREFIX):]: v for k, v in params.items() if k.startswith(PARAM_PREFIX)}
    return stages.module_from_params(ParamCodec(abstract_adaptor(config)), ours, run_dir)


def load_adaptor(spec: str, unet_config, *, cut_level: int | None = None) -> ClockworkAdaptor:
    """The adaptor a `--clockwork` value names for a UNet: 'identity' (at `cut_level`, default 1) or a run's,
    which must fit the UNet (and `cut_level`, when given)."""
    if spec == "identity":
        return identity_adaptor(unet_config, 1 if cut_level is None else cut_level)
    config, _ = _adaptor_run_config(spec)  # checked before any weights are read
    if cut_level is not None and cut_level != config.cut_level:
        raise UserError(f"the adaptor of {spec} sits at cut_level {config.cut_level}, not {cut_level}")
    config.check_unet(unet_config)
    return load_clockwork_adaptor(spec)
