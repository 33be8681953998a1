"""Decoding video files with PyAV (FFmpeg): metadata, chosen frames, and clear errors for bad files.

Every failure a real dataset throws at a loader — a missing, zero-byte, truncated or non-video file,
a file with no video stream, fewer frames than asked for — becomes a `VideoReadError` with a short
reason, so the data pipeline can skip the file, count it and name it in its report.

Frame indices are decode order from the start of the stream (0, 1, 2, …), which for the constant
frame-rate mp4s of video datasets is presentation order. Decoding runs sequentially up to the last
wanted frame (no seeking): seeking lands on keyframes whose true index depends on the container, and
exact frame indices matter more here than the cost of decoding a few seconds of video.

Paths may be gs://bucket/... (mvd_jax/storage.py): PyAV then reads through the bucket's file object
(gcsfs or tf.io.gfile, both seekable), so a dataset need not be copied to local disk first.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from mvd_jax import storage
from mvd_jax.errors import UserError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


class VideoReadError(UserError):
    """A video file that cannot be used; `reason` is a short phrase for reports."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    path: str
    num_frames: int
    fps: float
    width: int
    height: int


@contextlib.contextmanager
def _opened(path):
    """The PyAV container of a local or gs:// video file, closed (with its bucket file object) on exit."""
    import av

    remote = storage.is_remote(path)
    path = storage.path(path) if remote else Path(path)
    if not path.is_file():
        raise VideoReadError(path, "file not found")
    if (path.stat().length if remote else os.path.getsize(path)) == 0:
        raise VideoReadError(path, "empty file (0 bytes)")
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(path.open("rb")) if remote else str(path)
        try:
            container = av.open(source)
        except av.error.FFmpegError as e:
            raise VideoReadError(path, f"not a readable video ({type(e).__name__})") from None
        stack.callback(container.close)
        if not container.streams.video:
            raise VideoReadError(path, "no video stream")
        yield container


def probe(path, *, count_frames: bool = False) -> VideoInfo:
    """Frame count, frame rate and size. The count comes from the container header unless it is
    missing or `count_frames` is set, in which case every frame is decoded and counted (exact, slower;
    a truncated file's header still promises its original count)."""
    import av

    with _opened(path) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate or float(rate) <= 0:
            raise VideoReadError(path, "no frame rate in the container")
        n = stream.frames
        if count_frames or not n:
            n = 0
            try:
                for _ in container.decode(stream):
                    n += 1
            except av.error.FFmpegError:
                pass  # a damaged tail: count what decoded
        if n <= 0:
            raise VideoReadError(path, "no decodable frames")
        return VideoInfo(str(path), int(n), float(rate), stream.codec_context.width, stream.codec_context.height)


def read_frames(path, indices: Sequence[int]) -> np.ndarray:
    """The frames at `indices` (any order, repeats allowed) as uint8 RGB (len(indices), H, W, 3).

    Raises VideoReadError if the file ends (or breaks off) before the largest index.
    """
    import av

    indices = [int(i) for i in indices]
    if not indices or min(indices) < 0:
        raise ValueError(f"frame indices must be non-negative and non-empty, got {indices[:5]}")
    wanted = set(indices)
    last = max(indices)
    got: dict[int, np.ndarray] = {}
    with _opened(path) as container:
        i = -1
        try:
            for i, frame in enumerate(container.decode(container.streams.video[0])):
                if i in wanted:
                    got[i] = frame.to_ndarray(format="rgb24")
                if i >= last:
                    break
        except av.error.FFmpegError as e:
            raise VideoReadError(path, f"decoding failed at frame {i + 1} ({type(e).__name__})") from None
    if last not in got:
        raise VideoReadError(path, f"too short: {i + 1} decodable frames, frame {last} needed")
    return np.stack([got[j] for j in indices])


def read_video(path) -> tuple[np.ndarray, float]:
    """All frames (N, H, W, 3) uint8 and the frame rate."""
    info = probe(path, count_frames=True)
    return read_frames(path, range(info.num_frames)), info.fps


def list_videos(folder) -> list[Path]:
    """Video files under `folder` (local or gs://; recursive), sorted, by suffix."""
    folder = storage.path(folder) if storage.is_remote(folder) else Path(folder)
    if not folder.is_dir():
        raise UserError(f"video folder not found: {folder}")
    files = storage.files_under(folder) if storage.is_remote(folder) else (p for p in folder.rglob("*") if p.is_file())
    return sorted(p for p in files if p.suffix.lower() in VIDEO_SUFFIXES)
