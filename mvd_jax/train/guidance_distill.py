"""Multimodal guidance distillation (`train.phase=guidance_distill`; MoViE Algorithm 1, mobilevd_paper.md §6.1).

InstructPix2Pix samples with 3 UNet passes per step (train/edit_training.guided_eps):

    ε̃ = ε(x_t,∅,∅) + s_I·(ε(x_t,c_I,∅) − ε(x_t,∅,∅)) + s_T·(ε(x_t,c_I,c_T) − ε(x_t,c_I,∅))

The student M_θ(x_t, c_I, c_T, s_I, s_T) is the same UNet reading the two scales (models/guidance_embedding.py:
sinusoidal embeddings → MLP → a zero-initialised projection added in every ResNet block), trained on

    λ‖M_θ − ε̃‖²,   t ~ U{0 … 999}, s_I ~ U[guidance.image_min, image_max] (1 … 3),
                                    s_T ~ U[guidance.text_min, text_max] (2 … 14)

on the editing phases' batch (train/edit_training.py: frame, instruction, edited frame; the edited frame's
latent noised at t). The teacher is frozen: `init_from` (an InstructPix2Pix pipeline / unet/ folder, or an
`instruct_pix2pix` run). The student starts as the teacher's weights plus the new guidance weights — the
projections at zero, so its first output is exactly the teacher's conditional ε(x_t, c_I, c_T) — and all of
it trains (the paper: LR 1e-5, 5 k iterations). One pass replaces three: the sampler's UNet FLOPs per step
drop 3× (the embedding adds a few matrix-vector products).

Logged beside the loss (the student's squared error to ε̃): `baseline_loss`, the conditional-only model's error
to ε̃ on the same draws — what the student started from — and `loss_ratio` = loss / baseline_loss.

The same mechanism for SVD's frame-wise guidance (guidance.model "svd"; `model` is then the SVD UNet, the batch
the diffusion phase's): the teacher's sampler runs the UNet twice per step, unconditional and conditional, and
mixes the denoised clips with a scale rising linearly over the frames from 1 to s (diffusers'
StableVideoDiffusionPipeline: min_guidance_scale 1, max_guidance_scale s). The student reads s (SVD_SCALES = 1
scale; models/unet.py `guidance`) and learns, at σ from the diffusion phase's training distribution (train.p_mean,
p_std) and s ~ U[guidance.svd_scale_min, svd_scale_max], the EDM-weighted error λ(σ)‖D_θ(x; σ, s) − D̃(x; σ, s)‖²
(the diffusion loss's weighting: the error of the network output F). Sampling then runs one pass per step
(diffusion/pipeline.py with a student UNet: `--unet RUN_DIR` of the sample CLI; --max_guidance_scale is s).

A run directory holds the student under the UNet's own keys (with its guidance weights) and the teacher under
TEACHER_PREFIX; `read_student(run_dir)` reads MoViE's student and the parts the run was trained with, for
`python -m mvd_jax.edit --distilled RUN_DIR`; stages.read_run_unet reads SVD's student.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mvd_jax.errors import UserError
from mvd_jax.models import attention_kernel
from mvd_jax.models.unet2d_condition import UNet2DConditionModel
from mvd_jax.train import edit_training as et
from mvd_jax.train.model_state import PairCodec, make_optimizer
from mvd_jax.train.programs import Programs, build_loss_programs

PHASE = "guidance_distill"
TEACHER_PREFIX = "teacher/"
NUM_SCALES = 2  # s_I, s_T
SVD_SCALES = 1  # the top of the frame-wise ramp 1 → s


def distils_svd(cfg) -> bool:
    return cfg.guidance.model == "svd"


def student_config(cfg):
    return dataclasses.replace(et.model_config(cfg), guidance_scales=NUM_SCALES)


def abstract_pair(cfg, **student_options):
    """(student, teacher) with ShapeDtypeStruct leaves; student_options: config fields of the student (e.g.
    cross_frame_attention for editing videos)."""
    if distils_svd(cfg):
        from mvd_jax.settings import unet_config
        from mvd_jax.train.model_state import build_unet

        teacher = dataclasses.replace(unet_config(cfg), num_frames=cfg.frames)
        student = dataclasses.replace(teacher, guidance_scales=SVD_SCALES, **student_options)
        return nnx.eval_shape(lambda: build_unet(student, 0)), nnx.eval_shape(lambda: build_unet(teacher, 0))
    student = dataclasses.replace(student_config(cfg), **student_options)
    return (nnx.eval_shape(lambda: UNet2DConditionModel(student, rngs=nnx.Rngs(0))),
            nnx.eval_shape(lambda: UNet2DConditionModel(et.model_config(cfg), rngs=nnx.Rngs(0))))


def initial_pair(cfg, log=print):
    """(student, teacher): the teacher from init_from, the student = its weights + fresh guidance weights."""
    from mvd_jax.convert.diffusers_unet2d import unet2d_from_tensors, unet2d_to_tensors

    if distils_svd(cfg):  # the teacher as every SVD phase starts: a run's EMA UNet or an SVD / UNet folder
        from mvd_jax.settings import unet_config
        from mvd_jax.train import stages
        from mvd_jax.train.model_state import init_unet_from_svd

        unet_cfg = dataclasses.replace(unet_config(cfg), num_frames=cfg.frames)
        if stages.is_run_dir(cfg.init_from):
            teacher, step = stages.init_unet_from_run(cfg, unet_cfg)
            log(f"teacher: {cfg.init_from} (step {step})")
        else:
            teacher = init_unet_from_svd(cfg.init_from, unet_cfg)
            log(f"teacher: the UNet of {cfg.init_from}")
        return svd_pair(cfg, teacher)
    if not cfg.init_from:
        raise UserError("train.phase 'guidance_distill' distils a trained editing UNet: init_from must name it (an "
                        "InstructPix2Pix pipeline or unet/ folder, or an 'instruct_pix2pix' run)")
    teacher = et.load_editing_unet(cfg, cfg.init_from, log)
    student = unet2d_from_tensors(unet2d_to_tensors(teacher), student_config(cfg), source=str(cfg.init_from),
                                  guidance_seed=int(cfg.guidance.seed))
    return student, teacher


def svd_pair(cfg, teacher):
    """(student, teacher) for SVD: the student is the teacher plus fresh guidance weights (zero projections)."""
    from mvd_jax.models.unet_tensors import unet_from_tensors, unet_to_tensors

    student_cfg = dataclasses.replace(teacher.config, guidance_scales=SVD_SCALES)
    return unet_from_tensors(unet_to_tensors(teacher), student_cfg, guidance_seed=int(cfg.guidance.seed)), teacher


def draw_scales(key, n: int, g):
    """(s_I, s_T), each (n,), uniform over the guidance section's ranges."""
    k_i, k_t = jax.random.split(key)
    s_i = jax.random.uniform(k_i, (n,), minval=g.image_min, maxval=g.image_max)
    s_t = jax.random.uniform(k_t, (n,), minval=g.text_min, maxval=g.text_max)
    return s_i, s_t


