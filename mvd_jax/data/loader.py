"""The raw-video input pipeline on Grain: shuffle → decode clips (lazily, in workers) → per-host shard → skip bad
files → batch.

    MapDataset.source(entries).shuffle(seed).random_map(DecodeClip).repeat(epochs)   Grain reshuffles
        and reseeds each epoch (seed ⊕ epoch); a clip's start frame and crop come from a generator seeded
        by (seed, epoch, position), so the same seed gives the same clips with any number of workers
        or hosts (the map is lazy: a host decodes only its own elements);
    HostBlockShard   host p of P takes its contiguous block of every global batch (host_shard.py): the
        hosts' shards are disjoint, their union is the stream, and P hosts assemble exactly the global
        batches one host would;
    .to_iter_dataset().mp_prefetch(workers)   decoding in worker processes;
    .filter(SkipTracker)   in the main process: bad files are dropped, counted and listed;
    .batch(B).map(finish_batch)   uint8 → float32 in [−1, 1]; the conditioning image is frame 0.

Iterator state (Grain's get_state/set_state) restores mid-epoch, so a resumed run sees exactly the
batches an uninterrupted run would. A file that fails (missing, empty, not a video, truncated, too
short for the clip) yields a record marked not-ok instead of an exception, so a worker never dies on
it. If a whole host-epoch's worth of consecutive records is bad, no usable file exists in this host's
shard and the loader stops with an error instead of spinning forever.
"""
from __future__ import annotations

import dataclasses
import math
import os

import grain
import numpy as np

from mvd_jax import storage
from mvd_jax.data.clips import ClipSpec, load_clip, to_model_range
from mvd_jax.data.host_shard import HostBlockShard
from mvd_jax.data.manifest import VideoEntry
from mvd_jax.data.video_decode import VideoReadError
from mvd_jax.errors import UserError

BAD_VIDEOS_FILE = "bad_videos.tsv"


class NoUsableVideosError(UserError):
    """Every video this host was given is unusable."""


@dataclasses.dataclass(frozen=True)
class LoaderOptions:
    batch_size: int = 1  # per host; the global batch is batch_size × process_count
    seed: int = 0
    num_epochs: int | None = 1  # None: repeat forever (training)
    num_workers: int = 0  # decoding processes; 0 decodes in the main process
    shuffle: bool = True
    drop_remainder: bool = True
    process_index: int | None = None  # default: jax.process_index()
    process_count: int | None = None  # default: jax.process_count()
    # Clips decoded ahead (per decoding process) by one background thread. Grain's default read-ahead
    # (16 threads, 500 clips) filled the cores and memory behind the training step's back: 500 SVD-size
    # clips (14×512×256×3 float32) are 11 GB, and on this 2-core machine the threads slowed the first
    # compile 18× (55 s instead of 3 s for the encoder program). None: two batches.
    read_ahead: int | None = None


class DecodeClip:
    """Grain random map: VideoEntry → clip record, or {"ok": False, path, reason} for a bad file."""

    def __init__(self, spec: ClipSpec):
        self.spec = spec

    def __call__(self, entry: VideoEntry, rng: np.random.Generator) -> dict:
        try:
            return {"ok": True, **load_clip(entry, self.spec, rng)}
        except VideoReadError as e:
            return {"ok": False, "path": entry.path, "reason": e.reason}


class SkipTracker:
    """Grain filter that keeps good records and remembers bad files (path → reason), writing them to
    `report_dir/bad_videos.tsv` as they appear."""

    def __init__(self, limit: int, report_dir=None):
        self.limit = max(1, limit)
        self.report_path = storage.path(report_dir) / BAD_VIDEOS_FILE if report_dir else None  # local or gs://
        self.bad: dict[str, str] = {}
        self.usable: set[str] = set()
        self.consecutive_bad = 0

    def __call__(self, record: dict) -> bool:
        if record["ok"]:
            self.consecutive_bad = 0
            self.usable.add(record["path"])
            return True
        self.consecutive_bad += 1
        if record["path"] not in self.bad:
            self.bad[record["path"]] = record["reason"]
            if self.report_path is not None:
                storage.append_text(self.report_path, f"{record['path']}\t{record['reason']}\n")
        if self.consecutive_bad >= self.limit:
            raise NoUsableVideosError(
                f"no usable video: the last {self.consecutive_bad} records all failed "
                f"({len(self.bad)} bad files, e.g. {next(iter(self.bad))}: {next(iter(self.bad.values()))})")
        return False

    def summary(self) -> str:
        reasons: dict[str, int] = {}
        for r in self.bad.values():
            key = r.split(":")[0].split(" (")[0]
            reasons[key] = reasons.get(key, 0) + 1
        detail = "; ".join(f"{n}× {r}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
        return f"{len(self.usable)} usable, {len(self.bad)} skipped video files" + (f" ({detail})" if detail else "")


def finish_batch(batch: dict) -> dict:
    """Batched clip records → model-facing arrays: video float32 (B, T, H, W, 3) in [−1, 1] and the
    conditioning image (B, H, W, 3) = frame 0; the bookkeeping fields pass through."""
    out = {k: v for k, v in batch.items() if k != "ok"}
    out["video"] = to_model_range(batch["video"])
    out["cond_image"] = out["video"][:, 0]
    return out


def _host(options: LoaderOptions) -> tuple[int, int]:
    if options.process_index is not None and options.process_count is not None:
        index, count = options.process_index, options.process_count
    else:
        import jax

        index, count = jax.process_index(), jax.process_count()
    if not 0 <= index < count:
        raise ValueError(f"process_index {index} outside 0…{count - 1}")
    return index, count


class VideoClipLoader:
    """Batches of training clips from video entries. `iter(loader)` gives a Grain DatasetIterator
    (get_state / set_state); `loader.skips` tracks bad files across iterators."""

    def __init__(self, entries: list[VideoEntry], spec: ClipSpec, options: LoaderOptions, report_dir=None):
        if not entries:
            raise UserError("no videos to load")
        index, count = _host(options)
        if len(entries) < count:
            raise UserError(f"{len(entries)} videos cannot be split over {count} hosts")
        self.entries, self.spec, self.options = list(entries), spec, options
        self.host_entries = math.ceil(len(entries) / count)
        self.skips = SkipTracker(self.host_entries, report_dir)
        ds = grain.MapDataset.source(self.entries)
        if options.shuffle:
            ds = ds.shuffle(seed=options.seed)
        ds = ds.random_map(DecodeClip(spec), seed=options.seed).repeat(options.num_epochs)
        ds = HostBlockShard(ds, block=options.batch_size, process_index=index, process_count=count)
        ahead = 2 * options.batch_size if options.read_ahead is None else options.read_ahead
        it = ds.to_iter_dataset(grain.ReadOptions(num_threads=1 if ahead > 0 else 0, prefetch_buffer_size=max(ahead, 1)))
        if options.num_workers > 0:
            _ensure_absl_flags_parsed()
            it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=options.num_workers))
        it = it.filter(self.skips)
        it = it.batch(options.batch_size, drop_remainder=options.drop_remainder)
        self.dataset = it.map(finish_batch)

    def __iter__(self):
        return iter(self.dataset)


def _ensure_absl_flags_parsed():
    """Grain's worker processes read absl flags (google/grain#1355); outside `absl.app.run` (a library
    call, pytest) they are unparsed and Grain raises. Marking them parsed keeps every default."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def default_num_workers() -> int:
    """One decoding process per core but one (the main process batches and feeds the devices)."""
    return max(0, (os.cpu_count() or 1) - 1)
