"""Sample quality of trained runs: FVD of 1-step (with --steps N: N-step Euler) samples against real clips
(a proxy on the bundled videos, not the paper's UCF-101 protocol).

    python bench/one_step_quality.py --runs runs/demo runs/demo_adversarial --clips 32 --noise-seeds 3 \
        --out bench/results/one_step.json --sheet bench/results/one_step.png

For every run (a trainer workdir; its EMA weights): the same `--clips` real clips of its data (fixed
seed) give the conditioning frame, image embedding and time ids; each run samples ONE step from
σ_max = 700 noise (the same noise for every run) and the samples are decoded to frames. FVD (I3D
features, eval/fvd.py) compares the samples with the real clips. The demo's clips are short (8 frames)
for I3D's temporal pooling, so every frame is shown twice (16 frames) — for real and generated alike.
A floor for the comparison: FVD between two disjoint halves of the real clips. `--noise-seeds K` samples
every run with K different σ_max noise draws (the same draws for every run) and reports FVD per draw,
their mean ± standard deviation — how much of a difference between runs is the metric's own noise — and
the FVD of all K·clips samples pooled against the real clips.

Two pixel statistics beside FVD (32-clip FVD is noisy), each as the ratio generated / real (1 = like the
real clips): sharpness, the mean absolute difference between neighbouring pixels within a frame (a
1-step sample from pure noise that regresses to the mean is blurry: ratio < 1), and motion, the mean
absolute difference between consecutive frames (a frozen or flickering video: ratio < 1 or > 1).
And fidelity to the conditioning: PSNR of each sample against the real clip whose first frame it was
given (frames 2…T). `--sheet PNG` writes the real clips and every run's samples side by side.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_io import write_json  # noqa: E402
from mvd_jax.data.clips import ClipSpec  # noqa: E402
from mvd_jax.data.encode import encode_clips  # noqa: E402
from mvd_jax.data.loader import LoaderOptions, VideoClipLoader  # noqa: E402
from mvd_jax.data.manifest import read_entries  # noqa: E402
from mvd_jax.diffusion import edm, samplers  # noqa: E402
from mvd_jax.eval.fvd import FeatureExtractor, fvd_from_stats  # noqa: E402
from mvd_jax.train.stages import read_run_unet  # noqa: E402
from mvd_jax.train.trainer import build_autoencoder  # noqa: E402


def real_clips(cfg, n: int, seed: int):
    spec = ClipSpec(num_frames=cfg.frames, height=cfg.height, width=cfg.width, fps=cfg.data.fps or None,
                    crop="center", default_motion_bucket_id=cfg.data.motion_bucket_id)
    loader = VideoClipLoader(read_entries(cfg.data.videos), spec,
                             LoaderOptions(batch_size=n, seed=seed, num_epochs=None, num_workers=0))
    return next(iter(loader))


def to_uint8(video) -> np.ndarray:
    return np.asarray(jnp.clip((jnp.asarray(video) + 1) * 127.5 + 0.5, 0, 255)).astype(np.uint8)


def one_step_samples(run: Path, clips, seed: int, noise_seeds: list[int], steps: int = 1):
    """uint8 samples (len(noise_seeds), N, T, H, W, 3): the conditioning (noise augmentation of the first
    frame) from `seed`, the σ_max noise from each noise seed — the same for every run. steps = 1: the
    distilled single step; more: Euler over that many Karras σ levels from σ_max, guidance off (the
    trainer's sample videos)."""
    unet, cfg, step = read_run_unet(run, use_ema=True)
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
                                     min_scale=1.0, max_scale=1.0)

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
    """Sharpness and motion (see the module docstring) of uint8 videos (N, T, H, W, 3), in [0, 1] units."""
    x = videos.astype(np.float32) / 255.0
    sharpness = np.abs(np.diff(x, axis=2)).mean() + np.abs(np.diff(x, axis=3)).mean()
    motion = np.abs(np.diff(x, axis=1)).mean()
    return {"sharpness": float(sharpness), "motion": float(motion)}


def psnr_to_real(generated: np.ndarray, real: np.ndarray) -> float:
    """generated (draws, N, T, H, W, 3), real (N, T, H, W, 3), uint8. Mean PSNR (dB) of each generated clip
    against the real clip whose first frame conditioned it, over the frames after the first: image-to-video
    fidelity (a sample that ignores the image, e.g. noise,
    scores low; a blurry copy of the image scores well, so read it beside sharpness and motion)."""
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