def student_eps(student, x, image_latents, t, text, s_image, s_text):
    """The student's one pass: M_θ(x ‖ c_I, t, c_T, [s_I, s_T])."""
    n = x.shape[0]
    scales = jnp.stack([jnp.broadcast_to(jnp.asarray(s, jnp.float32), (n,)) for s in (s_image, s_text)], axis=-1)
    return student(et.unet_input(x, image_latents), jnp.broadcast_to(jnp.asarray(t, jnp.float32), (n,)),
                   text.astype(x.dtype), guidance=scales).astype(jnp.float32)


def distill_loss(student, teacher, batch, key, *, abar, g, dtype=jnp.float32):
    """(loss, aux): the student's mean squared error to the teacher's guided ε̃; the conditional-only model's
    error on the same draws as `baseline_loss` (the teacher's c_I, c_T branch, which the student starts as)."""
    k_noise, k_scales = jax.random.split(key)
    x_t, _, t = et.noisy(batch, k_noise, abar)
    s_i, s_t = draw_scales(k_scales, x_t.shape[0], g)
    x = x_t.astype(dtype)
    target, conditional = jax.lax.stop_gradient(et.guided_eps(
        teacher, x, batch["image_latents"].astype(dtype), t, batch["text"].astype(dtype),
        batch["empty_text"].astype(dtype), s_i, s_t))
    pred = student_eps(student, x, batch["image_latents"].astype(dtype), t, batch["text"], s_i, s_t)
    loss = jnp.mean(jnp.square(pred - target))
    baseline = jnp.mean(jnp.square(conditional - target))
    return loss, {"baseline_loss": baseline, "loss_ratio": loss / jnp.maximum(baseline, 1e-30)}


