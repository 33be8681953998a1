"""The diffusion-phase trainer, read top to bottom:

    set-up → mesh → data → models → train state (sharded) → step → checkpoints → loop

One program from a laptop CPU to a multi-host TPU pod: the mesh, the batch split and the parameter
placement come from the config; every process runs this same file (`jax.distributed.initialize()`
first when launched multi-host). The step is one jitted function with explicit in/out shardings and
the train state donated. Randomness is a function of (seed, step, global example position) only, so
a resumed run, a 1-device run and an 8-device run compute the same numbers.
"""
from __future__ import annotations

import dataclasses
import signal
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from mvd_jax import storage
from mvd_jax.models import attention_kernel
from mvd_jax.errors import UserError
from mvd_jax.settings import resolve, unet_config
from mvd_jax.train import checkpoint as ckpt
from mvd_jax.train import sharding as shd
from mvd_jax.train import stages
from mvd_jax.train.adversarial import build_adversarial_programs
from mvd_jax.train import clockwork_distill
from mvd_jax.train import decoder_distill
from mvd_jax.train import edit_training
from mvd_jax.train import guidance_distill
from mvd_jax.train.decoder_distill import build_decoder_programs
from mvd_jax.train import vae_train
from mvd_jax.train.vae_train import build_vae_programs
from mvd_jax.train.compile_report import compiled_report, format_attention, format_report, write_report
from mvd_jax.train.loss import diffusion_loss
from mvd_jax.train.metrics import MetricWriter, write_sample_video
from mvd_jax.train.model_state import (
    ParamCodec,
    build_unet,
    init_unet_from_svd,
    make_optimizer,
    trainable_keys,
)
from mvd_jax.train.programs import Programs, build_loss_programs, gate_keep_at


class NonFiniteLossError(UserError):
    """Training produced NaN/Inf and train.nan_policy is 'stop'."""


# =============================================================================================
# Set-up
# =============================================================================================
def build_autoencoder(cfg):
    """(autoencoder, image encoder): SVD's VAE + CLIP from a folder, or the offline pixel stand-ins."""
    a = cfg.autoencoder
    if a.kind == "svd":
        if not a.checkpoint:
            raise UserError("autoencoder.kind 'svd' needs autoencoder.checkpoint (an SVD diffusers folder)")
        from mvd_jax.convert.diffusers_vae import load_vae
        from mvd_jax.convert.transformers_clip import load_image_encoder

        folder = storage.path(a.checkpoint)  # local, or gs:// (mirrored locally by the loaders)
        return load_vae(folder / "vae"), load_image_encoder(folder / "image_encoder")
    from mvd_jax.models.clip_vision import CLIPVisionConfig, CLIPVisionModelWithProjection

    clip = CLIPVisionConfig(hidden_size=a.clip_hidden_size, intermediate_size=2 * a.clip_hidden_size,
                            projection_dim=unet_config(cfg).cross_attention_dim, num_hidden_layers=a.clip_layers,
                            num_attention_heads=a.clip_heads, image_size=224, patch_size=a.clip_patch_size)
    image_encoder = CLIPVisionModelWithProjection(clip, rngs=nnx.Rngs(a.clip_seed))
    if a.kind == "random_vae":  # SVD's VAE structure, random weights (what the autoencoder phase starts from)
        from mvd_jax.convert.diffusers_vae import autoencoder_vae_config
        from mvd_jax.models.vae import AutoencoderKLTemporalDecoder

        return AutoencoderKLTemporalDecoder(autoencoder_vae_config(a), rngs=nnx.Rngs(a.vae_seed)), image_encoder
    if a.kind == "vae":  # a VAE folder or an autoencoder-phase run, with the stand-in CLIP
        from mvd_jax.train.vae_train import load_vae_checkpoint

        return load_vae_checkpoint(a.checkpoint), image_encoder
    return pixel_autoencoder(a), image_encoder


def pixel_autoencoder(a):
    """The parameter-free pixel autoencoder of an `autoencoder` section (kind "pixel"), whitened by its basis."""
    from mvd_jax.models.pixel_autoencoder import PixelAutoencoder, PixelAutoencoderConfig

    basis = None
    if a.pixel_basis:
        if not storage.path(a.pixel_basis).is_file():
            raise UserError(f"autoencoder.pixel_basis {a.pixel_basis} is not a file (python -m mvd_jax.data.pixel_basis "
                            f"writes one)")
        with np.load(storage.path(a.pixel_basis)) as f:
            basis = {k: f[k] for k in f.files}
    try:
        config = PixelAutoencoderConfig(factor=a.pixel_factor, scaling_factor=a.pixel_scaling_factor,
                                        channels=a.pixel_channels)
        return PixelAutoencoder(config, basis)
    except ValueError as e:
        raise UserError(f"autoencoder pixel_basis {a.pixel_basis or '(none)'}, pixel_channels {a.pixel_channels}: "
                        f"{e}") from None


