"""Fit the whitening basis of the pixel autoencoder's blocks (models/pixel_autoencoder.py, autoencoder.pixel_basis):
the principal components of the f×f×3 pixel blocks of training clips, each scaled to spread 1.

    python -m mvd_jax.data.pixel_basis --videos demo:train --out configs/demo_pixel_basis.npz

Writes a .npz with `mean` (3·f²,), `encode` (3·f², 3·f²) = U·Λ^(−1/2) and `decode` = Λ^(1/2)·Uᵀ (its exact
inverse), where U, Λ are the eigenvectors and eigenvalues of the blocks' covariance (float64, largest first),
plus `std` (the components' spreads, √Λ) and the fit's settings. Eigenvalues below `min_std`² are raised to it:
uint8 video has no detail below its quantisation step (2/255 in [−1, 1] units, spread ≈ 0.0023), and an
unfloored direction of spread ~1e-4 would turn that rounding noise into a unit-spread latent channel.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from mvd_jax.errors import UserError, cli_main


def block_vectors(videos: np.ndarray, factor: int) -> np.ndarray:
    """(…, H, W, 3) frames → (n, 3·f²) pixel blocks in the pixel autoencoder's channel order (y, x, colour)."""
    *_, h, w, c = videos.shape
    if h % factor or w % factor:
        raise UserError(f"frame size {h}×{w} is not a multiple of the pixel factor {factor}")
    x = np.asarray(videos, np.float64).reshape(-1, h // factor, factor, w // factor, factor, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, factor * factor * c)


def fit_basis(blocks: np.ndarray, min_std: float = 0.002) -> dict:
    """The whitening basis of `blocks` (n, d) (module docstring)."""
    if blocks.shape[0] <= blocks.shape[1]:
        raise UserError(f"{blocks.shape[0]} blocks cannot fit a basis of {blocks.shape[1]} directions")
    mean = blocks.mean(axis=0)
    cov = np.cov(blocks - mean, rowvar=False)
    eigvals, u = np.linalg.eigh(cov)  # ascending
    order = np.argsort(eigvals)[::-1]
    std = np.sqrt(np.maximum(eigvals[order], min_std ** 2))
    u = u[:, order]
    return {"mean": mean, "encode": u / std[None, :], "decode": std[:, None] * u.T, "std": std}


def clips_for_fit(videos: str, *, clips: int, frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """`clips` clips (random crops and starts) of `videos` in [−1, 1], as the trainer's loader makes them."""
    from mvd_jax.data.clips import ClipSpec
    from mvd_jax.data.loader import LoaderOptions, VideoClipLoader
    from mvd_jax.data.manifest import read_entries

    spec = ClipSpec(num_frames=frames, height=height, width=width, crop="random")
    loader = VideoClipLoader(read_entries(videos), spec,
                             LoaderOptions(batch_size=clips, seed=seed, num_epochs=None, num_workers=0))
    return np.asarray(next(iter(loader))["video"])


@cli_main
def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m mvd_jax.data.pixel_basis", description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", required=True, help="a manifest or the bundled demo:train")
    p.add_argument("--out", required=True, help="the .npz to write (autoencoder.pixel_basis)")
    p.add_argument("--factor", type=int, default=4)
    p.add_argument("--clips", type=int, default=64)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min_std", type=float, default=0.002)
    args = p.parse_args(argv)
    if min(args.factor, args.clips, args.frames, args.height, args.width) < 1 or args.min_std <= 0:
        raise UserError("--factor/--clips/--frames/--height/--width must be ≥ 1 and --min_std > 0")
    video = clips_for_fit(args.videos, clips=args.clips, frames=args.frames, height=args.height, width=args.width,
                          seed=args.seed)
    blocks = block_vectors(video, args.factor)
    basis = fit_basis(blocks, args.min_std)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, **{k: v.astype(np.float32) for k, v in basis.items()}, factor=args.factor,
             videos=args.videos, clips=args.clips, frames=args.frames, height=args.height, width=args.width,
             seed=args.seed, min_std=args.min_std)
    print(f"{len(blocks)} blocks of {blocks.shape[1]} pixels; component spreads {basis['std'][0]:.3f} … "
          f"{basis['std'][-1]:.4f} (min_std {args.min_std}); wrote {args.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