def contact_sheet(rows: list[np.ndarray], path: str, clips: int = 3, frames: int = 4):
    """A PNG: for each of `rows` (uint8 videos (N, T, H, W, 3)) its first `clips` clips side by side, each
    as its first `frames` frames; one band of rows per clip."""
    from PIL import Image

    bands = [np.concatenate([np.concatenate(list(v[c, :frames]), axis=1) for v in rows], axis=0)
             for c in range(min(clips, min(len(v) for v in rows)))]
    Image.fromarray(np.concatenate(bands, axis=0)).save(path)


def doubled(videos: np.ndarray) -> list[np.ndarray]:
    return [np.repeat(v, 2, axis=0) for v in videos]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True)
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise-seeds", type=int, default=1,
                        help="sample each run with this many σ_max noise draws (seeds seed+1, seed+2, …; the same for "
                             "every run): FVD per draw (mean ± std: the metric's own noise) and of all draws pooled")
    parser.add_argument("--steps", type=int, default=1,
                        help="sampling steps: 1 the distilled single step, more Euler from σ_max (guidance off)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--baselines", action="store_true",
                        help="also score two model-free references: the conditioning frame held still for every "
                             "frame, and uniform noise — what the metrics say of a video without motion or image")
    parser.add_argument("--sheet", default=None,
                        help="write a PNG contact sheet: per clip, the real clip then each run's first-draw sample")
    args = parser.parse_args()

    first_cfg = read_run_unet(args.runs[0])[1]
    clips = real_clips(first_cfg, args.clips, args.seed)
    real = to_uint8(clips["video"])
    extractor = FeatureExtractor(batch_size=8)
    real_stats = extractor.stats(doubled(real))
    half = len(real) // 2
    floor = fvd_from_stats(extractor.stats(doubled(real[:half])), extractor.stats(doubled(real[half:])))
    real_pixels = pixel_statistics(real)
    results = {"clips": int(len(real)), "frames": int(real.shape[1]), "size": list(real.shape[2:4]),
               "real_half_vs_half_fvd": floor, "real_pixel_statistics": real_pixels, "runs": {}}
    print(f"{len(real)} real clips of {real.shape[1]} frames at {real.shape[2]}×{real.shape[3]}; "
          f"FVD real half vs half (floor): {floor:.1f}")
    sheet_rows = [real]
    if args.baselines:
        rng = np.random.default_rng(args.seed)
        references = {"baseline: first frame held still": np.repeat(real[:, :1], real.shape[1], axis=1),
                      "baseline: uniform noise": rng.integers(0, 256, real.shape, dtype=np.uint8)}
        for name, video in references.items():
            entry = {"phase": "reference", "one_step_fvd": fvd_from_stats(real_stats, extractor.stats(doubled(video))),
                     **scores(video[None], real, real_pixels)}
            results["runs"][name] = entry
            print(f"{name}: FVD vs real {entry['one_step_fvd']:.1f}; {describe(entry)}")
    for run in args.runs:
        noise_seeds = [args.seed + 1 + k for k in range(args.noise_seeds)]
        per_seed, cfg, step = one_step_samples(Path(run), clips, args.seed, noise_seeds, args.steps)
        fvds = [fvd_from_stats(real_stats, extractor.stats(doubled(s))) for s in per_seed]
        phase = cfg.train.get("phase", "diffusion")  # runs from before the adversarial phase existed
        sheet_rows.append(per_seed[0])
        entry = {"phase": phase, "step": int(step), "sampling_steps": args.steps,
                 "one_step_fvd": float(np.mean(fvds)),
                 **scores(per_seed, real, real_pixels)}
        spread = ""
        if len(fvds) > 1:
            pooled = per_seed.reshape(-1, *per_seed.shape[2:])
            entry.update(one_step_fvd_per_noise_seed=fvds, one_step_fvd_std=float(np.std(fvds, ddof=1)),
                         one_step_fvd_pooled=fvd_from_stats(real_stats, extractor.stats(doubled(pooled))))
            spread = (f" ± {entry['one_step_fvd_std']:.1f} over {len(fvds)} noise draws "
                      f"(pooled {entry['one_step_fvd_pooled']:.1f})")
        results["runs"][run] = entry
        print(f"{run} ({phase}, step {step}): {args.steps}-step FVD vs real {entry['one_step_fvd']:.1f}{spread}; "
              f"{describe(entry)}")
    if args.sheet:
        contact_sheet(sheet_rows, args.sheet)
    if args.out:
        write_json(args.out, results)


if __name__ == "__main__":
    main()