def check_model_matches_data(cfg, unet_cfg, autoencoder):
    factor = autoencoder.config.downsampling_factor
    if cfg.height % factor or cfg.width % factor:
        raise UserError(f"height/width {cfg.height}×{cfg.width} must be multiples of the autoencoder's factor {factor}")
    latent = autoencoder.config.latent_channels
    if unet_cfg.in_channels != 2 * latent or unet_cfg.out_channels != latent:
        raise UserError(f"the UNet takes {unet_cfg.in_channels} channels in and {unet_cfg.out_channels} out; the "
                        f"autoencoder gives {latent}-channel latents (in = 2·{latent}, out = {latent})")


def make_data(cfg, per_host_batch: int, workdir):
    from mvd_jax.data.cache import CachedClipLoader
    from mvd_jax.data.clips import ClipSpec
    from mvd_jax.data.loader import LoaderOptions, VideoClipLoader
    from mvd_jax.data.manifest import read_entries

    d, t = cfg.data, cfg.train
    if d.cache:
        return CachedClipLoader(d.cache, batch_size=per_host_batch, seed=t.seed, num_epochs=None), True
    spec = ClipSpec(num_frames=cfg.frames, height=cfg.height, width=cfg.width, fps=d.fps or None, crop=d.crop,
                    default_motion_bucket_id=d.motion_bucket_id)
    options = LoaderOptions(batch_size=per_host_batch, seed=t.seed, num_epochs=None, num_workers=d.workers)
    return VideoClipLoader(read_entries(d.videos), spec, options, report_dir=workdir), False


# =============================================================================================
# The train state and the step
# =============================================================================================
def build_programs(cfg, unet_abstract, mesh, encoders, tx, schedule) -> Programs:
    """The diffusion phase: the EDM denoising loss (train/loss.py) in the shared step (train/programs.py)."""
    t = cfg.train
    codec = ParamCodec(unet_abstract)
    dtype = jnp.bfloat16 if t.dtype == "bfloat16" else jnp.float32
    form = attention_kernel.form_for_mesh(t.attention, mesh)  # the target's attention (models/attention_kernel.py)

    def loss_on(params_train, frozen, batch, key, step):
        unet = codec.merge({**frozen, **params_train})
        unet.remat = t.remat  # rematerialise each layer in the backward pass (models/layers.py remat_call)
        attention_kernel.set_form(unet, form)
        return diffusion_loss(unet, batch, key, p_mean=t.p_mean, p_std=t.p_std, cond_dropout=t.cond_dropout,
                              gate_keep=gate_keep_at(t, step), l1_weight=t.l1_weight, dtype=dtype)

    return build_loss_programs(cfg, codec, trainable_keys(codec.keys, t.trainable), mesh, tx, schedule, loss_on,
                               make_encode(cfg, encoders, mesh), shd.model_batch_shardings(mesh))


def make_encode(cfg, encoders, mesh):
    """Jitted raw clips → model batch (VAE latents, conditioning latent with noise augmentation, image
    embedding, added time ids), or None when the data come from the latent cache."""
    if encoders is None:
        return None
    from mvd_jax.data.encode import encode_clips

    t = cfg.train
    batch_sh = shd.model_batch_shardings(mesh)
    enc_graph, _ = nnx.split(encoders)
    aug_key, noise_key = jax.random.key(t.seed + 1), jax.random.key(t.seed + 2)
    form = attention_kernel.form_for_mesh(t.attention, mesh)

    def encode_fn(enc_state, video, fps, motion, step):
        vae, image_encoder = attention_kernel.set_form(nnx.merge(enc_graph, enc_state), form)
        b = video.shape[0]
        aug = jnp.exp(t.noise_aug_p_mean + t.noise_aug_p_std
                      * jax.random.normal(jax.random.fold_in(aug_key, step), (b,)))
        keys = jax.random.split(jax.random.fold_in(noise_key, step), b)
        return encode_clips(vae, image_encoder, video, fps, motion, aug, keys)

    return jax.jit(encode_fn, out_shardings=batch_sh)


