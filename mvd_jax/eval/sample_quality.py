"""How good a trained run's samples are, without a pretrained metric network: sample it on real clips'
conditioning and compare with those clips. Used by the main job's report (eval/demo_report.py) and by
bench/one_step_quality.py (which adds FVD).

Pixel statistics, each reported as the ratio generated / real (1 = like the real clips):
- sharpness: mean absolute difference between neighbouring pixels within a frame. Leftover noise makes it
  large (a sample that was never denoised: several × real); a sample that regresses to the mean is
  blurry (< 1).
- motion: mean absolute difference between consecutive frames. A frozen video: ≈ 0; flicker or noise: > 1.
And fidelity to the conditioning: PSNR of each sample against the real clip whose first frame it was
given, over frames 2…T. A blurry copy of the image scores well, so it is read beside sharpness and motion;
the reference point is the first frame held still for every frame (`still_video`).
"""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mvd_jax.data.clips import ClipSpec
from mvd_jax.data.encode import encode_clips
from mvd_jax.data.loader import LoaderOptions, VideoClipLoader
from mvd_jax.data.manifest import read_entries
from mvd_jax.diffusion import edm, samplers


def real_clips(cfg, n: int, seed: int, videos: str | None = None):
    """`n` clips of the run's frame count and size (centre crop, start drawn with `seed`) from `videos`
    (default: the run's own data)."""
    spec = ClipSpec(num_frames=cfg.frames, height=cfg.height, width=cfg.width, fps=cfg.data.fps or None,
                    crop="center", default_motion_bucket_id=cfg.data.motion_bucket_id)
    loader = VideoClipLoader(read_entries(videos or cfg.data.videos), spec,
                             LoaderOptions(batch_size=n, seed=seed, num_epochs=None, num_workers=0))
    return next(iter(loader))


def to_uint8(video) -> np.ndarray:
    return np.asarray(jnp.clip((jnp.asarray(video) + 1) * 127.5 + 0.5, 0, 255)).astype(np.uint8)


def still_video(real: np.ndarray) -> np.ndarray:
    """The model-free reference: each clip's first frame held for every frame."""
    return np.repeat(real[:, :1], real.shape[1], axis=1)


def sample_run(run: Path, clips, seed: int, noise_seeds: list[int], steps: int = 1):
    """uint8 samples (len(noise_seeds), N, T, H, W, 3) of the run's EMA UNet: the conditioning (noise
    augmentation 0.02 of the first frame) from `seed`, the σ_max noise from each noise seed — the same for
    every run. steps = 1: the distilled single step; more: Euler over that many Karras σ levels from σ_max,
    with the run's train.sample_max_guidance_scale (as the trainer's sample videos). Returns (samples, the run's
    config, its step)."""
    from mvd_jax.train.stages import read_run_unet
    from mvd_jax.train.trainer import build_autoencoder

    unet, cfg, step = read_run_unet(run, use_ema=True)
    guidance = float(cfg.train.get("sample_max_guidance_scale", 1.0))  # runs older than the setting: off
    autoencoder, image_encoder = build_autoencoder(cfg)
    b = clips["video"].shape[0]
    aug = jnp.full((b,), 0.02, jnp.float32)
    keys = jax.random.split(jax.random.key(seed), b)
    batch = encode_clips(autoencoder, image_encoder, jnp.asarray(clips["video"]), jnp.asarray(clips["fps"]),
                         jnp.asarray(clips["motion_bucket_id"]), aug, keys)
    t = cfg.frames
    cond = jnp.repeat(batch["cond_latent"][:, None], t, axis=1)
    graphdef, state = nnx.split(unet)

    @jax.jit
    def sample(state, noise, cond, embeds, ids):
        model = nnx.merge(graphdef, state)
        if steps == 1:
            return samplers.single_step_sample(lambda *a: model(*a), noise, cond, embeds, ids)
        return samplers.euler_sample(lambda *a: model(*a), noise, edm.karras_sigmas(steps), cond, embeds, ids,
                                     min_scale=1.0, max_scale=guidance)

    per_seed = []
    for noise_seed in noise_seeds:
        noise = jax.random.normal(jax.random.key(noise_seed), batch["latents"].shape)
        out = []
        for i in range(b):  # one clip at a time: the demo model's activations stay small
            z = sample(state, noise[i:i + 1], cond[i:i + 1], batch["image_embeds"][i:i + 1],
                       batch["added_time_ids"][i:i + 1])
            frames = autoencoder.decode(z[0] / autoencoder.config.scaling_factor, t)
            out.append(to_uint8(frames))
        per_seed.append(np.stack(out))
    return np.stack(per_seed), cfg, step


def pixel_statistics(videos: np.ndarray) -> dict:
    """Sharpness and motion (module docstring) of uint8 videos (N, T, H, W, 3), in [0, 1] units."""
    x = videos.astype(np.float32) / 255.0
    sharpness = np.abs(np.diff(x, axis=2)).mean() + np.abs(np.diff(x, axis=3)).mean()
    motion = np.abs(np.diff(x, axis=1)).mean()
    return {"sharpness": float(sharpness), "motion": float(motion)}


def psnr_to_real(generated: np.ndarray, real: np.ndarray) -> float:
    """generated (draws, N, T, H, W, 3), real (N, T, H, W, 3), uint8. Mean PSNR (dB) of each generated clip
    against the real clip whose first frame conditioned it, over the frames after the first."""
    g = generated[:, :, 1:].astype(np.float64) / 255.0  # (draws, N, T - 1, H, W, 3)
    r = real[None, :, 1:].astype(np.float64) / 255.0
    mse = np.mean((g - r) ** 2, axis=(2, 3, 4, 5))
    return float(np.mean(10 * np.log10(1.0 / np.maximum(mse, 1e-12))))


def scores(draws: np.ndarray, real: np.ndarray, real_pixels: dict) -> dict:
    """Pixel statistics relative to the real clips (over all draws pooled) and PSNR to the real clips, for
    uint8 videos (draws, N, T, H, W, 3)."""
    pooled = draws.reshape(-1, *draws.shape[2:])
    ratios = {f"{k}_ratio": v / real_pixels[k] for k, v in pixel_statistics(pooled).items()}
    return {**ratios, "psnr_to_real_db": psnr_to_real(draws, real)}


def describe(entry: dict) -> str:
    return (f"sharpness / real {entry['sharpness_ratio']:.3f}, motion / real {entry['motion_ratio']:.3f}; "
            f"PSNR to the real clip {entry['psnr_to_real_db']:.2f} dB")


def contact_sheet(rows: list[np.ndarray], path, clips: int = 3, frames: int = 4, gap: int = 2):
    """A PNG: for each clip (up to `clips`), a band holding the first `frames` frames of each of `rows`
    (uint8 videos (N, T, H, W, 3)), one row of frames per video; `gap` white pixels between bands."""
    from PIL import Image

    n = min(clips, min(len(v) for v in rows))
    bands = []
    for c in range(n):
        bands.append(np.concatenate([np.concatenate(list(v[c, :frames]), axis=1) for v in rows], axis=0))
        if c < n - 1:
            bands.append(np.full((gap, bands[-1].shape[1], 3), 255, np.uint8))
    Image.fromarray(np.concatenate(bands, axis=0)).save(path)
