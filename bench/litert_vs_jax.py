"""CPU latency of the exported one-step UNet: LiteRT's Interpreter (XNNPACK) running `unet_step_fp32.tflite`
and `unet_step_fp16.tflite` vs the JAX jit of the very function the exporter converted, same weights and
inputs, in one process.

    JAX_PLATFORMS=cpu .venv/bin/python bench/litert_vs_jax.py --out bench/results/litert_vs_jax_demo.json

    options: --run RUN_DIR (default runs/demo_adversarial)  --tflite DIR  --components [vae_decoder,clip]
             --precision fp32,fp16  --threads N  --warmup 2 --steps 10 --pause 0.5  --seed 0  --no-xnnpack
             --no-real-inputs

With the defaults on the demo run: 1.5–2 minutes on this repo's 2 shared CPU cores (94 s and 124 s measured
at load averages 1.6 and 3.6: ≈ 45–55 s of it the two conversions and their verification, ≈ 8 s XLA's
compile, ≈ 40 s the timed calls and their pauses; peak RSS 1.9 GB); --components adds seconds there (the demo's pixel autoencoder and tiny CLIP stand-in), far
more with SVD's VAE and CLIP. With --tflite pointing at an earlier export: under a minute.

What is compared. The model comes from a trainer run directory exactly as `python -m export.tflite --run
RUN_DIR` takes it: export/tflite.py's load_sources → geometry → build_functions give the ExportFunction
(mvd_jax/export/functions.py: EMA UNet in inference form, the single EDM step folded in, sizes from the
run's config), and mvd_jax/export/tflite.py's save_graph + export_component convert it and install
each `.tflite` only after LiteRT reproduced JAX within the precision's tolerance (verify.py). The JAX side
is `jax.jit(f.fn)` of that same ExportFunction object with its own `f.params` — the function and the
weight arrays the converter traced — and both sides get the same inputs, `f.sample_inputs(--seed)`. As
the exporter does for a run directory, one clip of the run's data (export/tflite.py's real_inputs) gives
each function real inputs too, which the export's verification and the sanity check below also use.

Export folder. Without --tflite the models are converted into a temporary folder, deleted at the end.
`--tflite DIR` (e.g. the `--out` of an earlier `python -m export.tflite --run RUN_DIR`) reuses the
`<name>_<precision>.tflite` files already there (no conversion is timed for them) and exports the missing
ones into it. An export folder holds no weights the JAX side could run, so the run it came from is still
needed (--run); a reused model whose input shapes differ from the run's function is refused, and one from
another checkpoint shows up as a relative L2 above the export tolerance (flagged in the table).

Timing. Compile/convert costs are reported apart from steady-state latency:
    convert   jax2tf trace (shared by the precisions, split evenly) + TFLiteConverter, per precision
    verify    the export's own check (op census, LiteRT in a child process vs JAX)
    load      LiteRT: Interpreter(model_path, num_threads) + allocate_tensors (the XNNPACK delegate is
              applied here); JAX: jit(fn).lower(params, *inputs).compile()
    latency   LiteRT: interpreter.invoke() with the inputs already set; JAX: the compiled call with params
              and inputs already on the device, to jax.block_until_ready. Neither side's time includes
              copying inputs in or outputs out.
Each side first runs --warmup calls. The --steps timed rounds then call every side once (JAX, LiteRT fp32,
LiteRT fp16, then the next component's), the order rotated by one each round, with --pause seconds of idle
before each call, so all sides see the same background load and none is charged for another's
still-spinning worker threads. Median and min are reported, and the ratio of medians LiteRT / JAX.

Threads. LiteRT gets --threads (default: the cores this process may run on, = os.cpu_count() unless
pinned with taskset). XLA's CPU backend chooses its own thread count and has no per-call setting, so to
compare on fewer cores pin the whole process (taskset limits both sides), e.g.
    taskset -c 1 .venv/bin/python bench/litert_vs_jax.py --threads 1 --out /tmp/one_core.json
--no-xnnpack runs LiteRT's builtin kernels without the default delegate (OpResolverType
BUILTIN_WITHOUT_DEFAULT_DELEGATES). The fp16 model is the converter's float16 mode: float16 weights that
DEQUANTIZE ops turn into float32, float32 activations and arithmetic. On a CPU it is not expected to be
faster than fp32 (half the file, for phones whose GPU computes in fp16).

Sanity. The relative L2 ‖LiteRT − JAX‖ / ‖JAX‖ of the outputs of the last timed call (float64 NumPy, per
output, the worst printed), and of one more untimed call of each side on the real clip's inputs: ~1e-6
for fp32 (the same arithmetic in another order), ~1e-4–1e-3 for fp16 (weights rounded), as in the
export's verification; above the export's tolerance the table marks it (!).
"""
from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # a CPU comparison
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the export/ CLI package next to mvd_jax

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bench_io import write_json  # noqa: E402
from export.tflite import _csv, build_functions, geometry, load_sources, real_inputs  # noqa: E402
from mvd_jax.errors import UserError  # noqa: E402
from mvd_jax.diffusion.edm import SIGMA_MAX  # noqa: E402
from mvd_jax.export.verify import TOLERANCES, rel_l2  # noqa: E402

