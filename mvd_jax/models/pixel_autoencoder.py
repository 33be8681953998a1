"""A parameter-free stand-in for SVD's VAE: space-to-depth "latents" (pixel unshuffle by `factor`).

The demo and the tests train on a machine that cannot download SVD's VAE, so their diffusion model
works on exactly invertible pixel blocks: a frame (H, W, 3) becomes latents (H/f, W/f, 3·f²) and back.
It has the VAE's interface (`encode_mode`, `encode_moments`, `decode`, `config.scaling_factor`,
`config.downsampling_factor`), so the data encoder, the trainer and the samplers use it unchanged, and
a real run swaps in the SVD VAE by configuration. Values stay in [−1, 1]; the data encoder multiplies them by
`scaling_factor` (autoencoder.pixel_scaling_factor, default 1) as it does SVD's latents.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import nnx


@dataclasses.dataclass(frozen=True)
class PixelAutoencoderConfig:
    factor: int = 4
    scaling_factor: float = 1.0

    @property
    def downsampling_factor(self) -> int:
        return self.factor

    @property
    def latent_channels(self) -> int:
        return 3 * self.factor ** 2


class PixelAutoencoder(nnx.Module):
    def __init__(self, config: PixelAutoencoderConfig = PixelAutoencoderConfig()):
        self.config = config

    def encode_moments(self, images):
        n, h, w, c = images.shape
        f = self.config.factor
        if h % f or w % f:
            raise ValueError(f"image size {h}×{w} is not a multiple of the pixel factor {f}")
        z = images.reshape(n, h // f, f, w // f, f, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, h // f, w // f, f * f * c)
        return z, jnp.full_like(z, -30.0)  # a point mass: the encoding is exact

    def encode_mode(self, images):
        return self.encode_moments(images)[0]

    def decode(self, z, num_frames: int | None = None):
        del num_frames  # no temporal layers
        n, h, w, cf = z.shape
        f = self.config.factor
        c = cf // (f * f)
        return z.reshape(n, h, w, f, f, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, h * f, w * f, c)
