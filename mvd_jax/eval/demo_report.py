"""What the main job's models make, in one picture and one table: the multi-step sample of a diffusion
run and the 1-step sample of its adversarial finetune, on clips neither trained on, beside the real clips.

    python -m mvd_jax.eval.demo_report --multi_step runs/demo --one_step runs/demo_adversarial \
        --out runs/demo_adversarial/report

Both runs sample the same clips' conditioning (first frame, image embedding, time ids) from the same σ_max
noise; the multi-step run with Euler over its config's `train.sample_steps` levels (as its sample video),
the other in one step. Writes OUT/contact_sheet.png (per clip: the real clip, the multi-step sample, the
1-step sample — a few frames each, evenly spaced) and OUT/quality.json (eval/sample_quality.py's metrics
for each, the first-frame-held-still reference, and the checks below), and prints them.

The checks (what "it works" means for the demo, issue 26): PSNR to the real clip at least the still
reference's minus 1 dB, sharpness 0.7–1.3× real (no leftover noise, not a blur), motion ≥ 0.3× real (not
frozen). Clips come from `--videos`; by default the held-out part of the run's data when it is the demo's
training part (demo:train → demo:heldout), else the run's own data (then they are not held out, and the
report says so).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from mvd_jax.errors import UserError, cli_main

CHECKS = {"psnr_margin_db": 1.0, "sharpness_range": (0.7, 1.3), "min_motion_ratio": 0.3}


def held_out_source(videos: str) -> tuple[str, bool]:
    """(where the report's clips come from, whether the run never trained on them)."""
    if videos == "demo:train":
        return "demo:heldout", True
    return videos, False


def check(entry: dict, still: dict) -> dict:
    lo, hi = CHECKS["sharpness_range"]
    return {"psnr": entry["psnr_to_real_db"] >= still["psnr_to_real_db"] - CHECKS["psnr_margin_db"],
            "sharpness": lo <= entry["sharpness_ratio"] <= hi,
            "motion": entry["motion_ratio"] >= CHECKS["min_motion_ratio"]}


def evenly_spaced(videos: np.ndarray, k: int) -> np.ndarray:
    """k frames of each video (N, T, …), first and last included."""
    idx = np.unique(np.round(np.linspace(0, videos.shape[1] - 1, k)).astype(int))
    return videos[:, idx]


def report(multi_step: Path, one_step: Path, out: Path, *, clips: int = 8, seed: int = 0,
           videos: str | None = None, sheet_clips: int = 4, sheet_frames: int = 4) -> dict:
    from mvd_jax.eval import sample_quality as q
    from mvd_jax.train.stages import is_run_dir, read_run_config

    for run in (multi_step, one_step):
        if not is_run_dir(run):
            raise UserError(f"{run} is not a trainer workdir (no checkpoints/config.json)")
    cfg = read_run_config(multi_step)
    source, held_out = (videos, videos != cfg.data.videos) if videos else held_out_source(cfg.data.videos)
    data = q.real_clips(cfg, clips, seed, source)
    real = q.to_uint8(data["video"])
    real_pixels = q.pixel_statistics(real)
    still = q.scores(q.still_video(real)[None], real, real_pixels)
    steps = int(cfg.train.sample_steps)
    guidance = float(cfg.train.get("sample_max_guidance_scale", 1.0))
    multi = f"{steps}-step sample" + (f", guidance 1→{guidance:g}" if guidance > 1 else "")
    rows = {"real clip": real}
    results = {"clips": int(len(real)), "frames": int(real.shape[1]), "size": list(real.shape[2:4]),
               "videos": source, "held_out": held_out, "seed": seed, "checks": CHECKS,
               "real_pixel_statistics": real_pixels, "first frame held still": still, "samples": {}}
    for name, run, n in ((multi, multi_step, steps), ("1-step sample", one_step, 1)):
        draws, run_cfg, step = q.sample_run(run, data, seed, [seed + 1], n)
        entry = {"run": str(run), "step": int(step), "sampling_steps": n, **q.scores(draws, real, real_pixels)}
        entry["passes"] = check(entry, still)
        results["samples"][name] = entry
        rows[name] = draws[0]
    out.mkdir(parents=True, exist_ok=True)
    sheet = out / "contact_sheet.png"
    q.contact_sheet([evenly_spaced(v, sheet_frames) for v in rows.values()], sheet, clips=sheet_clips,
                    frames=sheet_frames)
    results["contact_sheet"] = str(sheet)
    results["contact_sheet_rows"] = list(rows)
    (out / "quality.json").write_text(json.dumps(results, indent=1) + "\n")
    return results


def table(results: dict) -> str:
    where = f"{results['clips']} {'held-out' if results['held_out'] else 'training'} clips of {results['videos']}"
    lines = [f"Sample quality on {where} ({results['frames']} frames, {results['size'][0]}×{results['size'][1]}):",
             "| | PSNR to real (dB) | sharpness / real | motion / real | checks |", "|---|---|---|---|---|"]
    still = results["first frame held still"]
    lines.append(f"| first frame held still | {still['psnr_to_real_db']:.2f} | {still['sharpness_ratio']:.2f} | "
                 f"{still['motion_ratio']:.2f} | reference |")
    for name, e in results["samples"].items():
        failed = [k for k, ok in e["passes"].items() if not ok]
        lines.append(f"| {name} ({e['run']}, step {e['step']}) | {e['psnr_to_real_db']:.2f} | "
                     f"{e['sharpness_ratio']:.2f} | {e['motion_ratio']:.2f} | "
                     f"{'pass' if not failed else 'FAIL: ' + ', '.join(failed)} |")
    lo, hi = CHECKS["sharpness_range"]
    lines.append(f"checks: PSNR ≥ still − {CHECKS['psnr_margin_db']:g} dB, sharpness {lo}–{hi}× real, "
                 f"motion ≥ {CHECKS['min_motion_ratio']}× real")
    return "\n".join(lines)


@cli_main
def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m mvd_jax.eval.demo_report", description=__doc__.split("\n\n")[0])
    p.add_argument("--multi_step", required=True, help="a diffusion run's workdir (sampled with Euler)")
    p.add_argument("--one_step", required=True, help="an adversarial run's workdir (sampled in one step)")
    p.add_argument("--out", required=True, help="folder for contact_sheet.png and quality.json")
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--videos", default=None, help="where the real clips come from (default: see above)")
    args = p.parse_args(argv)
    if args.clips < 1:
        raise UserError(f"--clips must be ≥ 1, got {args.clips}")
    results = report(Path(args.multi_step), Path(args.one_step), Path(args.out), clips=args.clips,
                     seed=args.seed, videos=args.videos)
    print(table(results))
    print(f"contact sheet (rows per clip: {', '.join(results['contact_sheet_rows'])}): {results['contact_sheet']}")


if __name__ == "__main__":
    main(sys.argv[1:])
