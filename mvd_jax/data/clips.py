"""From a video file to one training clip: T frames at a target frame rate, resized and cropped to H×W.

Frame-rate conversion is index selection (no interpolation): at source rate f_s and target rate f
the k-th clip frame is source frame start + round(k·f_s/f). A clip therefore spans
round((T−1)·f_s/f) + 1 source frames; the start is uniform over the positions where it fits (or 0
for deterministic uses such as evaluation). Frames are scaled (aspect kept) until they cover H×W,
then cropped at the centre or at a random offset. PIL's bicubic resize antialiases when shrinking.

The clip record carries what SVD's conditioning needs: the first frame as the conditioning image,
the target fps (added time id fps − 1), the source fps, and the motion bucket id.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from mvd_jax.data.manifest import VideoEntry
from mvd_jax.data.video_decode import VideoReadError, probe, read_frames


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    num_frames: int = 14
    height: int = 256
    width: int = 512
    fps: float | None = 7.0  # None: consecutive source frames
    crop: str = "random"  # "random" or "center"
    random_start: bool = True
    default_motion_bucket_id: int = 127

    def __post_init__(self):
        if self.num_frames < 1 or self.height < 1 or self.width < 1:
            raise ValueError(f"clip frames/height/width must be ≥ 1, got {self.num_frames}/{self.height}/{self.width}")
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"clip fps must be positive, got {self.fps}")
        if self.crop not in ("random", "center"):
            raise ValueError(f"crop must be 'random' or 'center', got {self.crop!r}")


def frame_indices(num_source_frames: int, source_fps: float, spec: ClipSpec, rng: np.random.Generator | None):
    """Source frame indices of one clip; raises ValueError when the video is too short."""
    stride = 1.0 if spec.fps is None else source_fps / spec.fps
    offsets = np.round(np.arange(spec.num_frames) * stride).astype(np.int64)
    span = int(offsets[-1]) + 1
    if span > num_source_frames:
        raise ValueError(f"too short: {num_source_frames} frames, a {spec.num_frames}-frame clip at "
                         f"{spec.fps or source_fps:g} fps needs {span}")
    start = 0
    if spec.random_start and rng is not None:
        start = int(rng.integers(0, num_source_frames - span + 1))
    return start + offsets


def resize_and_crop(frames: np.ndarray, height: int, width: int, crop: str = "center",
                    rng: np.random.Generator | None = None) -> np.ndarray:
    """uint8 (N, h, w, 3) → uint8 (N, height, width, 3): scale to cover, then crop (same window for all frames)."""
    h, w = frames.shape[1:3]
    scale = max(height / h, width / w)
    rh, rw = max(height, int(round(h * scale))), max(width, int(round(w * scale)))
    if crop == "random" and rng is not None:
        top, left = int(rng.integers(0, rh - height + 1)), int(rng.integers(0, rw - width + 1))
    else:
        top, left = (rh - height) // 2, (rw - width) // 2
    out = np.empty((frames.shape[0], height, width, 3), np.uint8)
    for i, frame in enumerate(frames):
        image = Image.fromarray(frame)
        if (rh, rw) != (h, w):
            image = image.resize((rw, rh), Image.BICUBIC)
        out[i] = np.asarray(image)[top:top + height, left:left + width]
    return out


def to_model_range(frames_uint8) -> np.ndarray:
    """uint8 → float32 in [−1, 1] (x/255·2 − 1, diffusers' arithmetic)."""
    return np.asarray(frames_uint8, np.float32) / 255.0 * 2.0 - 1.0


def motion_bucket_id(entry: VideoEntry, spec: ClipSpec) -> int:
    if entry.motion_score is None:
        return spec.default_motion_bucket_id
    return int(np.clip(round(entry.motion_score), 0, 255))


def load_clip(entry: VideoEntry, spec: ClipSpec, rng: np.random.Generator | None) -> dict:
    """One clip record: `video` uint8 (T, H, W, 3) (frame 0 is the conditioning image), `fps` (target,
    float32), `source_fps`, `motion_bucket_id`, `start` (first source frame), `path`.
    Raises VideoReadError for any unusable file (the caller skips and counts it)."""
    info = probe(entry.path)
    source_fps = entry.fps or info.fps
    # the entry's window [start, end) seconds → source frames first … last − 1
    first = min(int(np.ceil(entry.start * source_fps - 1e-6)), info.num_frames)
    last = info.num_frames if entry.end is None else min(int(np.ceil(entry.end * source_fps - 1e-6)), info.num_frames)
    try:
        idx = first + frame_indices(max(last - first, 0), source_fps, spec, rng)
    except ValueError as e:
        raise VideoReadError(entry.path, str(e)) from None
    frames = resize_and_crop(read_frames(entry.path, idx), spec.height, spec.width, spec.crop, rng)
    return {
        "video": frames,
        "fps": np.float32(spec.fps if spec.fps is not None else source_fps),
        "source_fps": np.float32(source_fps),
        "motion_bucket_id": np.int32(motion_bucket_id(entry, spec)),
        "start": np.int64(idx[0]),
        "path": entry.path,
    }