def frame_ramps(num_frames: int, top):
    """(B, T) frame-wise guidance scales: 1 at the first frame rising linearly to `top` (B,) at the last
    (diffusion/samplers.guidance_scales with min 1, one ramp per clip)."""
    from mvd_jax.diffusion.samplers import guidance_scales

    return jax.vmap(lambda s: guidance_scales(num_frames, 1.0, s))(jnp.asarray(top, jnp.float32))


def svd_guided_target(model_fn, x, sigma, cond, embeds, ids, top):
    """(D̃, D_cond): the teacher's frame-wise guided denoiser at ramp tops `top` (B,) — unconditional (zero
    conditioning latent and image embedding, as the sampler's) and conditional in one batch — and its
    conditional branch alone."""
    from mvd_jax.diffusion import edm

    b, t = x.shape[:2]
    both = lambda a: jnp.concatenate([jnp.zeros_like(a), a])
    d = edm.denoise(model_fn, jnp.concatenate([x, x]), jnp.concatenate([sigma, sigma]), both(cond), both(embeds),
                    jnp.concatenate([ids, ids]))
    d_uncond, d_cond = d[:b], d[b:]
    return d_uncond + frame_ramps(t, top)[:, :, None, None, None] * (d_cond - d_uncond), d_cond


def svd_distill_loss(student, teacher, batch, key, *, p_mean: float, p_std: float, g, dtype=jnp.float32):
    """(loss, aux) of SVD's variant: λ(σ)‖D_student(x; σ, s) − D̃(x; σ, s)‖² per clip, D̃ the teacher's frame-wise
    CFG (unconditional: zero conditioning latent and image embedding, as the sampler's); `baseline_loss` the
    conditional D's error to D̃ (the student's start)."""
    from mvd_jax.diffusion import edm

    latents = batch["latents"].astype(jnp.float32)
    b, t = latents.shape[:2]
    k_sigma, k_noise, k_scale = jax.random.split(key, 3)
    sigma = edm.sample_training_sigmas(k_sigma, (b,), p_mean, p_std)
    noisy = latents + sigma.reshape(b, 1, 1, 1, 1) * jax.random.normal(k_noise, latents.shape)
    top = jax.random.uniform(k_scale, (b,), minval=g.svd_scale_min, maxval=g.svd_scale_max)
    cond = jnp.repeat(batch["cond_latent"].astype(jnp.float32)[:, None], t, axis=1)
    embeds, ids = batch["image_embeds"].astype(jnp.float32), batch["added_time_ids"].astype(jnp.float32)

    def model(unet, **kw):
        return lambda x, c_noise, ctx, i: unet(x.astype(dtype), c_noise, ctx.astype(dtype), i, **kw).astype(jnp.float32)

    target, d_cond = jax.lax.stop_gradient(svd_guided_target(model(teacher), noisy, sigma, cond, embeds, ids, top))
    pred = edm.denoise(model(student, guidance=top[:, None]), noisy, sigma, cond, embeds, ids)
    weight = edm.loss_weight(sigma)
    per_clip = lambda d: jnp.mean(jnp.square(d - target), axis=(1, 2, 3, 4)) * weight
    loss, baseline = jnp.mean(per_clip(pred)), jnp.mean(per_clip(d_cond))
    return loss, {"baseline_loss": baseline, "loss_ratio": loss / jnp.maximum(baseline, 1e-30)}