CORES = len(os.sched_getaffinity(0))  # os.cpu_count(), unless the process is pinned (taskset)
EXTRA = ("vae_decoder", "vae_encoder", "clip")  # export/tflite.py's component names besides "unet"
PRECISIONS = ("fp32", "fp16")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# ---- the two runtimes ----------------------------------------------------------------------------------
class JaxSide:
    """jax.jit(f.fn) of the ExportFunction itself, its params and the inputs placed on the device once."""

    def __init__(self, f, inputs):
        self.component, self.label = f.name, "jax"
        self.params = jax.device_put(f.params)
        self.inputs = f.inputs
        self.args = [jax.device_put(np.asarray(inputs[i.name], i.dtype)) for i in f.inputs]
        t0 = time.perf_counter()
        self.compiled = jax.jit(f.fn).lower(self.params, *self.args).compile()
        self.load_s = time.perf_counter() - t0
        self.out = None
        self.warmup_s, self.times_s = [], []

    def __call__(self) -> float:
        start = time.perf_counter()
        out = self.compiled(self.params, *self.args)
        jax.block_until_ready(out)
        elapsed = time.perf_counter() - start
        self.out = out
        return elapsed

    def outputs(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in self.out.items()}

    def run_on(self, inputs) -> dict[str, np.ndarray]:
        """The outputs for other inputs (untimed): the same compiled program."""
        args = [jax.device_put(np.asarray(inputs[i.name], i.dtype)) for i in self.inputs]
        return {k: np.asarray(v) for k, v in self.compiled(self.params, *args).items()}


class LiteRTSide:
    """ai_edge_litert's Interpreter on one .tflite: inputs set by signature name once, then invoke()."""

    def __init__(self, f, precision: str, path: Path, inputs, threads: int, xnnpack: bool):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        self.component, self.label, self.path = f.name, f"litert {precision}", path
        resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        t0 = time.perf_counter()
        self.interpreter = Interpreter(model_path=str(path), num_threads=threads,
                                       experimental_op_resolver_type=resolver)
        self.interpreter.allocate_tensors()
        self.load_s = time.perf_counter() - t0
        try:  # the graph's pieces XNNPACK took over (each a DELEGATE node); a private accessor, hence optional
            self.partitions = sum(o["op_name"] == "DELEGATE" for o in self.interpreter._get_ops_details())
        except Exception:  # noqa: BLE001
            self.partitions = None
        runner = self.interpreter.get_signature_runner()
        in_details, out_details = runner.get_input_details(), runner.get_output_details()
        del runner  # a live runner holds a reference that makes invoke() refuse to run
        want = {i.name: tuple(i.shape) for i in f.inputs}
        have = {k: tuple(int(s) for s in d["shape"]) for k, d in in_details.items()}
        if have != want:
            raise SystemExit(f"{path} takes inputs {have}, but {f.name} of this run takes {want}: it was exported "
                             "from another model or size; give another --tflite folder (or none)")
        self.input_index = {k: d["index"] for k, d in in_details.items()}
        self.output_index = {k: d["index"] for k, d in out_details.items()}
        self._set(inputs)
        self.rel_l2 = self.rel_l2_real = None
        self.warmup_s, self.times_s = [], []

    def __call__(self) -> float:
        start = time.perf_counter()
        self.interpreter.invoke()
        return time.perf_counter() - start

    def _set(self, inputs) -> None:
        for name, index in self.input_index.items():
            self.interpreter.set_tensor(index, np.asarray(inputs[name], np.float32))

    def outputs(self) -> dict[str, np.ndarray]:
        return {k: self.interpreter.get_tensor(i) for k, i in self.output_index.items()}

    def run_on(self, inputs) -> dict[str, np.ndarray]:
        """The outputs for other inputs (untimed)."""
        self._set(inputs)
        self.interpreter.invoke()
        return self.outputs()


