"""Check a video dataset before paying for a pod: which files are usable, why the others are not, and
what the batches look like.

    python -m mvd_jax.data.inspect --videos DIR|MANIFEST|demo --frames 14 --height 256 --width 512 \\
        --fps 7 --batch_size 2 --num_batches 2 [--workers 0] [--seed 0] [--max_files N]

Every file is tried the way training uses it (one clip of the requested length at the requested fps,
from the first frame); then `num_batches` batches come from the real loader (shuffled, random crops).
The last line is exactly `usable=U skipped=S`; the exit code is 1 when no file is usable.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from mvd_jax.errors import UserError, cli_main


@cli_main
def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m mvd_jax.data.inspect", description=__doc__.split("\n")[0])
    p.add_argument("--videos", required=True, help="folder, .csv/.jsonl manifest, or 'demo'")
    p.add_argument("--frames", type=int, default=14)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--fps", type=float, default=7.0, help="clip frame rate; 0 = consecutive source frames")
    p.add_argument("--batch_size", type=int, default=2)
    p.add_argument("--num_batches", type=int, default=2)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max_files", type=int, default=None, help="check only the first N files")
    args = p.parse_args(argv)

    from mvd_jax.data.clips import ClipSpec, load_clip
    from mvd_jax.data.loader import LoaderOptions, VideoClipLoader
    from mvd_jax.data.manifest import read_entries
    from mvd_jax.data.video_decode import VideoReadError

    try:
        spec = ClipSpec(num_frames=args.frames, height=args.height, width=args.width, fps=args.fps or None)
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.batch_size < 1 or args.num_batches < 0:
        raise UserError("batch_size must be ≥ 1 and num_batches ≥ 0")
    entries = read_entries(args.videos)[:args.max_files]

    first_clip = ClipSpec(**{**spec.__dict__, "crop": "center", "random_start": False})
    usable, skipped = [], []
    for entry in entries:
        try:
            load_clip(entry, first_clip, None)
            usable.append(entry)
            print(f"ok    {entry.path}")
        except VideoReadError as e:
            skipped.append((entry.path, e.reason))
            print(f"skip  {entry.path}: {e.reason}")

    if usable and args.num_batches:
        loader = VideoClipLoader(usable, spec, LoaderOptions(batch_size=args.batch_size, seed=args.seed, num_epochs=None,
                                                             num_workers=args.workers, process_index=0,
                                                             process_count=1))
        it = iter(loader)
        for b in range(args.num_batches):
            batch = next(it)
            v = batch["video"]
            print(f"batch {b}: video {v.dtype}{list(v.shape)} range [{v.min():.3f}, {v.max():.3f}], "
                  f"cond_image {list(batch['cond_image'].shape)}, fps {np.asarray(batch['fps']).tolist()}, "
                  f"motion_bucket_id {np.asarray(batch['motion_bucket_id']).tolist()}, "
                  f"start frames {np.asarray(batch['start']).tolist()}")
    print(f"usable={len(usable)} skipped={len(skipped)}")
    if not usable:
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