def svd_denoiser_errors(student, teacher, batch, key, tops, *, p_mean: float, p_std: float, draws: int = 4):
    """{s: (student's, conditional-only model's) relative L2 error to the teacher's guided D̃ at ramp top s}, over
    `draws` noise levels from the training distribution and noises per clip (the same draws for every s)."""
    from mvd_jax.diffusion import edm

    latents = batch["latents"].astype(jnp.float32)
    b, t = latents.shape[:2]
    cond = jnp.repeat(batch["cond_latent"][:, None], t, axis=1)
    embeds, ids = batch["image_embeds"], batch["added_time_ids"]
    out = {}
    for top in tops:
        num_s = num_c = den = 0.0
        for d in range(draws):
            k_sigma, k_noise = jax.random.split(jax.random.fold_in(key, d))
            sigma = edm.sample_training_sigmas(k_sigma, (b,), p_mean, p_std)
            x = latents + sigma.reshape(b, 1, 1, 1, 1) * jax.random.normal(k_noise, latents.shape)
            target, d_c = svd_guided_target(lambda *a: teacher(*a), x, sigma, cond, embeds, ids, jnp.full((b,), top))
            pred = edm.denoise(lambda *a: student(*a, guidance=jnp.full((b, 1), top)), x, sigma, cond, embeds, ids)
            num_s += float(jnp.sum(jnp.square(pred - target)))
            num_c += float(jnp.sum(jnp.square(d_c - target)))
            den += float(jnp.sum(jnp.square(target - x)))  # relative to the denoiser's correction D̃ − x
        out[top] = (np.sqrt(num_s / den), np.sqrt(num_c / den))
    return out


def build_svd_guidance_programs(cfg, unet_abstract, mesh, encode) -> Programs:
    """SVD's variant: `unet_abstract` the (student, teacher) pair, `encode` the diffusion phase's clip encoder."""
    from mvd_jax.train import sharding as shd

    t = cfg.train
    codec = PairCodec(*unet_abstract, TEACHER_PREFIX)
    tx, schedule = make_optimizer(cfg.optimizer)
    dtype = jnp.bfloat16 if t.dtype == "bfloat16" else jnp.float32
    form = attention_kernel.form_for_mesh(t.attention, mesh)

    def loss_on(params_train, frozen, batch, key, step):
        student, teacher = codec.merge({**frozen, **params_train})
        for unet in (student, teacher):
            unet.remat = t.remat
            attention_kernel.set_form(unet, form)
        return svd_distill_loss(student, teacher, batch, key, p_mean=t.p_mean, p_std=t.p_std, g=cfg.guidance,
                                dtype=dtype)

    return build_loss_programs(cfg, codec, list(codec.first.keys), mesh, tx, schedule, loss_on, encode,
                               shd.model_batch_shardings(mesh))


def build_guidance_distill_programs(cfg, unet_abstract, mesh, encoders) -> Programs:
    """MoViE's: `unet_abstract` the (student, teacher) pair (abstract_pair); the student trains, the teacher is
    frozen; `encoders` the autoencoder and the text parts."""
    t = cfg.train
    codec = PairCodec(*unet_abstract, TEACHER_PREFIX)
    tx, schedule = make_optimizer(cfg.optimizer)
    dtype = jnp.bfloat16 if t.dtype == "bfloat16" else jnp.float32
    form = attention_kernel.form_for_mesh(t.attention, mesh)
    abar = jnp.asarray(et.alphas_cumprod(et.noise_schedule(cfg)))

    def loss_on(params_train, frozen, batch, key, step):
        student, teacher = codec.merge({**frozen, **params_train})
        for unet in (student, teacher):
            unet.remat = t.remat
            attention_kernel.set_form(unet, form)
        return distill_loss(student, teacher, batch, key, abar=abar, g=cfg.guidance, dtype=dtype)

    return build_loss_programs(cfg, codec, list(codec.first.keys), mesh, tx, schedule, loss_on,
                               et.make_encode(cfg, encoders, mesh), et.edit_batch_shardings(mesh))