# ---- export (or reuse) -----------------------------------------------------------------------------------
def export_or_reuse(f, precisions, folder: Path, seed: int, reuse: bool) -> dict:
    """{precision: record} with the model path and, for a fresh export, its convert/verify times and the
    export's own verification error."""
    from mvd_jax.export import ExportError

    records, missing = {}, []
    for p in precisions:
        path = folder / f"{f.name}_{p}.tflite"
        if reuse and path.is_file():
            records[p] = dict(path=str(path), reused=True, size_bytes=path.stat().st_size)
        else:
            missing.append(p)
    if missing:
        import tempfile

        from mvd_jax.export.tflite import export_component, save_graph

        t0 = time.perf_counter()
        graph_dir = tempfile.TemporaryDirectory(prefix="mvd_graph_")
        graph = save_graph(f, graph_dir.name)
        trace_s = time.perf_counter() - t0
        for p in missing:
            try:
                r = export_component(f, p, folder, graph=graph, seed=seed)
            except ExportError as e:
                raise SystemExit(f"export failed: {e}") from None
            records[p] = dict(path=r.path, reused=False, size_bytes=r.size_bytes,
                              convert_s=r.convert_s + trace_s / len(missing), trace_s=trace_s / len(missing),
                              verify_s=r.verify_s, export_rel_l2=r.worst_random,
                              export_rel_l2_real=r.worst_real if r.rel_l2_real else None, ops=sum(r.census.values()))
            real_note = f", real {r.worst_real:.2e}" if r.rel_l2_real else ""
            print(f"  {f.name} {p}: converted in {records[p]['convert_s']:.1f} s, verified in {r.verify_s:.1f} s "
                  f"(rel L2 {r.worst_random:.2e}{real_note}), {r.size_bytes / 2**20:.2f} MiB", flush=True)
        graph_dir.cleanup()
    for p in precisions:
        if records[p]["reused"]:
            print(f"  {f.name} {p}: reusing {records[p]['path']}", flush=True)
    return {p: records[p] for p in precisions}


