"""The pretrained demo UNet committed in configs/demo_unet/ (issue 26): the main job's first stage loads it
strictly into configs/demo.py's model, and it has learned to denoise — on clips of the held-out part of
the bundled videos its x0 error at σ 1 and 2 (the trainer's units: whitened pixel-block components of spread 1)
is well below the error of handing back the noisy input and below a random UNet's of the same shape. A
checkpoint that was swapped, truncated or never trained fails here."""
import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mvd_jax.data.encode import encode_clips
from mvd_jax.diffusion import edm
from mvd_jax.eval.sample_quality import real_clips
from mvd_jax.settings import load_config, unet_config
from mvd_jax.train.model_state import build_unet, init_unet_from_svd
from mvd_jax.train.trainer import build_autoencoder

ROOT = Path(__file__).resolve().parents[1]


def test_committed_demo_unet_loads_and_denoises_heldout_clips():
    cfg = load_config(str(ROOT / "configs" / "demo.py"))
    assert Path(cfg.init_from) == ROOT / "configs" / "demo_unet"
    unet_cfg = dataclasses.replace(unet_config(cfg), num_frames=cfg.frames)
    trained = init_unet_from_svd(cfg.init_from, unet_cfg)  # strict: every tensor present, shapes checked
    assert trained.config == unet_cfg

    clips = real_clips(cfg, 2, seed=3, videos="demo:heldout")
    autoencoder, image_encoder = build_autoencoder(cfg)
    scale = autoencoder.config.scaling_factor
    batch = encode_clips(autoencoder, image_encoder, jnp.asarray(clips["video"]), jnp.asarray(clips["fps"]),
                         jnp.asarray(clips["motion_bucket_id"]), jnp.full((2,), 0.02, jnp.float32),
                         jax.random.split(jax.random.key(0), 2))
    cond = jnp.repeat(batch["cond_latent"][:, None], cfg.frames, axis=1)
    x0 = batch["latents"]
    sigmas = jnp.asarray([1.0, 2.0], jnp.float32)
    noise = jax.random.normal(jax.random.key(1), (2,) + x0.shape)

    # both σ in one batch of 4: one UNet call in one program, shared by both models (weights are the argument)
    x0_twice = jnp.concatenate([x0, x0])
    noisy = x0_twice + jnp.repeat(sigmas, 2)[:, None, None, None, None] * noise.reshape(x0_twice.shape)
    twice = {k: jnp.concatenate([v, v]) for k, v in dict(cond=cond, context=batch["image_embeds"],
                                                         ids=batch["added_time_ids"]).items()}

    @jax.jit
    def x0_errors(state):
        m = nnx.merge(graphdef, state)
        d = edm.denoise(lambda *a: m(*a), noisy, jnp.repeat(sigmas, 2), twice["cond"], twice["context"],
                        twice["ids"])
        return jnp.sqrt(jnp.mean(((d - x0_twice) ** 2).reshape(2, -1), axis=1)) / scale

    graphdef, trained_state = nnx.split(trained)
    _, random_state = nnx.split(build_unet(unet_cfg, 0))
    trained_err, random_err = np.asarray(x0_errors(trained_state)), np.asarray(x0_errors(random_state))
    copy_err = np.asarray(sigmas) / scale  # D(x) = x: the noise, in the latents' units
    print("x0 error trained", trained_err, "random", random_err, "copy", copy_err)
    assert np.all(trained_err < 0.6 * copy_err), (trained_err, copy_err)
    assert np.all(trained_err < 0.6 * random_err), (trained_err, random_err)
