"""A parameter-free stand-in for SVD's VAE: space-to-depth "latents" (pixel unshuffle by `factor`).

The demo and the tests train on a machine that cannot download SVD's VAE, so their diffusion model
works on exactly invertible pixel blocks: a frame (H, W, 3) becomes latents (H/f, W/f, 3·f²) and back.
It has the VAE's interface (`encode_mode`, `encode_moments`, `decode`, `config.scaling_factor`,
`config.downsampling_factor`), so the data encoder, the trainer and the samplers use it unchanged, and
a real run swaps in the SVD VAE by configuration. Values stay in [−1, 1]; the data encoder multiplies them by
`scaling_factor` (autoencoder.pixel_scaling_factor, default 1) as it does SVD's latents.

With a `basis` (autoencoder.pixel_basis: a .npz fitted on training clips by data/pixel_basis.py) each block's
3·f² pixels become their whitened principal components, largest first: z = (v − mean) @ encode, v = z @ decode
+ mean, with encode = U·Λ^(−1/2) and decode its inverse; with `channels` k < 3·f² only the first k are kept
(a linear autoencoder: decode(encode(v)) is v's projection on them, the best k-dimensional one in squared
error). Every latent channel has spread 1 and no correlation with the others, which is what EDM's
preconditioning assumes (one σ_data for every direction). On raw blocks the directions of fine detail have a
spread ~700× below the block mean's, so at σ ≈ 0.2–1 the UNet's skip path c_skip·x hands their noise back
and the network must cancel it exactly; the demo's small UNet never did (its 12-step samples kept the
sampler's noise: issue 26). The demo keeps 12 of 48 (34 dB reconstruction on its held-out clips).
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from flax import nnx


@dataclasses.dataclass(frozen=True)
class PixelAutoencoderConfig:
    factor: int = 4
    scaling_factor: float = 1.0
    channels: int = 0  # latent channels: 0 = all 3·f²; fewer keeps the basis's first `channels` components

    def __post_init__(self):
        if not 0 <= self.channels <= 3 * self.factor ** 2:
            raise ValueError(f"pixel autoencoder channels must be in 0…{3 * self.factor ** 2} (0: all), "
                             f"got {self.channels}")

    @property
    def downsampling_factor(self) -> int:
        return self.factor

    @property
    def latent_channels(self) -> int:
        return self.channels or 3 * self.factor ** 2


BASIS_KEYS = ("mean", "encode", "decode")


class PixelBasis(nnx.Variable):
    """A fixed array of the whitening basis: state (so it is an argument of compiled programs and a weight of
    exported graphs, not a traced constant), but not an nnx.Param, so no optimizer ever sees it."""


def check_basis(basis: dict, factor: int) -> dict:
    """The basis arrays as float32 NumPy, their shapes checked against the factor (3·f² per block)."""
    n = 3 * factor ** 2
    missing = [k for k in BASIS_KEYS if k not in basis]
    if missing:
        raise ValueError(f"a pixel basis needs arrays {BASIS_KEYS}; missing {missing}")
    out = {k: np.asarray(basis[k], np.float32) for k in BASIS_KEYS}
    want = {"mean": (n,), "encode": (n, n), "decode": (n, n)}
    bad = {k: out[k].shape for k in BASIS_KEYS if out[k].shape != want[k]}
    if bad:
        raise ValueError(f"pixel basis shapes {bad} do not fit factor {factor} (expected {want})")
    return out


class PixelAutoencoder(nnx.Module):
    def __init__(self, config: PixelAutoencoderConfig = PixelAutoencoderConfig(), basis: dict | None = None):
        self.config = config
        if basis is None:
            if config.latent_channels < 3 * config.factor ** 2:
                raise ValueError(f"{config.channels} of {3 * config.factor ** 2} channels need a basis to choose them")
            self.basis = None
        else:
            b, k = check_basis(basis, config.factor), config.latent_channels
            b = {"mean": b["mean"], "encode": b["encode"][:, :k], "decode": b["decode"][:k]}
            self.basis = nnx.Dict({name: PixelBasis(jnp.asarray(v)) for name, v in b.items()})

    def encode_moments(self, images):
        n, h, w, c = images.shape
        f = self.config.factor
        if h % f or w % f:
            raise ValueError(f"image size {h}×{w} is not a multiple of the pixel factor {f}")
        z = images.reshape(n, h // f, f, w // f, f, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, h // f, w // f, f * f * c)
        if self.basis is not None:
            z = (z - self.basis["mean"][...].astype(z.dtype)) @ self.basis["encode"][...].astype(z.dtype)
        return z, jnp.full_like(z, -30.0)  # a point mass: the encoding is exact

    def encode_mode(self, images):
        return self.encode_moments(images)[0]

    def decode(self, z, num_frames: int | None = None):
        del num_frames  # no temporal layers
        n, h, w, _ = z.shape
        f = self.config.factor
        c = 3
        if self.basis is not None:
            z = z @ self.basis["decode"][...].astype(z.dtype) + self.basis["mean"][...].astype(z.dtype)
        return z.reshape(n, h, w, f, f, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, h * f, w * f, c)
