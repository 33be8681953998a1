"""Training metrics: one JSON object per logged step in workdir/metrics.jsonl and TensorBoard event
files in workdir/tensorboard (tensorboardX: no TensorFlow needed). Only process 0 writes."""
from __future__ import annotations

import json
import math
from pathlib import Path


class MetricWriter:
    def __init__(self, workdir, enabled: bool = True):
        self.enabled = enabled
        self._jsonl = self._tb = None
        if enabled:
            workdir = Path(workdir)
            self._jsonl = open(workdir / "metrics.jsonl", "a")
            try:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(str(workdir / "tensorboard"))
            except ImportError:  # TensorBoard output is optional; the JSONL log is not
                self._tb = None

    def write(self, step: int, metrics: dict):
        if not self.enabled:
            return
        clean = {k: (v if isinstance(v, (int, float)) and math.isfinite(v) else str(v)) for k, v in metrics.items()}
        self._jsonl.write(json.dumps({"step": step, **clean}) + "\n")
        self._jsonl.flush()
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
    path = Path(workdir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
