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

Beside FVD (32-clip FVD is noisy): sharpness and motion as ratios generated / real, and PSNR to the real
clip whose first frame conditioned the sample (mvd_jax/eval/sample_quality.py says what each means).
`--sheet PNG` writes the real clips and every run's samples side by side.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_io import write_json  # noqa: E402
from mvd_jax.eval.fvd import FeatureExtractor, fvd_from_stats  # noqa: E402
from mvd_jax.eval.sample_quality import (contact_sheet, describe, pixel_statistics, real_clips,  # noqa: E402
                                         sample_run, scores, still_video, to_uint8)
from mvd_jax.train.stages import read_run_unet  # noqa: E402


def doubled(videos: np.ndarray) -> list[np.ndarray]:
    return [np.repeat(v, 2, axis=0) for v in videos]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True)
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--videos", default=None,
                        help="where the real clips come from (default: the first run's data; demo:heldout for "
                             "clips no demo run trained on)")
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
    clips = real_clips(first_cfg, args.clips, args.seed, args.videos)
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
        references = {"baseline: first frame held still": still_video(real),
                      "baseline: uniform noise": rng.integers(0, 256, real.shape, dtype=np.uint8)}
        for name, video in references.items():
            entry = {"phase": "reference", "one_step_fvd": fvd_from_stats(real_stats, extractor.stats(doubled(video))),
                     **scores(video[None], real, real_pixels)}
            results["runs"][name] = entry
            print(f"{name}: FVD vs real {entry['one_step_fvd']:.1f}; {describe(entry)}")
    for run in args.runs:
        noise_seeds = [args.seed + 1 + k for k in range(args.noise_seeds)]
        per_seed, cfg, step = sample_run(Path(run), clips, args.seed, noise_seeds, args.steps)
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
