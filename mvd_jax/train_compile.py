"""python -m mvd_jax.train_compile --config=configs/X.py[:arg] --topology=T [--num_slices=N] [--config.a.b=v ...]
        [--utilization=0.4] [--hbm_gib=G] [--fast_compile] [--out F.json]

Compiles the trainer's real train step for a set of devices without running it (train/aot.py) and prints
what each chip would hold — arguments, temporaries, outputs, total — against its memory, the step's FLOPs
and a predicted step time. This is how to learn whether a config fits a TPU slice before renting one.

--topology  cpu:N        N simulated CPU devices on this host (the default: cpu:1)
            v5e:4x8      a TPU slice, compiled for on this CPU-only host through libtpu
                         (`pip install libtpu==0.0.42.1`, the release paired with jax 0.10.2; nothing is
                         allocated, no TPU is needed). Generations: v4:AxBxC, v5e:AxB, v5p:AxBxC (libtpu
                         spells it v5), v6e:AxB; or a Cloud accelerator type: v5litepod-32 (= v5e-32),
                         v5p-64, v4-32, v6e-16 (v4/v5p types count TensorCores, 2 per chip)
--num_slices N           N such slices joined by the data-centre network (multi-slice); the slices split
                         mesh.data, so it must be a multiple of N
--utilization U          the fraction of the chips' bf16 peak the predicted step time assumes (0.4)
--hbm_gib G              the memory to fit in per chip (default: the chip's HBM; lower it to keep headroom)
--fast_compile           compile with XLA's lowest execution-time optimisation effort: about 2× quicker
                         here, and the memory plan comes out a little larger (pessimistic), never smaller
--plan_only              no compile (an SVD-size step takes tens of minutes and >20 GB of host RAM to
                         compile): the train state's bytes per chip from the shardings — a lower bound,
                         enough to rule a slice out — and the FLOPs; temporaries need the compile
--out F.json             also write the report as JSON

Exit status: 0 compiled and fits (--plan_only: the state fits), 3 does not fit (the message names the
knobs that help), 2 a usage or config error.

Per-chip memory is the compiler's own plan for one device of the SPMD program (train/compile_report.py):
total = arguments + outputs − aliased (the donated train state) + temporaries. When the plan exceeds the
chip's HBM the TPU compiler itself refuses ("Ran out of memory in memory space hbm"); that is reported the
same way, with the compiler's figures. FLOPs come from the step's jaxpr (2·MACs of every conv and matmul,
the backward pass included, whole global batch): XLA's per-device count is printed beside it, but on TPU
it undercounts FSDP steps whose all-gathers XLA turns into windowed-einsum loops (DESIGN.md).

Chip figures (Google's Cloud TPU system-architecture pages: docs.cloud.google.com/tpu/docs/v4, /v5e,
/v5p, /v6e): HBM per chip v4 32 GiB, v5e 16 GB, v5p 95 GB, v6e 32 GB; bf16 peak per chip v4 275,
v5e 197, v5p 459, v6e 918 TFLOP/s. Hosts: 4 chips per TPU VM (v5e/v6e slices of 8 or fewer chips sit on
one VM with up to 8 chips).

Examples:

    python -m mvd_jax.train_compile --config=configs/demo.py:micro --topology=v5e:2x2 --config.mesh.fsdp=4 \\
        --config.mesh.data=1 --config.train.batch_size=4
    python -m mvd_jax.train_compile --config=configs/paper/svd_512x256.py --topology=v5e:4x4 \\
        --config.mesh.data=1 --config.mesh.fsdp=16 --config.train.batch_size=16 --config.train.remat=True \\
        --config.train.dtype=bfloat16
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import sys

from absl import flags
from ml_collections import config_flags

from mvd_jax.errors import UserError

GIB = 1024 ** 3
EXIT_DOES_NOT_FIT = 3


# =============================================================================================
# TPU generations and slices
# =============================================================================================
@dataclasses.dataclass(frozen=True)
class TpuGeneration:
    name: str  # our spelling: v4, v5e, v5p, v6e
    libtpu_name: str  # libtpu's topology prefix (v5p is "v5")
    chip_config_name: str  # get_topology_desc's chip config: 'megacore' (2 TensorCores as one device) or 'default'
    dims: int  # 2-D torus (v5e, v6e) or 3-D (v4, v5p)
    hbm_gib: float  # HBM per chip
    peak_tflops: float  # bf16 peak per chip, TFLOP/s
    accelerator_prefix: str  # Cloud TPU accelerator type: v5litepod-32, v5p-32, ...
    cores_per_chip: int  # what the accelerator type's number counts: TensorCores (v4, v5p) or chips
    runtime_version: str  # TPU VM software version (docs.cloud.google.com/tpu/docs/runtimes)
    device_kind: str  # jax Device.device_kind


TPU_GENERATIONS = {
    "v4": TpuGeneration("v4", "v4", "megacore", 3, 32.0, 275.0, "v4-", 2, "tpu-ubuntu2204-base", "TPU v4"),
    "v5e": TpuGeneration("v5e", "v5e", "default", 2, 16.0, 197.0, "v5litepod-", 1, "v2-alpha-tpuv5-lite",
                         "TPU v5 lite"),
    "v5p": TpuGeneration("v5p", "v5", "megacore", 3, 95.0, 459.0, "v5p-", 2, "v2-alpha-tpuv5", "TPU v5"),
    "v6e": TpuGeneration("v6e", "v6e", "default", 2, 32.0, 918.0, "v6e-", 1, "v2-alpha-tpuv6e", "TPU v6 lite"),
}
_ALIASES = {"v5": "v5p", "v5litepod": "v5e", "v5lite": "v5e"}
# The shape Cloud TPU gives an accelerator type by default (chips → topology).
_DEFAULT_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16), 256: (16, 16)}
_DEFAULT_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4), 128: (4, 4, 8),
               256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16), 2048: (8, 16, 16), 4096: (16, 16, 16)}


@dataclasses.dataclass(frozen=True)
class TpuSlice:
    generation: TpuGeneration
    shape: tuple

    @property
    def chips(self) -> int:
        return math.prod(self.shape)

    @property
    def chips_per_host(self) -> int:
        if self.generation.dims == 2 and self.chips <= 8:
            return self.chips  # v5e/v6e: 1-, 4- and 8-chip slices are one VM
        return min(4, self.chips)

    @property
    def hosts(self) -> int:
        """TPU VMs (workers) in one slice: each runs one trainer process."""
        return self.chips // self.chips_per_host

    @property
    def topology(self) -> str:  # our spelling, e.g. v5e:4x8
        return f"{self.generation.name}:{'x'.join(map(str, self.shape))}"

    @property
    def libtpu_topology(self) -> str:  # get_topology_desc's, e.g. v5:2x2x2
        return f"{self.generation.libtpu_name}:{'x'.join(map(str, self.shape))}"

    @property
    def accelerator_type(self) -> str:  # gcloud/xpk's, e.g. v5litepod-32, v5p-16
        g = self.generation
        return f"{g.accelerator_prefix}{self.chips * g.cores_per_chip}"

    @property
    def chips_per_host_bounds(self) -> tuple:
        if self.chips_per_host == 8:
            return (2, 4, 1)
        if self.chips_per_host == 4:
            return (2, 2, 1)
        return (1, 1, 1) if self.chips_per_host == 1 else (2, 1, 1)


def parse_tpu(spec: str) -> TpuSlice:
    """'v5e:4x8', 'v5p:2x2x4' (or libtpu's 'v5:2x2x4'), 'v4:2x2x1', 'v6e:4x4', or an accelerator type
    'v5litepod-32' / 'v5e-32' / 'v5p-32' / 'v4-32' / 'v6e-32' → the slice."""
    s = spec.strip().lower()
    m = re.fullmatch(r"([a-z0-9]+):(\d+(?:x\d+)+)", s)
    if m:
        gen = _generation(m.group(1), spec)
        shape = tuple(int(x) for x in m.group(2).split("x"))
        if len(shape) != gen.dims or min(shape) < 1:
            raise UserError(f"{gen.name} slices are {gen.dims}-D ({'AxB' if gen.dims == 2 else 'AxBxC'}), got {spec!r}")
        return TpuSlice(gen, shape)
    m = re.fullmatch(r"([a-z0-9]+)-(\d+)", s)
    if m:
        gen = _generation(m.group(1), spec)
        n = int(m.group(2))
        if n % gen.cores_per_chip:
            raise UserError(f"{spec!r}: {gen.name} accelerator types count TensorCores ({gen.cores_per_chip} per chip)")
        chips = n // gen.cores_per_chip
        table = _DEFAULT_2D if gen.dims == 2 else _DEFAULT_3D
        if chips not in table:
            raise UserError(f"{spec!r}: no standard {gen.name} slice of {chips} chips; give the topology "
                            f"instead (e.g. {gen.name}:{'x'.join(map(str, table[max(table)]))})")
        return TpuSlice(gen, table[chips])
    raise UserError(f"not a TPU slice: {spec!r} (e.g. v5e:4x8, v5p:2x2x4, v6e:4x4, v4:2x2x1, or v5litepod-32, "
                    "v5p-32, v6e-16, v4-32)")


def _generation(name: str, spec: str) -> TpuGeneration:
    name = _ALIASES.get(name, name)
    if name not in TPU_GENERATIONS:
        raise UserError(f"unknown TPU generation in {spec!r}; known: {', '.join(TPU_GENERATIONS)}")
    return TPU_GENERATIONS[name]


# =============================================================================================
# Fit verdict and prediction
# =============================================================================================
def knobs(report: dict) -> list[str]:
    """The config changes that would shrink the per-chip plan, most effective first (from which part of
    the plan is large)."""
    mesh, devices = report["mesh"], report["devices"]
    args = report.get("argument_bytes", 0.0)
    # when the compiler refused, what is not arguments is (mostly) temporaries
    temps = report.get("temp_bytes", report.get("oom_used_bytes", 0.0) - args)
    out = []
    fsdp_room = mesh["fsdp"] < devices // mesh["tensor"]
    fsdp = (f"--config.mesh.fsdp=N (now {mesh['fsdp']}; with --config.mesh.data=-1): shards parameters, EMA and "
            f"Adam's moments (arguments {args / GIB:.2f} GiB per chip) over N chips")
    remat = (f"--config.train.remat=True: recomputes each UNet layer in the backward pass instead of keeping its "
             f"activations (temporaries {temps / GIB:.2f} GiB per chip)")
    micro = (f"--config.train.grad_accum=K (now {report.get('grad_accum', 1)}) or a smaller "
             f"--config.train.batch_size (now {report['batch_size']}): fewer activations per micro-batch")
    bf16 = "--config.train.dtype=bfloat16: halves the activations (parameters stay float32)"
    windowed = ("--config.train.tpu_collective_matmul=False: XLA:TPU's windowed einsum keeps buffers that grow "
                "with the FSDP width (train/sharding.py)")
    first, second = (fsdp, remat) if args >= temps else (remat, fsdp)
    for k in (first, second):
        if (k is fsdp and fsdp_room) or (k is remat and not report.get("remat")):
            out.append(k)
    if report.get("tpu_collective_matmul"):
        out.append(windowed)
    out.append(micro)
    if report.get("dtype") == "float32":
        out.append(bf16)
    out.append("a larger slice (more chips to shard over), or --num_slices for more data parallelism")
    return out


def predicted_step_seconds(report: dict, peak_tflops: float, utilization: float) -> float:
    return report["jaxpr_flops_per_step"] / (report["devices"] * peak_tflops * 1e12 * utilization)


def format_tpu_report(report: dict, tpu: TpuSlice, num_slices: int, hbm_bytes: float, utilization: float) -> str:
    g = tpu.generation
    n = report["devices"]
    lines = [f"target: {tpu.topology} ({tpu.accelerator_type}) × {num_slices} slice(s) = {n} chips on "
             f"{tpu.hosts * num_slices} host(s); per chip {hbm_bytes / GIB:.4g} GiB HBM, {g.peak_tflops:g} TFLOP/s "
             f"bf16 peak",
             f"mesh data {report['mesh']['data']} × fsdp {report['mesh']['fsdp']} × tensor {report['mesh']['tensor']}; "
             f"global batch {report['batch_size']} (grad_accum {report.get('grad_accum', 1)}), {report['frames']} "
             f"frames {report['width']}×{report['height']}, remat {report['remat']}, dtype {report['dtype']}, "
             f"collective matmul {report.get('tpu_collective_matmul', False)}; "
             f"trainable parameters {report['trainable_params']:,}, frozen {report['frozen_params']:,}"]
    if "total_bytes" in report:
        gb = lambda k: report[k] / GIB  # noqa: E731
        lines += ["per-chip memory (the compiler's plan for one chip):",
                  f"  arguments    {gb('argument_bytes'):9.3f} GiB  parameters, EMA, Adam moments, frozen weights, "
                  "batch (each as sharded)",
                  f"  temporaries  {gb('temp_bytes'):9.3f} GiB  activations kept for the backward pass, gradients, "
                  "collectives' buffers",
                  f"  outputs      {gb('output_bytes'):9.3f} GiB  the new state, {gb('aliased_bytes'):.3f} GiB of it "
                  "aliased with the donated arguments",
                  f"  total        {gb('total_bytes'):9.3f} GiB  of {hbm_bytes / GIB:.4g} GiB "
                  f"({100 * report['total_bytes'] / hbm_bytes:.1f} %)"]
    elif report.get("planned_only"):
        lines.append(f"per-chip memory: arguments {report['argument_bytes'] / GIB:.3f} GiB (parameters, EMA, Adam "
                     f"moments, frozen weights, batch, as sharded; {100 * report['argument_bytes'] / hbm_bytes:.1f} % "
                     f"of {hbm_bytes / GIB:.4g} GiB) — temporaries not computed (--plan_only: no compile)")
    else:  # the compiler refused: only its totals are known
        lines.append(f"per-chip memory: the TPU compiler ran out of HBM: its plan needs "
                     f"{report['oom_used_bytes'] / GIB:.3f} GiB of the {report['oom_capacity_bytes'] / GIB:.4g} GiB it "
                     f"can use; arguments (from the shardings) {report['argument_bytes'] / GIB:.3f} GiB")
    flops = report["jaxpr_flops_per_step"]
    line = (f"FLOPs per step: {flops / 1e12:.4g} TFLOP (jaxpr count, 2·MACs of convs and matmuls, forward + backward, "
            f"whole batch) = {flops / n / 1e12:.4g} TFLOP per chip")
    if report.get("flops"):
        line += f"; XLA's cost analysis: {report['flops'] / 1e12:.4g} TFLOP per chip"
    lines.append(line)
    step = predicted_step_seconds(report, g.peak_tflops, utilization)
    lines.append(f"predicted step time: {step:.4g} s at {100 * utilization:g} % of bf16 peak "
                 f"({flops / 1e12:.4g} TFLOP / ({n} chips × {g.peak_tflops:g} TFLOP/s × {utilization:g})) → "
                 f"{report['batch_size'] / step:.4g} clips/s")
    return "\n".join(lines)


# =============================================================================================
# The command
# =============================================================================================
class _Flags:
    """The command's flags, defined only when it runs (importing this module for its TPU tables — as the
    launch/ scripts do — must not claim the global --config flag the trainer also defines)."""

    def __init__(self, argv):
        # a FlagValues of its own (tests call main in-process; the trainer's --config must not collide), with
        # the --config.a.b overrides declared from this argv
        self.values = v = flags.FlagValues()
        self.config = config_flags.DEFINE_config_file("config", None, "training config file (configs/*.py[:arg])",
                                                      lock_config=True, flag_values=v, sys_argv=argv)
        self.topology = flags.DEFINE_string("topology", "cpu:1", "cpu:N (simulated CPU devices) or a TPU slice: "
                                            "v5e:4x8, v5p:2x2x4, v6e:4x4, v4:2x2x1, v5litepod-32, v5p-32, ...",
                                            flag_values=v)
        self.num_slices = flags.DEFINE_integer("num_slices", 1, "TPU slices (multi-slice; they split mesh.data)",
                                               flag_values=v)
        self.utilization = flags.DEFINE_float("utilization", 0.4, "fraction of bf16 peak for the predicted step time",
                                              flag_values=v)
        self.hbm_gib = flags.DEFINE_float("hbm_gib", None, "memory per chip to fit in (default: the chip's HBM)",
                                          flag_values=v)
        self.fast = flags.DEFINE_bool("fast_compile", False, "lowest XLA optimisation effort (quicker; memory plan "
                                      "pessimistic)", flag_values=v)
        self.out = flags.DEFINE_string("out", None, "also write the report as JSON here", flag_values=v)
        self.plan_only = flags.DEFINE_bool("plan_only", False, "no compile: the train state's bytes per chip and "
                                           "the FLOPs only (TPU topologies)", flag_values=v)


def cpu_device_count(topology: str):
    """N for 'cpu:N'; None for anything else (a TPU slice)."""
    kind, _, n = topology.partition(":")
    if kind != "cpu":
        return None
    if not n.isdigit() or int(n) < 1:
        raise UserError(f"--topology cpu:N: N must be ≥ 1, got {topology!r}")
    return int(n)


def compile_for_tpu(config, tpu: TpuSlice, num_slices: int = 1, compile: bool = True) -> dict:
    """The AOT report (train/aot.py) of `config` on `num_slices` × `tpu`, described by libtpu on this host."""
    from mvd_jax.train.aot import compile_train_step, device_mesh, tpu_topology_devices
    from mvd_jax.settings import resolve

    devices = tpu_topology_devices(tpu.libtpu_topology, chip_config_name=tpu.generation.chip_config_name,
                                   chips_per_host_bounds=tpu.chips_per_host_bounds, num_slices=num_slices)
    cfg = resolve(config)
    return compile_train_step(cfg, mesh=device_mesh(dict(cfg.mesh), devices, num_slices), compile=compile)


def tpu_verdict(report: dict, tpu: TpuSlice, hbm_gib: float | None = None) -> tuple[bool, float]:
    """(fits, the per-chip budget in bytes); fits is None when only the train state was sized
    (--plan_only) and it fits: the temporaries decide."""
    hbm = (hbm_gib if hbm_gib else tpu.generation.hbm_gib) * GIB
    if "oom_used_bytes" in report:
        return False, hbm
    if report.get("planned_only"):
        return (None if report["argument_bytes"] <= hbm else False), hbm
    return report["total_bytes"] <= hbm, hbm


def main(argv=None):
    argv = list(sys.argv if argv is None else argv)
    F = _Flags(argv)
    if any(a in ("-h", "--help", "--helpshort", "--helpfull") for a in argv[1:]):
        print(__doc__ + "\n" + F.values.get_help())
        return
    try:
        from mvd_jax.settings import parse_flags

        parse_flags(F.values, argv)  # a bad flag or override value: one error line naming it
        n = cpu_device_count(F.topology.value)
        try:
            tpu = None if n else parse_tpu(F.topology.value)
        except UserError as e:
            raise UserError(f"--topology must be cpu:N or a TPU slice: {e}") from None
        if n and F.plan_only.value:
            raise UserError("--plan_only is for TPU topologies")
        if F.num_slices.value < 1 or (n and F.num_slices.value != 1):
            raise UserError(f"--num_slices must be ≥ 1 and is for TPU topologies only, got {F.num_slices.value}")
        if F.hbm_gib.value is not None and not F.hbm_gib.value > 0:  # also refuses NaN
            raise UserError(f"--hbm_gib must be > 0 (GiB per chip), got {F.hbm_gib.value}")
        if not 0 < F.utilization.value <= 1:
            raise UserError(f"--utilization must be in (0, 1], got {F.utilization.value}")
        import jax

        jax.config.update("jax_platforms", "cpu")  # TPU topologies are described, not run: the backend stays CPU
        if n:
            jax.config.update("jax_num_cpu_devices", n)  # before the backend starts
        if F.fast.value:
            jax.config.update("jax_exec_time_optimization_effort", -1.0)
        from mvd_jax.settings import validate
        from mvd_jax.train.compile_report import format_attention, format_report

        if F.config.value is None:
            raise UserError("--config is required")
        validate(F.config.value, source="--config")
        if n:
            from mvd_jax.train.aot import compile_train_step

            if len(jax.devices()) != n:
                raise UserError(f"asked for {n} CPU devices, the backend has {len(jax.devices())} (it was started "
                                "before --topology applied; unset XLA_FLAGS device counts)")
            report = compile_train_step(F.config.value)
        else:
            report = compile_for_tpu(F.config.value, tpu, F.num_slices.value, compile=not F.plan_only.value)
    except UserError as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        sys.exit(2)

    status = 0
    print(format_attention(report["attention"]))
    if report.get("pallas_kernel_calls"):
        print(f"  the compiled program holds {report['pallas_kernel_calls']} Pallas TPU kernel calls")
    if n:
        print(format_report(report, devices=report["devices"]))
        print(f"step FLOPs (jaxpr, paper convention, whole batch): {report['jaxpr_flops_per_step'] / 1e12:.4g} T; "
              f"trainable parameters {report['trainable_params']:,}, frozen {report['frozen_params']:,}; "
              f"mesh {report['mesh']}, batch {report['batch_size']}, remat {report['remat']}; "
              f"lowered in {report['lower_s']:.1f} s, compiled in {report['compile_s']:.1f} s")
    else:
        fits, hbm = tpu_verdict(report, tpu, F.hbm_gib.value)
        report.update(topology=tpu.topology, accelerator_type=tpu.accelerator_type, num_slices=F.num_slices.value,
                      hosts=tpu.hosts * F.num_slices.value, hbm_bytes=hbm, peak_tflops=tpu.generation.peak_tflops,
                      utilization=F.utilization.value, fits=fits,
                      predicted_step_s=predicted_step_seconds(report, tpu.generation.peak_tflops, F.utilization.value))
        print(format_tpu_report(report, tpu, F.num_slices.value, hbm, F.utilization.value))
        if not report.get("planned_only"):
            print(f"lowered in {report['lower_s']:.1f} s, compiled in {report['compile_s']:.1f} s")
        if fits is None:
            print(f"THE STATE FITS: {report['argument_bytes'] / GIB:.3f} GiB per chip ≤ {hbm / GIB:.4g} GiB, leaving "
                  f"{(hbm - report['argument_bytes']) / GIB:.3f} GiB for activations and gradients; compile (without "
                  "--plan_only) to know whether the step fits")
        elif fits:
            print(f"FITS: {report['total_bytes'] / GIB:.3f} GiB per chip ≤ {hbm / GIB:.4g} GiB")
            if report["total_bytes"] > 0.85 * hbm:
                print("  (close to the limit: the TPU compiler rematerialises on its own to fit, so the step may run "
                      "slower than predicted; more FSDP or train.remat=True leaves it room)")
        else:
            need = report.get("oom_used_bytes", report.get("total_bytes", report["argument_bytes"]))
            usable = report.get("oom_capacity_bytes", hbm)  # the compiler's usable share of the chip's HBM
            print(f"DOES NOT FIT: {need / GIB:.3f} GiB per chip > {usable / GIB:.4g} GiB usable of the chip's "
                  f"{hbm / GIB:.4g} GiB HBM. What would help, most effective first:")
            for k in knobs(report):
                print(f"  - {k}")
            status = EXIT_DOES_NOT_FIT
    if F.out.value:
        with open(F.out.value, "w") as f:
            json.dump(report, f, indent=1)
    sys.exit(status)


if __name__ == "__main__":
    main()