# ---- main ----------------------------------------------------------------------------------------------
def main():
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--run", default=str(REPO / "runs" / "demo_adversarial"),
                   help="trainer run directory (its EMA UNet; VAE and CLIP as its config names them)")
    p.add_argument("--tflite", default=None,
                   help="export folder: reuse its <name>_<precision>.tflite, export the missing ones into it "
                        "(default: convert into a temporary folder)")
    p.add_argument("--components", nargs="?", const="vae_decoder,clip", default=None,
                   help="also time these (comma-separated: vae_decoder, vae_encoder, clip; "
                        "alone: vae_decoder,clip)")
    p.add_argument("--precision", default="fp32,fp16", help="comma-separated: fp32, fp16")
    p.add_argument("--threads", type=int, default=CORES, help="LiteRT's num_threads (default: the cores available)")
    p.add_argument("--no-xnnpack", action="store_true", help="LiteRT without its default XNNPACK delegate")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--pause", type=float, default=0.5, help="seconds of idle before each timed call")
    p.add_argument("--seed", type=int, default=0, help="seed of the inputs (f.sample_inputs) and of the real clip")
    p.add_argument("--no-real-inputs", action="store_true",
                   help="skip the real-input check (default: also compare on one clip of the run's data)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args()
    if args.warmup < 1 or args.steps < 1 or args.threads < 1:
        raise SystemExit("--warmup, --steps and --threads must be ≥ 1")
    try:  # the export CLI's own parsing of these options
        precisions = _csv(args.precision, PRECISIONS, "precision")
        components = ["unet"] + (_csv(args.components, EXTRA, "components") if args.components else [])
    except UserError as e:
        raise SystemExit(str(e)) from None

    load_before = os.getloadavg()
    t_start = time.perf_counter()
    print(f"{CORES} CPU cores, LiteRT threads {args.threads}, XNNPACK {'off' if args.no_xnnpack else 'on'}; "
          f"load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}", flush=True)

    # ---- the functions, exactly as python -m export.tflite --run RUN_DIR builds them ----
    source = argparse.Namespace(run=args.run, unet=None, checkpoint=None, frames=None, height=None, width=None,
                                decode_chunk=None)
    try:
        t0 = time.perf_counter()
        sources = load_sources(source, components)
        g = geometry(source, sources)
    except UserError as e:
        raise SystemExit(str(e)) from None
    load_s = time.perf_counter() - t0
    print(f"loaded {args.run} in {load_s:.1f} s: {g['frames']} frames {g['height']}×{g['width']} "
          f"(latents {g['latent_height']}×{g['latent_width']})", flush=True)
    real, real_source = None, None
    if not args.no_real_inputs:  # as the exporter does: its verification then covers one real clip too
        real, real_source = real_inputs(sources, g, args.seed)

    tmp = None
    if args.tflite:
        folder = Path(args.tflite)
    else:
        folder = Path(tmp := tempfile.mkdtemp(prefix="litert_vs_jax_"))
    sides, exports, info, real_by = [], {}, {}, {}
    try:
        for f in build_functions(components, sources, g, SIGMA_MAX):
            if real is not None:
                try:
                    f.set_real_inputs(real[f.name])
                except UserError as e:
                    print(f"real-input check skipped for {f.name}: {str(e).splitlines()[0]}", file=sys.stderr)
            real_by[f.name] = f.real_inputs
            exports[f.name] = export_or_reuse(f, precisions, folder, args.seed, reuse=bool(args.tflite))
            inputs = f.sample_inputs(args.seed)
            info[f.name] = dict(parameters=f.num_params,
                                inputs={i.name: list(i.shape) for i in f.inputs}, outputs=list(f.outputs))
            # The export's verification jitted f.fn already; without clearing, the compile below would be a
            # cache hit and time nothing.
            jax.clear_caches()
            group = [JaxSide(f, inputs)]
            group += [LiteRTSide(f, p, Path(exports[f.name][p]["path"]), inputs, args.threads, not args.no_xnnpack)
                      for p in precisions]
            for side in group:  # warm-up right after each side's compile/load
                side.warmup_s = [side() for _ in range(args.warmup)]
            print(f"  {f.name}: jax compile {group[0].load_s:.1f} s, "
                  + ", ".join(f"{s.label} load {s.load_s:.2f} s" + (f" ({s.partitions} XNNPACK partitions)"
                                                                    if s.partitions is not None else "")
                              for s in group[1:]), flush=True)
            sides += group
            del f

        # ---- timed rounds: every side once per round, the order rotated each round ----
        for step in range(args.steps):
            k = step % len(sides)
            for side in sides[k:] + sides[:k]:
                time.sleep(args.pause)
                side.times_s.append(side())

        # ---- sanity: the outputs of the last timed calls ----
        reference = {s.component: s.outputs() for s in sides if isinstance(s, JaxSide)}
        for s in sides:
            if isinstance(s, LiteRTSide):
                got = s.outputs()
                s.rel_l2 = {k: rel_l2(got.get(k), v) if k in got else float("inf")
                            for k, v in reference[s.component].items()}
        # ---- and on the real clip's inputs (one untimed call each) ----
        jax_sides = {s.component: s for s in sides if isinstance(s, JaxSide)}
        for comp, inputs in real_by.items():
            if inputs is None:
                continue
            want = jax_sides[comp].run_on(inputs)
            for s in sides:
                if isinstance(s, LiteRTSide) and s.component == comp:
                    got = s.run_on(inputs)
                    s.rel_l2_real = {k: rel_l2(got.get(k), v) if k in got else float("inf") for k, v in want.items()}
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    load_after = os.getloadavg()
    total_s = time.perf_counter() - t_start

    # ---- table ----
    jax_median = {s.component: statistics.median(s.times_s) for s in sides if isinstance(s, JaxSide)}
    header = (f"{'component':<19} {'side':<12} {'convert s':>9} {'verify s':>8} {'load s':>7} {'median ms':>9} "
              f"{'min ms':>8} {'/ jax':>6} {'rel L2 vs jax':>13} {'(real clip)':>11}")
    print("\n" + header + "\n" + "-" * len(header))
    rows = []
    for s in sides:
        med, mn = statistics.median(s.times_s), min(s.times_s)
        row = dict(component=s.component, side=s.label, load_s=s.load_s, warmup_times_s=s.warmup_s,
                   times_s=s.times_s, median_s=med, min_s=mn, ratio_over_jax_median=med / jax_median[s.component])
        convert = verify = flag = flag_real = "-"
        if isinstance(s, LiteRTSide):
            precision = s.label.split()[1]
            record = exports[s.component][precision]
            row.update(precision=precision, rel_l2_vs_jax=s.rel_l2, rel_l2_vs_jax_real=s.rel_l2_real, export=record,
                       delegate_partitions=s.partitions)
            if record["reused"]:
                convert = verify = "reused"
            else:
                convert, verify = f"{record['convert_s']:.1f}", f"{record['verify_s']:.1f}"
            worst = max([*s.rel_l2.values(), *(s.rel_l2_real or {}).values()])
            row["within_export_tolerance"] = bool(worst <= TOLERANCES[precision])
            mark = "" if row["within_export_tolerance"] else " (!)"
            flag = f"{max(s.rel_l2.values()):.2e}" + mark
            if s.rel_l2_real:
                flag_real = f"{max(s.rel_l2_real.values()):.2e}" + mark
        rows.append(row)
        load = f"{s.load_s:.1f}" if isinstance(s, JaxSide) else f"{s.load_s:.2f}"
        print(f"{s.component:<19} {s.label:<12} {convert:>9} {verify:>8} {load:>7} {med * 1e3:>9.1f} "
              f"{mn * 1e3:>8.1f} {row['ratio_over_jax_median']:>6.2f} {flag:>13} {flag_real:>11}")
    print(f"\nload s: jax = jit(...).lower().compile(); litert = Interpreter() + allocate_tensors(). "
          f"/ jax: ratio of medians (> 1: slower than JAX). (!) = above the export tolerance "
          f"({', '.join(f'{p} {TOLERANCES[p]:g}' for p in precisions)}).")
    for comp in jax_median:
        by = {r["side"]: r for r in rows if r["component"] == comp}
        parts = [f"{side} {by[side]['ratio_over_jax_median']:.2f}× JAX's median time "
                 f"(min {by[side]['min_s'] / by['jax']['min_s']:.2f}×)" for side in ("litert fp32", "litert fp16")
                 if side in by]
        if "litert fp32" in by and "litert fp16" in by:
            parts.append(f"fp16 / fp32 {by['litert fp16']['median_s'] / by['litert fp32']['median_s']:.2f}")
        print(f"{comp}: " + ", ".join(parts))
    print(f"{args.steps} timed calls per side (rotating order, {args.pause:g} s pause before each) after "
          f"{args.warmup} warm-up calls; load average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
          f"(1 min), {CORES} cores; {total_s:.0f} s in all.")

    result = {
        "benchmark": "litert_vs_jax",
        "run": args.run, "tflite": args.tflite, "geometry": g, "functions": info, "real_inputs": real_source,
        "precisions": precisions, "threads": args.threads, "xnnpack": not args.no_xnnpack,
        "warmup": args.warmup, "steps": args.steps, "pause_s": args.pause, "seed": args.seed,
        "cores": CORES, "machine_cores": os.cpu_count(), "machine": platform.processor() or platform.machine(),
        "load_average_before": list(load_before), "load_average_after": list(load_after),
        "versions": {"jax": jax.__version__, **{d: _version(d) for d in ("ai-edge-litert", "tensorflow-cpu")}},
        "source_load_s": load_s, "total_s": total_s,
        "sides": rows,
    }
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