def make_programs(cfg, unet_abstract, mesh, encoders) -> Programs:
    """The programs of the config's phase: diffusion (this file), adversarial (train/adversarial.py),
    decoder_distill (train/decoder_distill.py; `unet_abstract` is then the tiny autoencoder), autoencoder
    (train/vae_train.py), clockwork (train/clockwork_distill.py; `unet_abstract` is the frozen teacher), or the
    editing UNet's instruct_pix2pix / guidance_distill (train/edit_training.py, train/guidance_distill.py;
    `unet_abstract` is the SD-style UNet or the (student, teacher) pair, `encoders` the autoencoder and the text
    parts)."""
    if cfg.train.phase == "decoder_distill":
        return build_decoder_programs(cfg, unet_abstract, mesh, encoders)
    if cfg.train.phase == "autoencoder":
        return build_vae_programs(cfg, unet_abstract, mesh)
    if cfg.train.phase == "adversarial":
        return build_adversarial_programs(cfg, unet_abstract, mesh, make_encode(cfg, encoders, mesh))
    if cfg.train.phase == "clockwork":
        return clockwork_distill.build_clockwork_programs(cfg, unet_abstract, mesh, make_encode(cfg, encoders, mesh))
    if cfg.train.phase == "instruct_pix2pix":
        return edit_training.build_instruct_pix2pix_programs(cfg, unet_abstract, mesh, encoders)
    if cfg.train.phase == "guidance_distill" and guidance_distill.distils_svd(cfg):
        return guidance_distill.build_svd_guidance_programs(cfg, unet_abstract, mesh, make_encode(cfg, encoders, mesh))
    if cfg.train.phase == "guidance_distill":
        return guidance_distill.build_guidance_distill_programs(cfg, unet_abstract, mesh, encoders)
    tx, schedule = make_optimizer(cfg.optimizer)
    return build_programs(cfg, unet_abstract, mesh, encoders, tx, schedule)


# =============================================================================================
# The run
# =============================================================================================
class _Preemption:
    """SIGTERM (TPU preemption, `kill`): finish the current step, checkpoint, exit 0."""

    def __init__(self):
        self.requested = False
        self._old = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._old)


@dataclasses.dataclass
class TrainResult:
    metrics: dict  # the last logged step's metrics, as floats
    state: dict  # the train state: params (trainable), ema, opt_state, step, skipped — jax.Arrays on the mesh
    frozen: dict  # the parameters that were not trained


