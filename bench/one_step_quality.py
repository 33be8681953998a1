"""One-step sample quality of trained runs: FVD of 1-step samples against real clips (a proxy on the
bundled videos, not the paper's UCF-101 protocol).

    python bench/one_step_quality.py --runs runs/demo runs/demo_adversarial --clips 32 --out bench/results/one_step.json

For every run (a trainer workdir; its EMA weights): the same `--clips` real clips of its data (fixed
seed) give the conditioning frame, image embedding and time ids; each run samples ONE step from
σ_max = 700 noise (the same noise for every run) and the samples are decoded to frames. FVD (I3D
features, eval/fvd.py) compares the samples with the real clips. The demo's clips are short (8 frames)
for I3D's temporal pooling, so every frame is shown twice (16 frames) — for real and generated alike.
A floor for the comparison: FVD between two disjoint halves of the real clips.

Two pixel statistics beside FVD (32-clip FVD is noisy), each as the ratio generated / real (1 = like the
real clips): sharpness, the mean absolute difference between neighbouring pixels within a frame (a
1-step sample from pure noise that regresses to the mean is blurry: ratio < 1), and motion, the mean
absolute difference between consecutive frames (a frozen or flickering video: ratio < 1 or > 1).
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
from mvd_jax.diffusion import samplers  # noqa: E402
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


def one_step_samples(run: Path, clips, seed: int):
    unet, cfg, step = read_run_unet(run, use_ema=True)
    autoencoder, image_encoder = build_autoencoder(cfg)
    b = clips["video"].shape[0]
    aug = jnp.full((b,), 0.02, jnp.float32)
    keys = jax.random.split(jax.random.key(seed), b)
    batch = encode_clips(autoencoder, image_encoder, jnp.asarray(clips["video"]), jnp.asarray(clips["fps"]),
                         jnp.asarray(clips["motion_bucket_id"]), aug, keys)
    t = cfg.frames
    cond = jnp.repeat(batch["cond_latent"][:, None], t, axis=1)
    noise = jax.random.normal(jax.random.key(seed + 1), batch["latents"].shape)
    graphdef, state = nnx.split(unet)

    @jax.jit
    def sample(state, noise, cond, embeds, ids):
        model = nnx.merge(graphdef, state)
        return samplers.single_step_sample(lambda *a: model(*a), noise, cond, embeds, ids)

    out = []
    for i in range(b):  # one clip at a time: the demo model's activations stay small
        z = sample(state, noise[i:i + 1], cond[i:i + 1], batch["image_embeds"][i:i + 1], batch["added_time_ids"][i:i + 1])
        frames = autoencoder.decode(z[0] / autoencoder.config.scaling_factor, t)
        out.append(to_uint8(frames))
    return np.stack(out), cfg, step


def pixel_statistics(videos: np.ndarray) -> dict:
    """Sharpness and motion (see the module docstring) of uint8 videos (N, T, H, W, 3), in [0, 1] units."""
    x = videos.astype(np.float32) / 255.0
    sharpness = np.abs(np.diff(x, axis=2)).mean() + np.abs(np.diff(x, axis=3)).mean()
    motion = np.abs(np.diff(x, axis=1)).mean()
    return {"sharpness": float(sharpness), "motion": float(motion)}


def doubled(videos: np.ndarray) -> list[np.ndarray]:
    return [np.repeat(v, 2, axis=0) for v in videos]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True)
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
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
    for run in args.runs:
        samples, cfg, step = one_step_samples(Path(run), clips, args.seed)
        fvd = fvd_from_stats(real_stats, extractor.stats(doubled(samples)))
        phase = cfg.train.get("phase", "diffusion")  # runs from before the adversarial phase existed
        ratios = {f"{k}_ratio": v / real_pixels[k] for k, v in pixel_statistics(samples).items()}
        results["runs"][run] = {"phase": phase, "step": int(step), "one_step_fvd": fvd, **ratios}
        print(f"{run} ({phase}, step {step}): 1-step FVD vs real {fvd:.1f}; sharpness / real "
              f"{ratios['sharpness_ratio']:.3f}, motion / real {ratios['motion_ratio']:.3f}")
    if args.out:
        write_json(args.out, results)


if __name__ == "__main__":
    main()
