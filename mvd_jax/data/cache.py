"""The latent cache: encode training clips once (VAE latents, conditioning latent, CLIP embedding) into
ArrayRecord shards that Grain reads, so training reads small arrays instead of decoding mp4s.

    python -m mvd_jax.data.cache --videos DIR|MANIFEST|demo --checkpoint SVD_DIR --out CACHE_DIR \\
        [--config configs/x.py] [--frames 14 --height 256 --width 512 --fps 7] [--clips_per_video 1] \\
        [--shard_size 64] [--batch_size 4] [--noise_aug_strength 0.02] [--seed 0] [--workers N]

Work plan (deterministic, the same on every host): clip c = video i, draw k (c = i·K + k); its start
frame and crop come from a generator seeded with (seed, i, k) and its conditioning noise from
fold_in(seed, c). Clips are grouped in order into shards of `shard_size`; shard s belongs to host
s mod process_count. A shard is written to a temporary name, renamed when complete, and then its
sidecar JSON (clip ids written, files skipped with reasons) appears: a shard with a sidecar is done.
A restarted run skips finished shards and redoes unfinished ones from scratch, so nothing is duplicated
or lost and the contents equal an uninterrupted run's. `cache_config.json` pins the settings: resuming
with different settings is refused. When every shard is done, `manifest.json` lists them.

Records are msgpack maps of arrays (flax.serialization; no pickle): latents (T, h, w, C) scaled,
cond_latent (h, w, C), image_embeds (1, D), added_time_ids (3,), plus clip id, path and start frame.
`CachedClipLoader` reads them back into batches with the same keys as `data.encode` gives on the fly.

A finished cache may be read from a bucket (`data.cache=gs://bucket/cache`: ArrayRecord opens gs://
shards itself, the manifest is read through mvd_jax/storage.py). It is written to local disk (the
ArrayRecord writer has no gs:// support) and copied up whole, e.g. `gcloud storage cp -r CACHE gs://…`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

import grain
import numpy as np

from mvd_jax import storage
from mvd_jax.data.clips import ClipSpec, load_clip, to_model_range
from mvd_jax.data.encode import ENCODED_KEYS
from mvd_jax.data.host_shard import HostBlockShard
from mvd_jax.data.manifest import VideoEntry, read_entries
from mvd_jax.data.video_decode import VideoReadError
from mvd_jax.errors import UserError, cli_main

CONFIG_FILE = "cache_config.json"
MANIFEST_FILE = "manifest.json"


@dataclasses.dataclass(frozen=True)
class CacheSettings:
    num_frames: int = 14
    height: int = 256
    width: int = 512
    fps: float | None = 7.0
    clips_per_video: int = 1
    shard_size: int = 64
    noise_aug_strength: float = 0.02
    seed: int = 0
    crop: str = "random"

    def clip_spec(self) -> ClipSpec:
        return ClipSpec(num_frames=self.num_frames, height=self.height, width=self.width, fps=self.fps,
                        crop=self.crop, random_start=True)


def shard_name(s: int, n: int) -> str:
    return f"shard-{s:05d}-of-{n:05d}.array_record"


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def shard_clips(num_videos: int, settings: CacheSettings) -> list[list[int]]:
    """Clip ids of each shard, in order."""
    total = num_videos * settings.clips_per_video
    return [list(range(a, min(a + settings.shard_size, total))) for a in range(0, total, settings.shard_size)]


def _load(args):
    """Worker: (entry, spec, seed, clip id, clips per video) → clip record or (path, reason)."""
    entry, spec, seed, clip, k_per = args
    rng = np.random.default_rng([seed, clip // k_per, clip % k_per])
    try:
        return load_clip(entry, spec, rng)
    except VideoReadError as e:
        return (e.path, e.reason)


def _serialize(record: dict) -> bytes:
    from flax import serialization

    return serialization.msgpack_serialize(record)


def deserialize(data: bytes) -> dict:
    from flax import serialization

    return serialization.msgpack_restore(data)


def check_local_output(out_dir):
    if storage.is_remote(out_dir):
        raise UserError(f"--out {out_dir}: the cache is written to a local folder (ArrayRecord cannot write to a "
                        "bucket); copy the finished folder up, e.g. `gcloud storage cp -r CACHE gs://…`, and "
                        "train with data.cache=gs://…")


class CacheWriter:
    def __init__(self, entries: list[VideoEntry], encoder, out_dir, settings: CacheSettings, *, batch_size: int = 4,
                 workers: int = 0, process_index: int = 0, process_count: int = 1, log=print):
        self.entries, self.encoder, self.settings = entries, encoder, settings
        check_local_output(out_dir)
        self.out = Path(out_dir)
        self.batch_size, self.workers, self.log = batch_size, workers, log
        self.process_index, self.process_count = process_index, process_count
        self.shards = shard_clips(len(entries), settings)

    def _check_config(self):
        self.out.mkdir(parents=True, exist_ok=True)
        want = {"settings": dataclasses.asdict(self.settings), "videos": [e.path for e in self.entries]}
        path = self.out / CONFIG_FILE
        if path.exists():
            have = json.loads(path.read_text())
            if have != want:
                raise UserError(f"{self.out} holds a cache made with other settings or videos ({path}); "
                                "use a new --out folder")
        elif self.process_index == 0:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(want, indent=1))
            os.replace(tmp, path)

    def my_shards(self) -> list[int]:
        return [s for s in range(len(self.shards)) if s % self.process_count == self.process_index]

    def pending(self) -> list[int]:
        n = len(self.shards)
        return [s for s in self.my_shards() if not _sidecar(self.out / shard_name(s, n)).exists()]

    def run(self, max_shards: int | None = None) -> int:
        """Writes this host's unfinished shards (at most `max_shards`); returns how many it wrote."""
        self._check_config()
        todo = self.pending()
        if max_shards is not None:
            todo = todo[:max_shards]
        pool = None
        if self.workers > 0:
            import concurrent.futures
            import multiprocessing

            # spawn, not fork: forking a process that runs JAX threads can deadlock.
            pool = concurrent.futures.ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        try:
            for s in todo:
                self._write_shard(s, pool)
        finally:
            if pool is not None:
                pool.shutdown()
        self.finish_if_complete()
        return len(todo)

    def _write_shard(self, s: int, pool):
        from array_record.python.array_record_module import ArrayRecordWriter
        from tqdm import tqdm

        n = len(self.shards)
        path = self.out / shard_name(s, n)
        tmp = path.with_name(path.name + ".tmp")
        clips = self.shards[s]
        k = self.settings.clips_per_video
        spec = self.settings.clip_spec()
        jobs = [(self.entries[c // k], spec, self.settings.seed, c, k) for c in clips]
        results = pool.map(_load, jobs) if pool is not None else map(_load, jobs)
        written, skipped, pending = [], [], []
        writer = ArrayRecordWriter(str(tmp), "group_size:1")
        try:
            for clip, result in tqdm(zip(clips, results), total=len(clips), desc=f"shard {s + 1}/{n}", unit="clip",
                                     leave=False, disable=not sys.stderr.isatty()):
                if isinstance(result, tuple):
                    skipped.append({"clip": clip, "path": result[0], "reason": result[1]})
                    continue
                pending.append((clip, result))
                if len(pending) == self.batch_size:
                    written += self._encode_and_write(pending, writer)
                    pending = []
            if pending:
                written += self._encode_and_write(pending, writer)
        finally:
            writer.close()
        os.replace(tmp, path)
        side = _sidecar(path)
        side_tmp = side.with_suffix(".json.tmp")
        side_tmp.write_text(json.dumps({"shard": s, "clips": written, "skipped": skipped}, indent=1))
        os.replace(side_tmp, side)
        self.log(f"shard {s + 1}/{n}: {len(written)} clips, {len(skipped)} skipped")

    def _encode_and_write(self, pending, writer) -> list[int]:
        from mvd_jax.data.encode import clip_keys

        batch = {
            "video": to_model_range(np.stack([r["video"] for _, r in pending])),
            "fps": np.stack([r["fps"] for _, r in pending]),
            "motion_bucket_id": np.stack([r["motion_bucket_id"] for _, r in pending]),
        }
        ids = [c for c, _ in pending]
        encoded = {k: np.asarray(v) for k, v in
                   self.encoder(batch, self.settings.noise_aug_strength, clip_keys(self.settings.seed, ids)).items()}
        for i, (clip, record) in enumerate(pending):
            out = {k: encoded[k][i] for k in ENCODED_KEYS}
            out.update(clip=np.int64(clip), start=np.int64(record["start"]), path=record["path"])
            writer.write(_serialize(out))
        return ids

    def finish_if_complete(self) -> bool:
        """Writes manifest.json (process 0) once every shard of every host is done."""
        n = len(self.shards)
        sides = [_sidecar(self.out / shard_name(s, n)) for s in range(n)]
        if self.process_index != 0 or not all(p.exists() for p in sides):
            return False
        infos = [json.loads(p.read_text()) for p in sides]
        manifest = {
            "shards": [shard_name(s, n) for s in range(n)],
            "num_clips": sum(len(i["clips"]) for i in infos),
            "skipped": [x for i in infos for x in i["skipped"]],
            "settings": dataclasses.asdict(self.settings),
        }
        tmp = self.out / (MANIFEST_FILE + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, self.out / MANIFEST_FILE)
        bad = sorted({x["path"] for x in manifest["skipped"]})
        self.log(f"cache complete: {manifest['num_clips']} clips in {n} shards; {len(bad)} video files skipped"
                 + (f" (listed in {self.out / MANIFEST_FILE})" if bad else ""))
        return True


def read_manifest(cache_dir) -> dict:
    path = storage.path(cache_dir) / MANIFEST_FILE  # local or gs://
    if not path.is_file():
        raise UserError(f"{cache_dir} is not a finished latent cache (no {MANIFEST_FILE}; "
                        "rerun `python -m mvd_jax.data.cache` with the same arguments to finish it)")
    return json.loads(path.read_text())


def finish_cached_batch(batch: dict) -> dict:
    return {k: batch[k] for k in (*ENCODED_KEYS, "clip")}


class CachedClipLoader:
    """Batches from a finished cache, with the keys of data.encode (plus `clip`): shuffled with a seed,
    repeated, sharded per host in blocks of the per-host batch (host_shard.py), resumable through
    Grain's iterator state."""

    def __init__(self, cache_dir, *, batch_size: int, seed: int = 0, num_epochs: int | None = 1,
                 shuffle: bool = True, drop_remainder: bool = True, process_index: int | None = None,
                 process_count: int | None = None):
        from mvd_jax.data.loader import LoaderOptions, _host

        manifest = read_manifest(cache_dir)
        if manifest["num_clips"] == 0:
            raise UserError(f"the cache {cache_dir} holds no clips")
        paths = [str(storage.path(cache_dir) / name) for name in manifest["shards"]]
        index, count = _host(LoaderOptions(process_index=process_index, process_count=process_count))
        ds = grain.MapDataset.source(grain.sources.ArrayRecordDataSource(paths))
        if shuffle:
            ds = ds.shuffle(seed=seed)
        ds = ds.repeat(num_epochs)
        ds = HostBlockShard(ds, block=batch_size, process_index=index, process_count=count)
        ds = ds.map(deserialize).map(finish_cached_batch)
        self.dataset = ds.to_iter_dataset().batch(batch_size, drop_remainder=drop_remainder)
        self.num_clips = manifest["num_clips"]

    def __iter__(self):
        return iter(self.dataset)


# ---- command line --------------------------------------------------------------------------------
def _settings_from_args(args) -> CacheSettings:
    base = CacheSettings()
    if args.config:
        from mvd_jax.settings import load_config

        cfg = load_config(args.config)
        data = cfg.get("data", None) or {}
        base = dataclasses.replace(base, num_frames=cfg.get("frames", base.num_frames),
                                   height=cfg.get("height", base.height), width=cfg.get("width", base.width),
                                   fps=data.get("fps", base.fps))
    over = {k: v for k, v in dict(num_frames=args.frames, height=args.height, width=args.width, fps=args.fps,
                                  clips_per_video=args.clips_per_video, shard_size=args.shard_size,
                                  noise_aug_strength=args.noise_aug_strength, seed=args.seed).items()
            if v is not None}
    settings = dataclasses.replace(base, **over)
    if settings.clips_per_video < 1 or settings.shard_size < 1:
        raise UserError("clips_per_video and shard_size must be ≥ 1")
    return settings


@cli_main
def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m mvd_jax.data.cache", description=__doc__.split("\n")[0])
    p.add_argument("--videos", required=True, help="folder, .csv/.jsonl manifest, or 'demo'")
    p.add_argument("--checkpoint", required=True, help="SVD diffusers folder (vae/, image_encoder/ are used)")
    p.add_argument("--out", required=True)
    p.add_argument("--config", default=None, help="config file: frames/height/width and data.fps")
    p.add_argument("--frames", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--fps", type=float)
    p.add_argument("--clips_per_video", type=int)
    p.add_argument("--shard_size", type=int)
    p.add_argument("--noise_aug_strength", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--workers", type=int, default=0, help="decoding processes (0: decode in this process)")
    p.add_argument("--max_shards", type=int, default=None, help="stop after this many shards (resume later)")
    args = p.parse_args(argv)
    from mvd_jax.compile_cache import enable_persistent_cache

    enable_persistent_cache()  # a repeated run loads its compiled programs instead of recompiling

    check_local_output(args.out)  # before the models load
    settings = _settings_from_args(args)
    entries = read_entries(args.videos)
    checkpoint = Path(args.checkpoint)
    for part in ("vae", "image_encoder"):
        if not (checkpoint / part).is_dir():
            raise UserError(f"{checkpoint} has no {part}/ folder (an SVD diffusers folder is expected)")
    from mvd_jax.convert.diffusers_vae import read_vae_config

    vae_scale = read_vae_config(checkpoint / "vae").downsampling_factor
    if settings.height % vae_scale or settings.width % vae_scale:
        raise UserError(f"height and width must be multiples of {vae_scale}, got {settings.height}×{settings.width}")

    import jax

    from mvd_jax.convert.diffusers_vae import load_vae
    from mvd_jax.convert.transformers_clip import load_image_encoder
    from mvd_jax.data.encode import ClipEncoder

    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize()
    encoder = ClipEncoder(load_vae(checkpoint / "vae"), load_image_encoder(checkpoint / "image_encoder"))
    writer = CacheWriter(entries, encoder, args.out, settings, batch_size=args.batch_size, workers=args.workers,
                         process_index=jax.process_index(), process_count=jax.process_count())
    done = writer.run(args.max_shards)
    left = len(writer.pending())
    print(f"wrote {done} shards to {args.out}; {left} of this host's {len(writer.my_shards())} shards left"
          + ("" if left else "; done"))


if __name__ == "__main__":
    main(sys.argv[1:])