def train(config: ml_collections.ConfigDict, workdir, *, log=print) -> TrainResult:
    """Runs (or resumes) training in `workdir` up to `train.steps`."""
    # ---- set-up ------------------------------------------------------------------------------
    # every value checked (mvd_jax/settings.py); a pruning stage learns its block list from the last stage
    cfg = stages.resolve_stage(resolve(config))
    t = cfg.train
    workdir = storage.path(workdir)  # local or gs://bucket/run (mvd_jax/storage.py)
    editing = edit_training.is_edit_phase(cfg)  # the model is MoViE's image UNet (model: its diffusers keys)
    unet_cfg = None if editing else dataclasses.replace(unet_config(cfg), num_frames=cfg.frames)
    distill_decoder = t.phase == "decoder_distill"  # the model trained is the tiny autoencoder, not the UNet
    train_vae = t.phase == "autoencoder"  # the model trained is the autoencoder itself
    is_main = jax.process_index() == 0
    if t.phase == "clockwork" and not cfg.init_from:
        raise UserError("train.phase 'clockwork' distils a trained UNet: init_from must name it (a run directory or "
                        "a UNet / SVD folder)")

    # ---- mesh --------------------------------------------------------------------------------
    mesh = shd.make_mesh(dict(cfg.mesh))
    per_host = shd.check_batch(t.batch_size, mesh, jax.process_count())
    if (t.batch_size // t.grad_accum) % shd.data_parallel_size(mesh):
        raise UserError(f"the micro-batch {t.batch_size // t.grad_accum} (batch_size / grad_accum) is not divisible "
                        f"by the data-parallel mesh size {shd.data_parallel_size(mesh)}")

    # ---- data --------------------------------------------------------------------------------
    workdir.mkdir(parents=True, exist_ok=True)  # only now: a refused config leaves no run directory behind
    if editing:  # the "image encoder" of these phases is the text encoder and its tokenizer
        autoencoder, image_encoder = edit_training.build_autoencoder(cfg), edit_training.build_text_parts(cfg)
        edit_training.check_parts(cfg, autoencoder, image_encoder)
    else:
        autoencoder, image_encoder = build_autoencoder(cfg)
    if not (distill_decoder or train_vae or editing):
        check_model_matches_data(cfg, unet_cfg, autoencoder)
    if editing and cfg.edit.triplets:  # (image, instruction, edited image) triplets instead of video frames
        loader, cached = edit_training.make_triplet_data(cfg, per_host, image_encoder), False
    else:
        loader, cached = make_data(cfg, per_host, workdir)
    data_iter = iter(loader)

    # ---- models and optimizer ----------------------------------------------------------------
    if distill_decoder:
        unet_abstract = nnx.eval_shape(lambda: decoder_distill.build_student(cfg, autoencoder.config))
    elif train_vae:
        unet_abstract = nnx.eval_shape(lambda: autoencoder)
    elif t.phase == "guidance_distill":
        unet_abstract = guidance_distill.abstract_pair(cfg)
    elif editing:
        unet_abstract = nnx.eval_shape(lambda: edit_training.load_editing_unet(cfg, ""))
    else:
        unet_abstract = nnx.eval_shape(lambda: build_unet(unet_cfg, t.seed))
    encoders = None if cached else (autoencoder, image_encoder)
    programs = make_programs(cfg, unet_abstract, mesh, encoders)
    enc_state = None
    if encoders is not None:
        modules = (autoencoder, image_encoder.encoder) if editing else encoders
        enc_state = jax.device_put(nnx.state(modules), shd.replicated(mesh))

    # ---- train state: restore, or initialise (from SVD weights or at random) ------------------
    manager = ckpt.CheckpointManager(workdir / "checkpoints", keep=t.keep_checkpoints)
    manager.check_config(cfg)
    abstract_state = jax.eval_shape(programs.init_state, programs.abstract_trainable)
    restored = manager.restore_latest(abstract_state, programs.state_shardings, programs.frozen_shardings,
                                      data_iter)
    if restored is not None:
        state, frozen = restored
        log(f"resumed from step {int(state['step'])} in {workdir / 'checkpoints'}")
    else:
        if distill_decoder:
            unet = decoder_distill.initial_student(cfg, autoencoder.config, log)
        elif train_vae:
            unet = autoencoder  # random_vae: its seed; vae / svd: the checkpoint's weights
        elif t.phase == "guidance_distill":
            unet = guidance_distill.initial_pair(cfg, log)  # (student, teacher)
        elif editing:
            unet = edit_training.load_editing_unet(cfg, cfg.init_from, log)
        elif stages.is_run_dir(cfg.init_from):  # the previous stage's run
            unet, from_step = stages.init_unet_from_run(cfg, unet_cfg)
            log(f"initialised from {cfg.init_from} (step {from_step}, {'EMA' if cfg.init_ema else 'raw'} weights)")
        elif cfg.init_from:  # SVD's weights
            unet = init_unet_from_svd(cfg.init_from, unet_cfg)
            if t.phase == "clockwork":
                log(f"teacher: the UNet of {cfg.init_from}")
        else:
            unet = build_unet(unet_cfg, t.seed)
        trainable, frozen = programs.initial_arrays(unet)  # clockwork: the teacher, and a fresh adaptor
        frozen = jax.device_put(frozen, programs.frozen_shardings)
        state = programs.init_state(jax.device_put(trainable, programs.trainable_shardings))
        manager.save_config(cfg)
    start = int(state["step"])

    # ---- loop --------------------------------------------------------------------------------
    writer = MetricWriter(workdir, enabled=is_main)
    preempt = _Preemption()
    step_fn, flops_per_device = None, None
    last = {}
    sample_batch = None
    try:
        from tqdm import tqdm

        bar = tqdm(total=t.steps, initial=start, desc="training", unit="step", disable=not is_main,
                   mininterval=1.0, file=sys.stderr)
        t_last, steps_since = time.perf_counter(), 0
        window = {}  # per-step values since the last log (device scalars: no host sync per step)
        for step in range(start, t.steps):
            batch = _next_batch(data_iter, mesh, programs, enc_state, step, cached, editing)
            if sample_batch is None:
                sample_batch = batch
            if step_fn is None:  # compile once, and report what the compiler planned per device
                step_fn, flops_per_device = _compile_step(programs, state, frozen, batch, mesh, workdir,
                                                          is_main, log)
            state, metrics = step_fn(state, frozen, batch)
            for k in AVERAGED_METRICS:
                if k in metrics:
                    window.setdefault(k, []).append(metrics[k])
            steps_since += 1
            done = step + 1
            if not bool(metrics["finite"]):
                if t.nan_policy == "stop":
                    raise NonFiniteLossError(
                        f"non-finite loss or gradients at step {done} (loss {float(metrics['loss'])}, grad norm "
                        f"{float(metrics['grad_norm'])}); the last good checkpoint is kept in "
                        f"{workdir / 'checkpoints'}; lower the learning rate or set train.nan_policy='skip'")
                log(f"step {done}: non-finite loss skipped ({int(state['skipped'])} so far)")
            if done % t.log_every == 0 or done == t.steps or done == start + 1:
                elapsed = time.perf_counter() - t_last
                rate = steps_since / elapsed if elapsed > 0 else float("nan")
                last = {k: float(v) for k, v in metrics.items()}
                # one step's loss swings with its random σ; the interval mean shows the trend
                last.update({f"{k}_avg": float(np.mean([float(x) for x in v])) for k, v in window.items()})
                window = {}
                last.update(steps_per_s=rate, examples_per_s=rate * t.batch_size, skipped=int(state["skipped"]))
                if flops_per_device:
                    last["tflops_per_device"] = flops_per_device * rate / 1e12
                last.update(_gate_metrics(programs, state, frozen))
                writer.write(done, last)
                bar.set_postfix(loss_avg=f"{last['loss_avg']:.4f}")
                t_last, steps_since = time.perf_counter(), 0
            bar.update(1)
            if t.sample_every and done % t.sample_every == 0:
                _write_sample(cfg, programs, state, frozen, autoencoder, sample_batch, workdir, done, is_main, log)
            if done % t.checkpoint_every == 0 or done == t.steps or preempt.requested:
                manager.save(done, state, frozen, data_iter)
            if preempt.requested:
                manager.wait()
                log(f"SIGTERM: saved step {done} to {workdir / 'checkpoints'}; exiting")
                return TrainResult(last, state, frozen)
        bar.close()
        manager.wait()
        if t.sample_at_end and start < t.steps and sample_batch is not None:
            _write_sample(cfg, programs, state, frozen, autoencoder, sample_batch, workdir, t.steps, is_main, log)
    finally:
        preempt.restore()
        writer.close()
        manager.close()
    return TrainResult(last, state, frozen)


# Logged as "<name>_avg" too: the mean over the steps since the last log. One step's values swing with
# its random σ (and, for the discriminator's accuracy, with a batch of a few clips).
AVERAGED_METRICS = ("loss", "d_loss", "d_accuracy", "g_adversarial", "reconstruction", "pixel_loss", "temporal_loss",
                    "encoder_loss", "psnr", "kl", "identity_loss", "loss_ratio", "baseline_loss")


def _next_batch(data_iter, mesh, programs, enc_state, step, cached, editing=False):
    local = next(data_iter)
    if editing:  # train/edit_training.make_encode: triplets, or video frames to edit
        keys = ("input", "edited", "ids") if "ids" in local else ("video",)
        return programs.encode(enc_state, shd.global_batch({k: local[k] for k in keys}, mesh), jnp.int32(step))
    if cached:
        local = {k: local[k] for k in ("latents", "cond_latent", "image_embeds", "added_time_ids")}
        return shd.global_batch(local, mesh)
    raw = shd.global_batch({k: local[k] for k in ("video", "fps", "motion_bucket_id")}, mesh)
    return programs.encode(enc_state, raw["video"], raw["fps"], raw["motion_bucket_id"], jnp.int32(step))


def _compile_step(programs, state, frozen, batch, mesh, workdir, is_main, log):
    """The step compiled for these exact arrays, and its per-device FLOPs. The compiler's memory plan
    (per device) is logged and written to workdir/compile_report.json."""
    with attention_kernel.recording() as forms:  # the attention form each shape got, for the report
        lowered = programs.train_step.lower(state, frozen, batch)
    compiled = lowered.compile(programs.compiler_options)
    report = {**compiled_report(compiled), "attention": forms}
    log(format_report(report, devices=jax.device_count()))
    log(format_attention(forms))
    if is_main:
        write_report(workdir / "compile_report.json", report, devices=jax.device_count(),
                     mesh={a: int(n) for a, n in mesh.shape.items()})
    return compiled, report.get("flops")


def _gate_metrics(programs, state, frozen):
    key = "temporal_gates/logits"
    if key not in programs.codec.keys:
        return {}
    logits = state["params"][key] if key in state["params"] else frozen[key]
    return {f"gate_logit_{i}": float(v) for i, v in enumerate(np.asarray(logits))}


def _write_sample(cfg, programs, state, frozen, autoencoder, batch, workdir, step, is_main, log):
    """A sample video from the EMA parameters: Euler with train.sample_max_guidance_scale, conditioned on the first clip of
    the first batch; written by process 0 to workdir/samples/step_N.mp4 (the decoder phase: the teacher's
    and the student's decode of that clip side by side)."""
    from mvd_jax.diffusion import edm, samplers

    if jax.process_count() > 1:  # the arrays are not all addressable here; sampling is single-process
        return None
    if cfg.train.phase == "decoder_distill":
        if is_main:
            path, value = decoder_distill.write_comparison(cfg, programs, state, frozen, batch, workdir, step)
            log(f"teacher | student video: {path} (PSNR of the student's decode {value:.2f} dB)")
        return None
    if cfg.train.phase == "autoencoder":
        if is_main:
            path, value = vae_train.write_reconstruction(cfg, programs, state, frozen, batch, workdir, step)
            log(f"clip | reconstruction video: {path} (PSNR {value:.2f} dB)")
        return None
    if cfg.train.phase == "instruct_pix2pix":
        if is_main:
            path, value = edit_training.write_teacher_sheet(cfg, programs, state, frozen, autoencoder, batch, workdir,
                                                            step)
            log(f"input | target | edit sheet: {path} (PSNR of the guided edit to the target {value:.2f} dB)")
        return None
    if cfg.train.phase == "guidance_distill" and guidance_distill.distils_svd(cfg):
        if is_main:
            path, v = guidance_distill.write_svd_comparison(cfg, programs, state, frozen, autoencoder, batch, workdir,
                                                            step)
            log(f"teacher (2 passes) | student (1 pass) | conditional only video: {path} (PSNR against the "
                f"teacher's: student {v['student']:.2f} dB, conditional only {v['conditional']:.2f} dB)")
        return None
    if cfg.train.phase == "guidance_distill":
        if is_main:
            path, v = guidance_distill.write_comparison(cfg, programs, state, frozen, autoencoder, batch, workdir,
                                                        step)
            log(f"input | teacher (3 passes) | student (1 pass) | conditional only sheet: {path} (PSNR against the "
                f"teacher's edit: student {v['student']:.2f} dB, conditional only {v['conditional']:.2f} dB)")
        return None
    if cfg.train.phase == "clockwork":
        if is_main:
            path, v = clockwork_distill.write_comparison(cfg, programs, state, frozen, autoencoder, batch, workdir,
                                                         step)
            log(f"full | clock {cfg.clockwork.clock} identity | clock {cfg.clockwork.clock} adaptor video: {path} "
                f"(PSNR against the full sampler: identity {v['identity']:.2f} dB, adaptor {v['adaptor']:.2f} dB)")
        return None
    unet = programs.codec.merge({**jax.device_get(frozen), **jax.device_get(state["ema"])})
    first = jax.tree.map(lambda x: np.asarray(jax.device_get(x))[:1], batch)
    t = cfg.frames
    latents_shape = first["latents"].shape
    sigmas = edm.karras_sigmas(cfg.train.sample_steps)
    noise = jax.random.normal(jax.random.key(cfg.train.seed + 3), latents_shape)
    cond = jnp.repeat(jnp.asarray(first["cond_latent"])[:, None], t, axis=1)
    graphdef, st = nnx.split(unet)

    @jax.jit
    def run(st, noise, cond, embeds, ids):
        model = nnx.merge(graphdef, st)
        return samplers.euler_sample(lambda *a: model(*a), noise, sigmas, cond, embeds, ids, min_scale=1.0,
                                     max_scale=float(cfg.train.sample_max_guidance_scale))

    x = run(st, noise, cond, jnp.asarray(first["image_embeds"]), jnp.asarray(first["added_time_ids"]))
    z = x[0] / autoencoder.config.scaling_factor
    frames = np.asarray(jnp.clip(autoencoder.decode(z, t) / 2 + 0.5, 0, 1))
    if not is_main:
        return None
    target = write_sample_video(cfg, workdir, step, frames)
    log(f"sample video: {target}")
    return target