# =============================================================================================
# Comparing student and teacher
# =============================================================================================
def compare_samples(student, teacher, ex, schedule, *, steps: int, s_image: float, s_text: float, noise):
    """Edits of the examples `ex` (image_latents, text, empty_text) from the same noise by the teacher's 3-pass
    guidance, the student's one pass, and the conditional-only model (the student's start): three latents."""
    il, text, empty = ex["image_latents"], ex["text"], ex["empty_text"]
    teacher_x = et.euler_edit(lambda x, t: et.guided_eps(teacher, x, il, t, text, empty, s_image, s_text)[0],
                              noise, schedule, steps)
    student_x = et.euler_edit(lambda x, t: student_eps(student, x, il, t, text, s_image, s_text),
                              noise, schedule, steps)
    conditional_x = et.euler_edit(lambda x, t: et.guided_eps(teacher, x, il, t, text, empty, 1.0, 1.0)[0],
                                  noise, schedule, steps)
    return teacher_x, student_x, conditional_x


def eps_errors(student, teacher, ex, key, abar, scales, draws: int = 4):
    """{(s_I, s_T): (student's, conditional-only model's) relative L2 error to the teacher's ε̃}, over `draws`
    random noise levels and noises per example, at each fixed scale pair."""
    out = {}
    for s_i, s_t in scales:
        num_s, num_c, den = 0.0, 0.0, 0.0
        for d in range(draws):
            x_t, _, t = et.noisy(ex, jax.random.fold_in(key, d), abar)
            target, conditional = et.guided_eps(teacher, x_t, ex["image_latents"], t, ex["text"], ex["empty_text"],
                                                s_i, s_t)
            pred = student_eps(student, x_t, ex["image_latents"], t, ex["text"], s_i, s_t)
            num_s += float(jnp.sum(jnp.square(pred - target)))
            num_c += float(jnp.sum(jnp.square(conditional - target)))
            den += float(jnp.sum(jnp.square(target)))
        out[(s_i, s_t)] = (np.sqrt(num_s / den), np.sqrt(num_c / den))
    return out


def write_comparison(cfg, programs, state, frozen, autoencoder, batch, workdir, step):
    """The phase's sample sheet: input | teacher (3 passes) | student (1 pass) | conditional only, per row, at
    edit.sample_* scales and steps from the same noise; returns (path, {"student": PSNR of the student's edit
    against the teacher's, "conditional": the conditional-only model's}) in dB."""
    from mvd_jax.train.metrics import psnr

    e = cfg.edit
    student, teacher = programs.codec.merge({**jax.device_get(frozen), **jax.device_get(state["ema"])})
    ex = et.sample_examples(batch)
    noise = jax.random.normal(jax.random.key(cfg.train.seed + 3), ex["latents"].shape)
    graphdef, st = nnx.split((student, teacher))
    schedule = et.noise_schedule(cfg)

    @jax.jit
    def run(st, ex, noise):
        s, t = nnx.merge(graphdef, st)
        return compare_samples(s, t, ex, schedule, steps=e.sample_steps, s_image=e.sample_image_guidance,
                               s_text=e.sample_text_guidance, noise=noise)

    teacher_x, student_x, conditional_x = (et.decode_to_unit(autoencoder, z) for z in run(st, ex, noise))
    inputs = et.decode_to_unit(autoencoder, ex["image_latents"] * autoencoder.config.scaling_factor)
    values = {"student": float(psnr(student_x * 2 - 1, teacher_x * 2 - 1)),
              "conditional": float(psnr(conditional_x * 2 - 1, teacher_x * 2 - 1))}
    return et.write_sheet(workdir, step, [inputs, teacher_x, student_x, conditional_x]), values


