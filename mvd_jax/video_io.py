"""Writing frames to video files with maintained libraries: PyAV (mp4, H.264) and Pillow (gif).

Files are written to a temporary name beside the target and renamed when complete, so a failed or
interrupted write never leaves a partial file under the requested name.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from mvd_jax.errors import UserError

SUFFIXES = (".mp4", ".gif")


def check_output_path(path) -> Path:
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise UserError(f"output must end in {' or '.join(SUFFIXES)}, got {path.name!r}")
    if not path.parent.exists():
        raise UserError(f"output folder does not exist: {path.parent}")
    return path


def write_video(path, frames: np.ndarray, fps: int) -> Path:
    """frames (T, H, W, 3) float in [0, 1] (or uint8) → `path` (.mp4 or .gif)."""
    path = check_output_path(path)
    if frames.dtype != np.uint8:
        frames = (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    fd, tmp = tempfile.mkstemp(suffix=path.suffix, prefix=f".{path.stem}.", dir=path.parent)
    os.close(fd)
    try:
        if path.suffix.lower() == ".gif":
            _write_gif(tmp, frames, fps)
        else:
            _write_mp4(tmp, frames, fps)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the video gets the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_mp4(path: str, frames: np.ndarray, fps: int) -> None:
    import av

    with av.open(path, mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "17"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _write_gif(path: str, frames: np.ndarray, fps: int) -> None:
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
