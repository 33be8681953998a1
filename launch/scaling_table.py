"""The scaling table: the smallest v5e / v5p / v6e slice where full-UNet training of SVD 512×256, SVD 1024×576
and MobileVD fits, with per-chip memory and FLOPs — from the AOT compile of the real train step on this CPU
host (python -m mvd_jax.train_compile), not guessed.

    python launch/scaling_table.py                      # every row: compile upwards until a slice fits
    python launch/scaling_table.py --only svd_512x256:v5e:2x4   # one cell
    python launch/scaling_table.py --table              # print what launch/scaling_results.json holds
    python launch/scaling_table.py --plan_only          # no compiles: the train state per chip (a lower bound)

Setting of every cell (stated in the table): all parameters trained (AdamW, EMA), `train.remat=True`,
`train.dtype=bfloat16` (float32 parameters), FSDP over every chip (`mesh.data=1, mesh.fsdp=chips`), one
14-frame clip per chip (global batch = chips), the config's resolution. Each compile runs in its own
process (`train_compile --out`), results are appended to launch/scaling_results.json as they come, so
the table can be filled in over several sessions. An SVD-size step compiled for TPU needs more than a
2-core, 23 GB host has: the SVD 512×256 compile for v5e:2x2 passed 20 GB of host RAM after 47 minutes and
was stopped — run the full table on a machine with more memory (a 4-chip v5e TPU VM has 192 GB).
`--plan_only` needs no compile (≈25 s and 0.5 GB per cell here): it sizes the train state per chip exactly from the shardings
(parameters, EMA, Adam moments — a lower bound; activations and gradients come on top) and counts the
FLOPs, which rules slices out and gives the smallest candidate to compile.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "launch" / "scaling_results.json"
CONFIGS = {"svd_512x256": "configs/paper/svd_512x256.py", "svd_1024x576": "configs/paper/svd_1024x576.py",
           "mobilevd": "configs/paper/mobilevd.py"}
# Candidate slices per generation, smallest first (single slices; multi-slice adds data parallelism, not memory).
CANDIDATES = {"v5e": ["v5e:1x1", "v5e:2x2", "v5e:2x4", "v5e:4x4", "v5e:4x8", "v5e:8x8", "v5e:8x16", "v5e:16x16"],
              "v5p": ["v5p:2x2x1", "v5p:2x2x2", "v5p:2x2x4", "v5p:2x4x4", "v5p:4x4x4"],
              "v6e": ["v6e:1x1", "v6e:2x2", "v6e:2x4", "v6e:4x4", "v6e:4x8", "v6e:8x8", "v6e:8x16", "v6e:16x16"]}
GIB = 1024 ** 3


def compile_cell(row: str, topology: str, fast: bool = False, plan_only: bool = False) -> dict:
    sys.path.insert(0, str(ROOT))
    from mvd_jax.train_compile import parse_tpu

    chips = parse_tpu(topology).chips
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        cmd = [sys.executable, "-m", "mvd_jax.train_compile", f"--config={CONFIGS[row]}", f"--topology={topology}",
               "--config.mesh.data=1", f"--config.mesh.fsdp={chips}", f"--config.train.batch_size={chips}",
               "--config.train.remat=True", "--config.train.dtype=bfloat16", f"--out={out}"]
        if fast:
            cmd.append("--fast_compile")
        if plan_only:
            cmd.append("--plan_only")
        print("$ " + " ".join(cmd), flush=True)
        t0 = time.time()
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        print("\n".join(line for line in proc.stdout.splitlines()), flush=True)
        if proc.returncode not in (0, 3) or not out.exists():
            raise RuntimeError(f"{row} on {topology} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        report = json.loads(out.read_text())
    report.update(row=row, command=" ".join(cmd[1:]), wall_s=time.time() - t0)
    return report


def load() -> list:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else []


def save(report: dict):
    key = lambda r: (r["row"], r["topology"], bool(r.get("planned_only")))  # noqa: E731
    rows = [r for r in load() if key(r) != key(report)]
    RESULTS.write_text(json.dumps(rows + [report], indent=1) + "\n")


def table(rows: list) -> str:
    lines = ["| config | slice | chips | fits | per-chip memory | HBM | FLOPs / step (jaxpr) | FLOPs / chip | "
             "predicted step at 40 % | how |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["row"], r["topology"].split(":")[0], r["devices"])):
        if r.get("planned_only"):
            mem, how = f"state {r['argument_bytes'] / GIB:.2f} GiB + activations (not compiled)", "--plan_only"
            fits = "state only" if r["fits"] is None else "no"
        elif "temp_bytes" in r:
            mem = (f"{r['total_bytes'] / GIB:.2f} GiB (args {r['argument_bytes'] / GIB:.2f} + temps "
                   f"{r['temp_bytes'] / GIB:.2f})")
            how, fits = f"compiled in {r['compile_s']:.0f} s", "yes" if r["fits"] else "no"
        else:
            mem = f"{r['oom_used_bytes'] / GIB:.2f} GiB (the TPU compiler ran out of HBM)"
            how, fits = "compiled", "no"
        lines.append(f"| {r['row']} | {r['topology']} ({r['accelerator_type']}) | {r['devices']} | {fits} | {mem} | "
                     f"{r['hbm_bytes'] / GIB:.0f} GiB | {r['jaxpr_flops_per_step'] / 1e12:.1f} T | "
                     f"{r['jaxpr_flops_per_step'] / r['devices'] / 1e12:.2f} T | {r['predicted_step_s']:.2f} s | "
                     f"{how} |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", action="append", default=[], help="ROW:TOPOLOGY, e.g. svd_512x256:v5e:2x4")
    p.add_argument("--rows", nargs="*", default=list(CONFIGS))
    p.add_argument("--generations", nargs="*", default=list(CANDIDATES))
    p.add_argument("--table", action="store_true", help="only print the recorded results")
    p.add_argument("--fast_compile", action="store_true")
    p.add_argument("--plan_only", action="store_true", help="no compiles: size the train state per chip (lower bound)")
    args = p.parse_args()
    if not args.table:
        cells = [tuple(c.split(":", 1)) for c in args.only]
        mode = args.plan_only
        find = lambda row, topo: next((r for r in load() if r["row"] == row and r["topology"] == topo  # noqa: E731
                                       and bool(r.get("planned_only")) == mode), None)
        if cells:
            for row, topo in cells:
                save(compile_cell(row, topo, args.fast_compile, mode))
        else:
            for row in args.rows:
                for gen in args.generations:
                    for topo in CANDIDATES[gen]:  # upwards until one fits (--plan_only: until the state fits)
                        if find(row, topo) is None:
                            save(compile_cell(row, topo, args.fast_compile, mode))
                        if find(row, topo)["fits"] is not False:
                            break
    print("Full-UNet training: AdamW + EMA on every parameter, remat, bf16 activations, FSDP over all chips, "
          "one 14-frame clip per chip. Regenerate: python launch/scaling_table.py [--plan_only]")
    print(table(load()))


if __name__ == "__main__":
    main()
