"""The autoencoder's own training phase (`train.phase=autoencoder`): SVD's temporal VAE structure learns to
reconstruct clips — to finetune SVD's VAE on new data, or to make a small VAE of SVD's structure where
SVD's cannot be downloaded (the demo's teacher for the tiny decoder, configs/demo.py:demo_vae).

Per step, for real clips v (B, T, H, W, 3): z ~ q(z | v) per frame (the posterior sample), v̂ = D(z) over
each whole clip (the decoder's temporal layers see T frames), loss = |v̂ − v|₁ + autoencoder.kl_weight ·
KL(q(z | v) ‖ N(0, I)) (mean over latent elements). L1 and a small KL as in the latent-diffusion VAEs;
their perceptual and adversarial terms are left out here (no pretrained LPIPS network offline).
The shared single-loss step (train/programs.py) does the rest: AdamW, EMA, checkpoints, resume, the mesh.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mvd_jax.train import sharding as shd
from mvd_jax.train.metrics import psnr, write_sample_video
from mvd_jax.train.model_state import ParamCodec, make_optimizer
from mvd_jax.train.programs import Programs, build_loss_programs


def reconstruct(vae, video, key):
    """(reconstruction (B, T, H, W, 3), mean, logvar) of clips through the posterior sample."""
    b, t = video.shape[:2]
    mean, logvar = vae.encode_moments(video.reshape(b * t, *video.shape[2:]))
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)
    x = vae.decode(z, t)
    return x.reshape(video.shape), mean, logvar


def vae_losses(vae, video, key, kl_weight: float):
    x, mean, logvar = reconstruct(vae, video, key)
    l1 = jnp.mean(jnp.abs(x - video))
    kl = 0.5 * jnp.mean(mean ** 2 + jnp.exp(logvar) - 1.0 - logvar)
    return l1 + kl_weight * kl, {"reconstruction": l1, "kl": kl, "psnr": psnr(x, video)}


def build_vae_programs(cfg, vae_abstract, mesh) -> Programs:
    """Every VAE parameter trained on the reconstruction loss; the batch is the raw clips."""
    codec = ParamCodec(vae_abstract)
    tx, schedule = make_optimizer(cfg.optimizer)
    dtype = jnp.bfloat16 if cfg.train.dtype == "bfloat16" else jnp.float32
    kl_weight = cfg.autoencoder.kl_weight

    def loss_on(params_train, frozen, batch, key, step):
        vae = codec.merge({**frozen, **params_train})
        loss, aux = vae_losses(vae, batch["video"].astype(dtype), key, kl_weight)
        return loss.astype(jnp.float32), {k: v.astype(jnp.float32) for k, v in aux.items()}

    video_sh = {"video": shd.batch_sharding(mesh, 5)}

    def encode(state, video, fps, motion, step):  # the clips are the batch: nothing to encode
        return {"video": video}

    return build_loss_programs(cfg, codec, list(codec.keys), mesh, tx, schedule, loss_on,
                               jax.jit(encode, out_shardings=video_sh), video_sh)


def write_reconstruction(cfg, programs, state, frozen, batch, workdir, step):
    """workdir/samples/step_N.mp4: the first clip (left) beside its reconstruction by the EMA weights
    (posterior mode, right); returns (path, its PSNR)."""
    vae = programs.codec.merge({**jax.device_get(frozen), **jax.device_get(state["ema"])})
    video = jnp.asarray(np.asarray(jax.device_get(batch["video"]))[:1])

    @nnx.jit
    def mode_reconstruction(vae, video):
        t = video.shape[1]
        z = vae.encode_mode(video.reshape(t, *video.shape[2:]))
        return vae.decode(z, t).reshape(video.shape)

    x = np.asarray(mode_reconstruction(vae, video))
    v = np.asarray(video)
    path = write_sample_video(cfg, workdir, step, np.clip(np.concatenate([v[0], x[0]], axis=2) / 2 + 0.5, 0, 1))
    return path, float(psnr(x, v))


# ---- where a config's VAE comes from -------------------------------------------------------------------
def load_vae_checkpoint(path):
    """autoencoder.kind 'vae': a diffusers VAE folder (or a pipeline folder's vae/), or an autoencoder-phase run."""
    from mvd_jax.convert.diffusers_vae import load_vae, vae_folder
    from mvd_jax.errors import UserError
    from mvd_jax.train import stages

    if not path:
        raise UserError("autoencoder.kind 'vae' needs autoencoder.checkpoint: a VAE folder or an autoencoder run")
    if stages.is_run_dir(path):
        return read_run_vae(path)[0]
    return load_vae(vae_folder(path))


def read_run_vae(run_dir, *, use_ema: bool = True):
    """(an autoencoder-phase run's VAE at its latest checkpoint, the run's config, the step)."""
    from mvd_jax.convert.diffusers_vae import abstract_vae, autoencoder_vae_config
    from mvd_jax.errors import UserError
    from mvd_jax.train import stages

    params, cfg, step = stages.read_run_params(run_dir, use_ema=use_ema)
    if cfg.train.phase != "autoencoder":
        raise UserError(f"{run_dir} is a {cfg.train.phase!r} run, not an autoencoder (train.phase autoencoder)")
    codec = ParamCodec(abstract_vae(autoencoder_vae_config(cfg.autoencoder)))
    return stages.module_from_params(codec, params, run_dir), cfg, step
