"""Training metrics: one JSON object per logged step in workdir/metrics.jsonl and TensorBoard event
files in workdir/tensorboard (tensorboardX: no TensorFlow needed; it writes gs:// itself). Only process
0 writes. Objects in a bucket cannot be appended to, so for a gs:// workdir the log is kept in memory
(seeded with what a resumed run already wrote) and the object is rewritten at every logged step.
Also what every phase's samples share: PSNR of frames in [−1, 1] and the workdir/samples/step_N.mp4 file."""
from __future__ import annotations

import json
import math

import jax.numpy as jnp
import numpy as np

from mvd_jax import storage


METRICS_FILE = "metrics.jsonl"


class MetricWriter:
    def __init__(self, workdir, enabled: bool = True):
        self.enabled = enabled
        self._jsonl = self._tb = None
        if enabled:
            workdir = storage.path(workdir)
            self._path = workdir / METRICS_FILE
            if storage.is_remote(workdir):
                self._lines = self._path.read_text().splitlines(keepends=True) if self._path.exists() else []
            else:
                self._jsonl = open(self._path, "a")
            try:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(str(workdir / "tensorboard"))
            except ImportError:  # TensorBoard output is optional; the JSONL log is not
                self._tb = None

    def write(self, step: int, metrics: dict):
        if not self.enabled:
            return
        clean = {k: (v if isinstance(v, (int, float)) and math.isfinite(v) else str(v)) for k, v in metrics.items()}
        line = json.dumps({"step": step, **clean}) + "\n"
        if self._jsonl is not None:
            self._jsonl.write(line)
            self._jsonl.flush()
        else:
            self._lines.append(line)
            self._path.write_text("".join(self._lines))
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()

    def close(self):
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir) -> list[dict]:
    path = storage.path(workdir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def psnr(x, y):
    """PSNR (dB) of frames in [−1, 1] (peak-to-peak 2) against a reference."""
    return 10.0 * jnp.log10(4.0 / jnp.maximum(jnp.mean((jnp.asarray(x) - jnp.asarray(y)) ** 2), 1e-12))


def write_sample_video(cfg, workdir, step: int, frames):
    """frames (T, H, W, 3) in [0, 1] → workdir/samples/step_N.mp4 at the config's fps; returns the path. PyAV
    writes a real file, copied up for gs:// workdirs."""
    from mvd_jax.video_io import write_video

    path = workdir / "samples" / f"step_{step:07d}.mp4"
    with storage.local_file_for(path) as local:
        write_video(local, np.asarray(frames), int(round(cfg.data.fps or 7)))
    return path