def write_svd_comparison(cfg, programs, state, frozen, autoencoder, batch, workdir, step):
    """SVD's sample video: the teacher's frame-wise guided Euler sample (1 → train.sample_max_guidance_scale),
    the student's one pass per step at that scale, and the conditional-only sample, side by side from the same
    noise (train.sample_steps); returns (path, PSNR in dB of the student's and the conditional sample's decode
    against the teacher's)."""
    from mvd_jax.diffusion import edm, samplers
    from mvd_jax.train.metrics import psnr, write_sample_video

    student, teacher = programs.codec.merge({**jax.device_get(frozen), **jax.device_get(state["ema"])})
    first = jax.tree.map(lambda x: jnp.asarray(np.asarray(jax.device_get(x))[:1]), batch)
    t = first["latents"].shape[1]
    noise = jax.random.normal(jax.random.key(cfg.train.seed + 3), first["latents"].shape)
    cond = jnp.repeat(first["cond_latent"][:, None], t, axis=1)
    sigmas = edm.karras_sigmas(int(cfg.train.sample_steps))
    top = max(1.0, float(cfg.train.sample_max_guidance_scale))
    graphdef, st = nnx.split((student, teacher))

    @jax.jit
    def run(st, noise, cond, embeds, ids):
        s, te = nnx.merge(graphdef, st)
        sample = lambda fn, hi: samplers.euler_sample(fn, noise, sigmas, cond, embeds, ids, min_scale=1.0, max_scale=hi)
        return (sample(lambda *a: te(*a), top), sample(lambda *a: s(*a, guidance=jnp.full((1, 1), top)), 1.0),
                sample(lambda *a: te(*a), 1.0))

    latents = run(st, noise, cond, first["image_embeds"], first["added_time_ids"])
    frames = [autoencoder.decode(z[0] / autoencoder.config.scaling_factor, t) for z in latents]
    values = {"student": float(psnr(frames[1], frames[0])), "conditional": float(psnr(frames[2], frames[0]))}
    side = np.concatenate([np.asarray(f) for f in frames], axis=2)
    return write_sample_video(cfg, workdir, step, np.clip(side / 2 + 0.5, 0, 1)), values


# =============================================================================================
# Reading a run: the student, for editing
# =============================================================================================
def check_distilled_run(run_dir):
    """The run's config, if `run_dir` is a guidance_distill run; a UserError otherwise."""
    from mvd_jax.train import stages

    if not stages.is_run_dir(run_dir):
        raise UserError(f"--distilled takes a guidance_distill run directory; {run_dir} is not a training run "
                        "(no checkpoints/config.json)")
    cfg = stages.read_run_config(run_dir)
    phase = cfg.get("train", {}).get("phase")
    if phase != PHASE:
        raise UserError(f"{run_dir} is a {phase!r} run, not a {PHASE!r} one: it holds no guidance-distilled UNet")
    return cfg


def read_student(run_dir, *, use_ema: bool = True, cross_frame_attention: bool = False):
    """(the student UNet, the run's config, the step) of a guidance_distill run's latest checkpoint (EMA weights by
    default), with MoViE's cross-frame attention on if asked (a forward-mode switch: the same weights)."""
    from mvd_jax.train import stages

    check_distilled_run(run_dir)
    params, cfg, step = stages.read_run_params(run_dir, use_ema=use_ema)
    codec = PairCodec(*abstract_pair(cfg, cross_frame_attention=cross_frame_attention), TEACHER_PREFIX)
    ours = {k: params[k] for k in codec.first.keys if k in params}
    return stages.module_from_params(codec.first, ours, run_dir), cfg, step
