"""The tiny autoencoder's distillation phase (`train.phase=decoder_distill`; MobileVD Table 9, MoViE §6.1).

The teacher is the config's autoencoder (SVD's VAE from `autoencoder.checkpoint`, or the offline
`random_vae` stand-in), frozen. Per step, for a batch of real clips v (B, T, H, W, 3):

    z  = E_teacher(v) · s            the teacher's own latents (posterior mode, × its scaling factor s: the
                                     latents the UNet works in and hands to the decoder)
    y  = D_teacher(z / s)            the teacher's decode of them, whole clips (its temporal layers see T frames)
    x  = D_student(z)                the tiny decoder, same clips
    loss = pixel(x, y)                                  L1 or L2 (tiny_autoencoder.pixel_loss)
         + temporal_weight · |Δx − Δy|₁                 Δ: frame t+1 − frame t — the student's frame-to-frame
                                                        changes must be the teacher's (flicker is a change
                                                        the teacher does not make)
         + encoder_weight · |E_student(v) − z|₁         the tiny encoder learns the teacher's latents

The student learns on the teacher's decodes, not on the real frames: it should be a cheaper copy of the
teacher (which is what the UNet was trained against), not a new autoencoder. Everything else — the
loop, AdamW, EMA, checkpoints, resume, sharding over the mesh — is the shared single-loss step
(train/programs.py build_loss_programs). `init_from` may name a previous decoder run or a diffusers
AutoencoderTiny folder (TAESD's weights; temporal mixers start at zero, i.e. as TAESD).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mvd_jax.errors import UserError
from mvd_jax.models.tiny_autoencoder import TinyAutoencoder, TinyAutoencoderConfig
from mvd_jax.train import sharding as shd
from mvd_jax.train.metrics import psnr, write_sample_video
from mvd_jax.train.model_state import ParamCodec, make_optimizer, trainable_keys
from mvd_jax.train.programs import Programs, build_loss_programs

BATCH_RANKS = {"latents": 5, "target": 5, "video": 5}


def tiny_config(cfg, latent_channels: int) -> TinyAutoencoderConfig:
    """The student's config: the `tiny_autoencoder` section's layout for latents of `latent_channels`."""
    ta = cfg.tiny_autoencoder
    return TinyAutoencoderConfig(
        encoder_block_out_channels=(ta.width,) * len(ta.encoder_blocks),
        decoder_block_out_channels=(ta.width,) * len(ta.decoder_blocks),
        num_encoder_blocks=tuple(ta.encoder_blocks), num_decoder_blocks=tuple(ta.decoder_blocks),
        latent_channels=latent_channels, temporal_mixing=bool(ta.temporal_mixing))


def check_matches_teacher(config: TinyAutoencoderConfig, teacher_config, what: str) -> None:
    """One clear error when a tiny autoencoder cannot stand in for the teacher (latent channels, factor)."""
    if (config.latent_channels, config.downsampling_factor) != (teacher_config.latent_channels,
                                                                  teacher_config.downsampling_factor):
        raise UserError(f"{what} takes {config.latent_channels}-channel latents at factor "
                        f"{config.downsampling_factor}; the autoencoder's are {teacher_config.latent_channels}-channel "
                        f"at factor {teacher_config.downsampling_factor}")


def build_student(cfg, teacher_config) -> TinyAutoencoder:
    config = tiny_config(cfg, teacher_config.latent_channels)
    check_matches_teacher(config, teacher_config, "tiny_autoencoder")
    return TinyAutoencoder(config, rngs=nnx.Rngs(cfg.tiny_autoencoder.seed))


def initial_student(cfg, teacher_config, log=print):
    """The student a fresh run starts from: `init_from` (a decoder run, or an AutoencoderTiny folder), or random."""
    from mvd_jax.train import stages

    fresh = build_student(cfg, teacher_config)
    if not cfg.init_from:
        return fresh
    if stages.is_run_dir(cfg.init_from):
        source, _, step = read_run_tiny_autoencoder(cfg.init_from, use_ema=cfg.init_ema)
        log(f"initialised from {cfg.init_from} (step {step})")
    else:
        from mvd_jax.convert.diffusers_tiny_autoencoder import load_tiny_autoencoder

        source = load_tiny_autoencoder(cfg.init_from)
        log(f"initialised from the AutoencoderTiny folder {cfg.init_from}")
    from mvd_jax.convert.diffusers_tiny_autoencoder import abstract_tiny_autoencoder
    from mvd_jax.models.tensors import module_from_tensors, module_to_tensors

    target = fresh.config
    per_frame = lambda c: dataclasses.replace(c, temporal_mixing=False)
    if per_frame(source.config) != per_frame(target):
        raise UserError(f"init_from {cfg.init_from}: its tiny autoencoder {source.config} is not the config's {target}")
    tensors = {**module_to_tensors(fresh), **module_to_tensors(source)}  # zero temporal mixers where it has none
    if not target.temporal_mixing:
        tensors = {k: v for k, v in tensors.items() if "time_mixers" not in k}
    return module_from_tensors(abstract_tiny_autoencoder(target), tensors)


def read_run_tiny_autoencoder(run_dir, *, use_ema: bool = True):
    """(a decoder_distill run's tiny autoencoder at its latest checkpoint, the run's config, the step)."""
    from mvd_jax.train import stages

    if not stages.is_run_dir(run_dir):
        raise UserError(f"{run_dir} is not a training run directory (no checkpoints/config.json)")
    params, cfg, step = stages.read_run_params(run_dir, use_ema=use_ema)
    if cfg.train.phase != "decoder_distill":
        raise UserError(f"{run_dir} is a {cfg.train.phase!r} run, not a tiny decoder (train.phase decoder_distill)")
    from mvd_jax.convert.diffusers_tiny_autoencoder import abstract_tiny_autoencoder
    from mvd_jax.settings import latent_geometry

    codec = ParamCodec(abstract_tiny_autoencoder(tiny_config(cfg, latent_geometry(cfg)[1])))
    return stages.module_from_params(codec, params, run_dir), cfg, step


def tiny_decoder_location(spec: str, takes: str = "'tiny:RUN_DIR_OR_FOLDER'") -> tuple[str, bool]:
    """(X, whether X is a decoder run directory) of a `--decoder tiny:X` option (the sampler's and the
    exporter's); one clear error for another form or an X that is neither a run nor an AutoencoderTiny folder."""
    from mvd_jax import storage
    from mvd_jax.train import stages

    kind, _, where = spec.partition(":")
    if kind != "tiny" or not where:
        raise UserError(f"--decoder takes {takes}, got {spec!r}")
    if stages.is_run_dir(where):
        return where, True
    if not (storage.path(where) / "config.json").is_file():
        raise UserError(f"--decoder {spec}: {where} is neither a decoder run directory nor an AutoencoderTiny folder")
    return where, False


def load_tiny_decoder(spec: str, takes: str = "'tiny:RUN_DIR_OR_FOLDER'") -> TinyAutoencoder:
    """The tiny autoencoder a `--decoder tiny:X` option names: a decoder run's EMA weights, or a folder's."""
    where, is_run = tiny_decoder_location(spec, takes)
    if is_run:
        return read_run_tiny_autoencoder(where)[0]
    from mvd_jax.convert.diffusers_tiny_autoencoder import load_tiny_autoencoder

    return load_tiny_autoencoder(where)


# ---- the step ------------------------------------------------------------------------------------
def teacher_batch(teacher, video):
    """Real clips (B, T, H, W, 3) → {latents (B, T, h, w, c) in the UNet's units, target: the teacher's decode
    (B, T, H, W, 3), video: the clips}."""
    b, t, h, w, _ = video.shape
    s = teacher.config.scaling_factor
    frames = video.reshape(b * t, h, w, 3)
    z = teacher.encode_mode(frames) * s
    y = teacher.decode(z / s, t)
    return {"latents": z.reshape(b, t, *z.shape[1:]), "target": y.reshape(b, t, h, w, -1), "video": video}


def student_decode(student, latents):
    b, t = latents.shape[:2]
    x = student.decode(latents.reshape(b * t, *latents.shape[2:]), t)
    return x.reshape(b, t, *x.shape[1:])


def distill_losses(student, batch, ta):
    """(loss, aux) of the module docstring's formula."""
    x = student_decode(student, batch["latents"])
    y = batch["target"].astype(x.dtype)
    err = x - y
    pixel = jnp.mean(jnp.abs(err)) if ta.pixel_loss == "l1" else jnp.mean(err ** 2)
    temporal = jnp.mean(jnp.abs(jnp.diff(err, axis=1))) if err.shape[1] > 1 else jnp.float32(0)
    loss = pixel + ta.temporal_weight * temporal
    aux = {"pixel_loss": pixel, "temporal_loss": temporal, "psnr": psnr(x, y)}
    if ta.encoder_weight:
        v = batch["video"]
        b, t = v.shape[:2]
        z = student.encode_mode(v.reshape(b * t, *v.shape[2:]))
        encoder = jnp.mean(jnp.abs(z - batch["latents"].reshape(z.shape)))
        loss = loss + ta.encoder_weight * encoder
        aux["encoder_loss"] = encoder
    return loss, aux


def make_teacher_encode(teacher_and_clip, mesh):
    """Jitted (teacher state, raw clips, fps, motion, step) → the distillation batch, split over the batch axes."""
    graph, _ = nnx.split(teacher_and_clip)
    out = {k: shd.batch_sharding(mesh, n) for k, n in BATCH_RANKS.items()}

    def encode_fn(state, video, fps, motion, step):
        teacher, _ = nnx.merge(graph, state)
        return jax.lax.stop_gradient(teacher_batch(teacher, video))

    return jax.jit(encode_fn, out_shardings=out)


def build_decoder_programs(cfg, student_abstract, mesh, encoders) -> Programs:
    """The Programs of the decoder_distill phase: the student's decoder (and encoder, if encoder_weight > 0)
    trained; its unused half frozen."""
    ta = cfg.tiny_autoencoder
    codec = ParamCodec(student_abstract)
    pattern = "^(decoder|encoder)/" if ta.encoder_weight else "^decoder/"
    train_keys = trainable_keys(codec.keys, pattern)
    tx, schedule = make_optimizer(cfg.optimizer)
    dtype = jnp.bfloat16 if cfg.train.dtype == "bfloat16" else jnp.float32

    def loss_on(params_train, frozen, batch, key, step):
        student = codec.merge({**frozen, **params_train})
        batch = {k: v.astype(dtype) for k, v in batch.items()}
        loss, aux = distill_losses(student, batch, ta)
        return loss.astype(jnp.float32), {k: v.astype(jnp.float32) for k, v in aux.items()}

    batch_sh = {k: shd.batch_sharding(mesh, n) for k, n in BATCH_RANKS.items()}
    return build_loss_programs(cfg, codec, train_keys, mesh, tx, schedule, loss_on,
                               make_teacher_encode(encoders, mesh), batch_sh)


def write_comparison(cfg, programs, state, frozen, batch, workdir, step):
    """workdir/samples/step_N.mp4: the teacher's decode (left) beside the student's EMA decode (right) of the
    first clip of the first batch; returns (path, PSNR of student vs teacher on it)."""
    student = programs.codec.merge({**jax.device_get(frozen), **jax.device_get(state["ema"])})
    latents = jnp.asarray(np.asarray(jax.device_get(batch["latents"]))[:1])
    target = np.asarray(jax.device_get(batch["target"]))[:1]
    x = np.asarray(nnx.jit(student_decode)(student, latents))
    side = np.concatenate([target[0], x[0]], axis=2)  # (T, H, 2W, 3)
    path = write_sample_video(cfg, workdir, step, np.clip(side / 2 + 0.5, 0, 1))
    return path, float(psnr(x, target))
