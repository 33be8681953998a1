"""Where the TFLite export's memory goes: peak resident memory (RSS) of the exporting process and its children
together, per stage, for MobileVD's UNet at several widths (export/README.md "Memory to convert").

    JAX_PLATFORMS=cpu .venv/bin/python bench/export_memory.py --scale 1 --design after --out bench/results/export_memory.json
    JAX_PLATFORMS=cpu .venv/bin/python bench/export_memory.py --command -- .venv/bin/python -m export.tflite --unet DIR ...

Models: configs/paper/mobilevd.py (collapsed cross-attention, temporal multiscaling, 27 temporal blocks pruned,
funnels merged) with random weights and block widths scaled: --scale k of 5 gives (64k, 128k, 256k, 256k)
channels and (k, 2k, 4k, 4k) heads — 46.7 M parameters at k = 1, 171 M at 2, 374 M at 3; k = 5 is the paper's
model (1.01 B). 14 frames of 32×64 latents (512×256 video), fp16, verification on random inputs.

Designs (the same model, the same stages):
  before   the exporter until this change: the parameters as JAX/NumPy arrays and as tf.Variables in the
           exporting process, TFLiteConverter.from_concrete_functions in that process (which saves and
           reloads a SavedModel itself), then verification (LiteRT child) with all of it still held
  after    the exporter now (export/tflite.py): JAX's reference outputs first, the graph saved as a
           SavedModel, the process's weights released, the converter in a child process that exits after
           writing the model, verification with only the reference outputs held; with --parts N (or when
           the UNet passes unet_chain.MAX_GRAPH_PARAMS) the UNet as a chain of N graphs

Sampling: every 50 ms the RSS of this process and all its descendants (/proc), summed; each sample counts
for the stage running at that moment; the table reports each stage's peak. `--command` samples any command
instead, each sample counting for the last line the command printed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss(pid: int) -> int:
    """Bytes resident in `pid` (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0


def tree_rss(pid: int) -> int:
    """Bytes resident in `pid` and all its descendants."""
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    tree, frontier = {pid}, [pid]
    while frontier:
        p = frontier.pop()
        children = [c for c, pp in parent.items() if pp == p and c not in tree]
        tree.update(children)
        frontier += children
    return sum(rss(p) for p in tree)


class StageSampler:
    """Samples tree_rss(pid) in a thread; `stage(name)` starts the next stage. `peaks` {stage: bytes} of the
    tree, `own_peaks` of the process alone (the difference at a stage is its child processes)."""

    def __init__(self, pid: int | None = None, period_s: float = 0.05):
        self.pid, self.period_s = pid or os.getpid(), period_s
        self.current, self.peaks, self.started = "start", {"start": 0}, {"start": time.perf_counter()}
        self.own_peaks = {"start": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self):
        stage = self.current
        self.peaks[stage] = max(self.peaks.get(stage, 0), tree_rss(self.pid))
        self.own_peaks[stage] = max(self.own_peaks.get(stage, 0), rss(self.pid))

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.period_s)

    def stage(self, name: str) -> None:
        self._sample()
        self.current = name
        self.peaks.setdefault(name, 0)
        self.started[name] = time.perf_counter()
        self._sample()
        print(f"[{time.strftime('%H:%M:%S')}] {name}", flush=True)

    def stop(self) -> dict:
        self._sample()
        self._stop.set()
        self._thread.join()
        return self.peaks


def scaled_config(scale: int):
    import dataclasses

    from mvd_jax import settings

    cfg = settings.unet_config(settings.load_config(str(ROOT / "configs" / "paper" / "mobilevd.py")))
    if scale != 5:
        cfg = dataclasses.replace(cfg, block_out_channels=(64 * scale, 128 * scale, 256 * scale, 256 * scale),
                                  num_attention_heads=(scale, 2 * scale, 4 * scale, 4 * scale))
    return cfg


def legacy_convert(f, precision: str) -> bytes:
    """The conversion as the exporter ran it before this change: TFLiteConverter.from_concrete_functions on
    the function's tf.Module, in this process (the same converter options)."""
    from mvd_jax.export import tflite

    tf = tflite._tf()
    module, fn = tflite.concrete_function(f)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter._experimental_use_buffer_offset = tflite.weight_bytes(f, precision) > tflite.LARGE_MODEL_BYTES
    if precision == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    with tflite.without_tf_log_noise():
        return tflite.name_io_tensors(converter.convert())


