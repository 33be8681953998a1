"""How well distilled tiny decoders copy their teacher, on clips they did not train on.

    python -m mvd_jax.eval.decoder_quality --runs runs/tiny_decoder [runs/tiny_decoder_no_temporal ...] \\
        [--videos demo:heldout] [--clips 8] [--out quality.json]

For each decoder_distill run (train/decoder_distill.py): real clips → the run's teacher encodes them (posterior
mode, × its scaling factor: the UNet's latents) and decodes them (y); the student decodes the same latents,
once with its EMA weights (x) and once as it was initialised (the run's seed, or its init_from), and:

- RMSE(x, y) and PSNR(x, y) (frames in [−1, 1], peak-to-peak 2); `error_reduction` = RMSE at initialisation /
  RMSE trained.
- flicker: the frame-to-frame change the student makes that the teacher does not, RMS of Δx − Δy
  (Δ = frame t+1 − frame t), relative to the teacher's own change RMS(Δy). 0: the student's frames change
  exactly as the teacher's; a per-frame decoder's independent errors raise it even where its PSNR is fine.
- jitter ratio: mean |x(t+1) − 2x(t) + x(t−1)| over the teacher's — the second temporal difference (what
  flicker looks like: a pixel that goes up and back down), > 1 when the student jitters more than the teacher.

Every run is scored on the same clips (the first run's size and `--videos`, default the held-out part of
the bundled clips for demo runs: demo:heldout).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from mvd_jax import settings
from mvd_jax.errors import ArgumentParser, UserError, cli_main


def clip_metrics(x, y) -> dict:
    """The module docstring's metrics of student frames x against teacher frames y, both (N, T, H, W, 3)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    rmse = float(np.sqrt(np.mean((x - y) ** 2)))
    dx, dy = np.diff(x, axis=1), np.diff(y, axis=1)
    ddx, ddy = np.diff(x, 2, axis=1), np.diff(y, 2, axis=1)
    return {"rmse": rmse, "psnr_db": float(10 * np.log10(4.0 / max(rmse ** 2, 1e-20))),
            "flicker": float(np.sqrt(np.mean((dx - dy) ** 2)) / max(np.sqrt(np.mean(dy ** 2)), 1e-12)),
            "jitter_ratio": float(np.mean(np.abs(ddx)) / max(np.mean(np.abs(ddy)), 1e-12)) if x.shape[1] > 2
            else float("nan")}


def score_run(run, clips) -> dict:
    """Metrics of one decoder run, trained and at its initialisation, on `clips` (a loader batch)."""
    from mvd_jax.train.decoder_distill import initial_student, read_run_tiny_autoencoder, student_decode, teacher_batch
    from mvd_jax.train.trainer import build_autoencoder

    student, cfg, step = read_run_tiny_autoencoder(run)
    teacher, _ = build_autoencoder(cfg)
    start = initial_student(cfg, teacher.config, log=lambda *_: None)
    batch = nnx.jit(teacher_batch)(teacher, jnp.asarray(clips["video"]))
    decode = nnx.jit(student_decode)  # one program for both students (same structure)
    y = np.asarray(batch["target"])
    trained = clip_metrics(decode(student, batch["latents"]), y)
    initial = clip_metrics(decode(start, batch["latents"]), y)
    ta = cfg.tiny_autoencoder
    return {"run": str(run), "step": step, "temporal_weight": ta.temporal_weight, "temporal_mixing": ta.temporal_mixing,
            "pixel_loss": ta.pixel_loss, "trained": trained, "initial": initial,
            "error_reduction": initial["rmse"] / max(trained["rmse"], 1e-20)}


def format_table(rows) -> str:
    lines = ["| run | step | temporal weight | PSNR vs teacher (dB) | at init (dB) | error ÷ | flicker | jitter / teacher |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t, i = r["trained"], r["initial"]
        lines.append(f"| {r['run']} | {r['step']} | {r['temporal_weight']:g} | {t['psnr_db']:.2f} | {i['psnr_db']:.2f} | "
                     f"{r['error_reduction']:.1f}× | {t['flicker']:.3f} | {t['jitter_ratio']:.2f} |")
    return "\n".join(lines)


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m mvd_jax.eval.decoder_quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", required=True, help="decoder_distill run directories")
    p.add_argument("--videos", default=None, help="the clips (default: demo:heldout for demo runs, else the "
                                                  "first run's data)")
    p.add_argument("--clips", type=settings.POSITIVE, default=8)
    p.add_argument("--seed", type=settings.SEED, default=0)
    p.add_argument("--out", default=None, help="write the numbers as JSON here")
    return p


@cli_main
def main(argv=None):
    args = parser().parse_args(argv)
    from mvd_jax.eval.sample_quality import real_clips
    from mvd_jax.train.stages import is_run_dir, read_run_config

    for run in args.runs:
        if not is_run_dir(run):
            raise UserError(f"{run} is not a training run directory (no checkpoints/config.json)")
    cfg = read_run_config(args.runs[0])
    videos = args.videos or ("demo:heldout" if str(cfg.data.videos).startswith("demo") else None)
    clips = real_clips(cfg, args.clips, args.seed, videos)
    rows = [score_run(run, clips) for run in args.runs]
    record = {"videos": videos or cfg.data.videos, "clips": args.clips, "frames": cfg.frames,
              "size": [cfg.height, cfg.width], "seed": args.seed, "runs": rows}
    print(f"Tiny decoders vs their teacher on {args.clips} clips of {record['videos']} "
          f"({cfg.frames} frames, {cfg.height}×{cfg.width}):")
    print(format_table(rows))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {args.out}")
    return record


if __name__ == "__main__":
    main(sys.argv[1:])
