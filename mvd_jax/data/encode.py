"""Clips → what the UNet trains on. One function, used by the latent cache and by training on raw
videos, so both give batches of the same structure and the same numbers:

    latents         (B, T, h, w, C)  VAE posterior mean of every frame × scaling_factor
    cond_latent     (B, h, w, C)     VAE mode of (frame 0 + noise_aug_strength·N(0, I)), NOT scaled
                                     (SVD's convention; the UNet repeats it over frames)
    image_embeds    (B, 1, D)        CLIP image embedding of the clean frame 0 (SVD's preprocessing)
    added_time_ids  (B, 3)           [fps − 1, motion_bucket_id, noise_aug_strength]

The frame latents are the posterior mean, not a sample: deterministic, so a cached clip equals the
same clip encoded on the fly; SVD's VAE posterior std is small next to the diffusion noise added on
top. A cache fixes the conditioning frame's noise augmentation at encoding time (strength and noise
recorded in the batch); a trainer that wants a fresh augmentation per step encodes on the fly.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mvd_jax.models.clip_vision import preprocess_for_clip

ENCODED_KEYS = ("latents", "cond_latent", "image_embeds", "added_time_ids")


def encode_clips(vae, image_encoder, video, fps, motion_bucket_id, noise_aug_strength, keys):
    """video (B, T, H, W, 3) in [−1, 1]; fps, motion_bucket_id, noise_aug_strength (B,); keys (B,): one
    PRNG key per clip for its conditioning-frame noise (so a clip's numbers do not depend on which
    batch it lands in). Returns the dict above."""
    b, t = video.shape[:2]
    scale = vae.config.scaling_factor
    latents = vae.encode_mode(video.reshape(b * t, *video.shape[2:])) * scale
    first = video[:, 0]
    aug = jnp.asarray(noise_aug_strength, video.dtype).reshape(b, 1, 1, 1)
    noise = jax.vmap(lambda k: jax.random.normal(k, first.shape[1:], first.dtype))(keys)
    cond_latent = vae.encode_mode(first + aug * noise)
    image_embeds = image_encoder(preprocess_for_clip(first))[:, None, :]
    ids = jnp.stack([jnp.asarray(fps, jnp.float32) - 1.0, jnp.asarray(motion_bucket_id, jnp.float32),
                     jnp.asarray(noise_aug_strength, jnp.float32)], axis=-1)
    return {"latents": latents.reshape(b, t, *latents.shape[1:]), "cond_latent": cond_latent,
            "image_embeds": image_embeds, "added_time_ids": ids}


class ClipEncoder:
    """`encode_clips` jitted once for a VAE and an image encoder (their weights are arguments, not
    constants, so compiling stays fast for SVD-size models), with each batch split over this host's
    devices (weights replicated; hosts split the work by shards, data/cache.py). Every clip's numbers
    depend on the clip and its key only, so the split changes nothing (tested: 1 vs 2 devices); a batch
    that does not divide over the devices is padded with copies of its last clip, dropped again."""

    def __init__(self, vae, image_encoder, devices=None):
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

        devices = list(jax.local_devices() if devices is None else devices)
        mesh = Mesh(np.asarray(devices), ("data",))
        self.num_devices = len(devices)
        replicated = NamedSharding(mesh, P())

        def split(ndim):
            return NamedSharding(mesh, P("data", *([None] * (ndim - 1))))

        graphdef, state = nnx.split((vae, image_encoder))
        self._state = jax.device_put(state, replicated)

        def run(state, video, fps, motion_bucket_id, noise_aug_strength, keys):
            v, e = nnx.merge(graphdef, state)
            return encode_clips(v, e, video, fps, motion_bucket_id, noise_aug_strength, keys)

        out = {"latents": split(5), "cond_latent": split(4), "image_embeds": split(3), "added_time_ids": split(2)}
        self._run = jax.jit(run, in_shardings=(replicated, split(5), split(1), split(1), split(1), split(1)),
                            out_shardings=out)

    def __call__(self, batch: dict, noise_aug_strength, keys) -> dict:
        """A raw-video batch (data.loader) → the encoded arrays; `keys` (B,) as in encode_clips."""
        b = batch["video"].shape[0]
        pad = -b % self.num_devices

        def padded(x):
            x = jnp.asarray(x)
            return jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)]) if pad else x

        aug = jnp.broadcast_to(jnp.asarray(noise_aug_strength, jnp.float32), (b,))
        out = self._run(self._state, padded(batch["video"]), padded(batch["fps"]), padded(batch["motion_bucket_id"]),
                        padded(aug), padded(keys))
        return {k: v[:b] for k, v in out.items()} if pad else out


def clip_keys(seed: int, clip_ids) -> jax.Array:
    """One key per clip id: fold_in(key(seed), id)."""
    base = jax.random.key(seed)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(clip_ids, jnp.uint32))