def measure(scale: int, design: str, parts: int, precision: str, out_dir: Path) -> dict:
    sampler = StageSampler()
    import jax
    from flax import nnx

    from mvd_jax.export import functions as F
    from mvd_jax.export import tflite, unet_chain
    from mvd_jax.export.verify import install_verified
    from mvd_jax.models.unet import SpatioTemporalUNet

    tflite._tf()
    times = {}
    sampler.stage("imports (JAX, TensorFlow)")
    t0 = time.perf_counter()
    sampler.stage("model (random init)")
    unet = SpatioTemporalUNet(scaled_config(scale), rngs=nnx.Rngs(0))
    params = sum(int(x.size) for x in jax.tree.leaves(nnx.state(unet, nnx.Param)))
    size = dict(frames=14, latent_height=32, latent_width=64)
    if design == "before":
        f = F.unet_step(F.prepare_unet(unet), **size)
        del unet
        sampler.stage("convert (in process)")
        model = legacy_convert(f, precision)
        times["convert_s"] = time.perf_counter() - sampler.started["convert (in process)"]
        sampler.stage("verify (LiteRT child + JAX)")
        report = install_verified(model, out_dir / f"unet_step_{precision}.tflite", f, precision)
        del model
    else:
        counts = unet_chain.step_params(unet)
        parts = parts or unet_chain.parts_for(counts, unet_chain.MAX_GRAPH_PARAMS)
        chain = unet_chain.unet_step_chain(unet, parts=parts, **size) if parts > 1 else None
        f = chain.full if chain else F.unet_step(unet, **size)
        del unet
        links = chain.parts if chain else [f]
        sampler.stage("JAX reference outputs")
        f.keep_references(0)
        sampler.stage("save graph (SavedModel)")
        graphs = tempfile.TemporaryDirectory(prefix="mvd_graph_")
        folders = [tflite.save_graph(link, Path(graphs.name) / link.name) for link in links]
        for link in {id(x): x for x in [f, *links]}.values():
            link.release_params()
        tflite.release_memory()
        sampler.stage("convert (child process)")
        if chain:
            from mvd_jax.export.verify import install_verified_chain

            finals = [out_dir / f"{link.name}_{precision}.tflite" for link in links]
            for link, folder, final in zip(links, folders, finals):
                tflite.convert_in_child(link, precision, folder, final.with_name(f".{final.name}.partial"))
            times["convert_s"] = time.perf_counter() - sampler.started["convert (child process)"]
            sampler.stage("verify (LiteRT child)")
            report = install_verified_chain(finals, chain, precision)
        else:
            final = out_dir / f"unet_step_{precision}.tflite"
            partial = final.with_name(f".{final.name}.partial")
            tflite.convert_in_child(f, precision, folders[0], partial)
            times["convert_s"] = time.perf_counter() - sampler.started["convert (child process)"]
            sampler.stage("verify (LiteRT child)")
            report = install_verified(partial, final, f, precision)
        graphs.cleanup()
    times["verify_s"] = report.verify_s
    peaks = sampler.stop()
    return dict(scale=scale, design=design, parts=parts if design == "after" else 1, precision=precision,
                params=params, wall_s=round(time.perf_counter() - t0, 1),
                file_mib=round(report.size_bytes / 2**20, 1), rel_l2=report.worst,
                peak_gib=round(max(peaks.values()) / 2**30, 2),
                stages_gib={k: round(v / 2**30, 2) for k, v in peaks.items() if k != "start"},
                own_gib={k: round(v / 2**30, 2) for k, v in sampler.own_peaks.items() if k != "start"},
                **{k: round(v, 1) for k, v in times.items()})


def sample_command(cmd: list[str]) -> dict:
    """Peak tree RSS of `cmd` by the last line it printed before each sample."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    sampler = StageSampler(proc.pid)
    lines = []
    for line in proc.stdout:
        sys.stdout.write(line)
        lines.append(line.rstrip())
        if line.strip():
            sampler.current = line.strip()[:100]
    proc.wait()
    peaks = sampler.stop()
    return dict(command=cmd, status=proc.returncode, wall_s=round(time.perf_counter() - t0, 1),
                peak_gib=round(max(peaks.values()) / 2**30, 2),
                stages_gib={k: round(v / 2**30, 2) for k, v in peaks.items() if v},
                own_gib={k: round(v / 2**30, 2) for k, v in sampler.own_peaks.items() if v})


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scale", type=int, choices=range(1, 6), default=1)
    p.add_argument("--design", choices=("before", "after"), default="after")
    p.add_argument("--parts", type=int, default=0, help="after: the UNet in this many graphs (0: the exporter's rule)")
    p.add_argument("--precision", default="fp16", choices=("fp32", "fp16"))
    p.add_argument("--out", help="append the result to this JSON file (a list)")
    p.add_argument("--command", action="store_true", help="sample the command after -- instead")
    args, rest = p.parse_known_args()
    if args.command:
        result = sample_command(rest[1:] if rest[:1] == ["--"] else rest)
    else:
        with tempfile.TemporaryDirectory(prefix="mvd_export_memory_") as out_dir:
            result = measure(args.scale, args.design, args.parts, args.precision, Path(out_dir))
    print(json.dumps(result, indent=1))
    if args.out:
        path = Path(args.out)
        old = json.loads(path.read_text()) if path.is_file() else []
        path.write_text(json.dumps(old + [result], indent=1) + "\n")


if __name__ == "__main__":
    main()
