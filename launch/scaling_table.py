"""The scaling table: the smallest v5e / v5p / v6e slice on which full-UNet training of SVD 512×256, SVD 1024×576,
MobileVD and MobileVD-HD (and MobileVD's adversarial phase) fits at 1, 2 and 4 clips per chip — from the AOT
compile of the real train step on this CPU host (python -m mvd_jax.train_compile), not guessed.

    python launch/scaling_table.py                                  # every cell not recorded yet, in priority order
    python launch/scaling_table.py --rows svd_512x256 --generations v5e --per_chip 1
    python launch/scaling_table.py --only svd_512x256:v5e:2x2:1     # one compile: ROW:TOPOLOGY:CLIPS_PER_CHIP
    python launch/scaling_table.py --table                          # print what launch/scaling_results.json holds
    python launch/scaling_table.py --plan_only                      # no compiles: the train state per chip

Setting of every cell: all parameters trained (AdamW + EMA, float32 state; the adversarial row adds the
discriminator's heads and its frozen UNet-encoder copy), `train.remat=True`, `train.dtype=bfloat16`,
`train.attention=auto` (on TPU: the Pallas flash kernel for the spatial self-attention, XLA's form for the
rest; models/attention_kernel.py), XLA:TPU's windowed einsum off (`train.tpu_collective_matmul=False`, the
default: its buffers grow with the FSDP width; train/sharding.py), FSDP over every chip (`mesh.data=1,
mesh.fsdp=chips`), B clips of 14 frames per chip (global batch = B × chips), the config's resolution.

The search for one (row, generation, B). Compiles are expensive here (an SVD-size step: tens of minutes and
up to ~20 GB of host RAM, one at a time), so no compile is spent where arithmetic already decides:
- under FSDP a chip holds 1/N of the train state (exact, from the shardings) and 1/N of the float32
  gradients (a quarter of the state's bytes), while its activations and per-layer gathered weights depend on
  B, not on N. So one compiled cell on N ≥ 2 chips predicts any other N′ of the same row, generation and B:
  total(N′) = total(N) − 1.25·state/N + 1.25·state/N′; before any compile of that triple, a compiled cell of
  the same row and B on another generation gives the activation part. A 1-chip compile predicts nothing
  (unsharded, its parameter-sized temporaries are not separable from the activations). More clips per chip
  never need less memory, so before any compile with B clips a compiled cell with fewer gives a lower
  bound, which may rule a slice out (never in).
- candidates are tried from the smallest slice upwards; a slice whose prediction exceeds HBM is recorded as
  "predicted" (not compiled) and skipped; the first slice predicted to fit is compiled, and the search goes
  on upwards until a compiled slice fits. So "smallest that fits" is always a compiled cell, and the slices
  below it are ruled out by a compiled neighbour's arithmetic or by their own compile.
Each compile runs in its own process (`train_compile --out`); results are appended to
launch/scaling_results.json as they come, so the table can be filled over several sessions; each records
the compile's wall time and the process's peak host RSS.
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
# row → (config, phase)
ROWS = {"svd_512x256": ("configs/paper/svd_512x256.py", "diffusion"),
        "svd_1024x576": ("configs/paper/svd_1024x576.py", "diffusion"),
        "mobilevd": ("configs/paper/mobilevd.py", "diffusion"),
        "mobilevd_hd": ("configs/paper/mobilevd_hd.py", "diffusion"),
        "mobilevd_adversarial": ("configs/paper/mobilevd.py", "adversarial")}
PER_CHIP = (1, 2, 4)
# Candidate slices per generation, smallest first (single slices; multi-slice adds data parallelism, not memory).
CANDIDATES = {"v5e": ["v5e:1x1", "v5e:2x2", "v5e:2x4", "v5e:4x4", "v5e:4x8", "v5e:8x8", "v5e:8x16", "v5e:16x16"],
              "v5p": ["v5p:2x2x1", "v5p:2x2x2", "v5p:2x2x4", "v5p:2x4x4", "v5p:4x4x4"],
              "v6e": ["v6e:1x1", "v6e:2x2", "v6e:2x4", "v6e:4x4", "v6e:4x8", "v6e:8x8", "v6e:8x16", "v6e:16x16"]}
UTILIZATION = 0.4
# float32 gradients of the trainable parameters, as a share of the train state (params + EMA + 2 Adam moments)
GRADIENT_SHARE = 0.25
GIB = 1024 ** 3


def chips_of(topology: str) -> int:
    sys.path.insert(0, str(ROOT))
    from mvd_jax.train_compile import parse_tpu

    return parse_tpu(topology).chips


def compile_cell(row: str, topology: str, per_chip: int, fast: bool = False, plan_only: bool = False) -> dict:
    chips = chips_of(topology)
    config, phase = ROWS[row]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        cmd = [sys.executable, "-m", "mvd_jax.train_compile", f"--config={config}", f"--topology={topology}",
               "--config.mesh.data=1", f"--config.mesh.fsdp={chips}", f"--config.train.batch_size={chips * per_chip}",
               "--config.train.remat=True", "--config.train.dtype=bfloat16", f"--config.train.phase={phase}",
               f"--utilization={UTILIZATION}", f"--out={out}"]
        if fast:
            cmd.append("--fast_compile")
        if plan_only:
            cmd.append("--plan_only")
        print("$ " + " ".join(cmd[1:]), flush=True)
        t0 = time.time()
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        print("\n".join(proc.stdout.splitlines()), flush=True)
        if proc.returncode not in (0, 3) or not out.exists():
            raise RuntimeError(f"{row} on {topology} ×{per_chip} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        report = json.loads(out.read_text())
    report.update(row=row, per_chip=per_chip, command=" ".join(cmd[1:]), wall_s=time.time() - t0,
                  fast_compile=fast, commit=_commit())
    return report


def _commit() -> str | None:
    """The checked-out commit the cell was compiled from (a result belongs to the code that made it)."""
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return proc.stdout.strip() or None


def load() -> list:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else []


def _key(r: dict) -> tuple:
    return r["row"], r["topology"], r.get("per_chip", r["batch_size"] // r["devices"]), bool(r.get("planned_only"))


def save(report: dict):
    rows = [r for r in load() if _key(r) != _key(report)]
    RESULTS.write_text(json.dumps(rows + [report], indent=1) + "\n")


def compiled(results: list, row: str, topology: str, per_chip: int):
    return next((r for r in results if _key(r) == (row, topology, per_chip, False)), None)


def _generation(topology: str) -> str:
    return topology.split(":")[0]


def needed(report: dict) -> float:
    """Bytes per chip the compiled plan needs (the compiler's own total, or what it said when it refused)."""
    return report["total_bytes"] if "total_bytes" in report else report["oom_used_bytes"]


def predict(results: list, row: str, topology: str, per_chip: int, state_bytes: float):
    """(predicted bytes per chip on `topology`, the compiled cell it comes from) — from a compiled cell of the
    same row and clips per chip on ≥ 2 chips: the same generation first (the most chips, the nearest in its
    sharding), else another generation's activation part. `state_bytes`: the whole train state (all chips),
    so a chip of N holds state_bytes / N, and GRADIENT_SHARE of it again as the float32 gradients, which FSDP
    reduce-scatters the same way. A single-chip compile is no basis: nothing is sharded there, so its
    parameter-sized working set (gradients, the optimizer update's temporaries) cannot be told apart from
    the activations, and scaling from it would rule out slices that fit (measured: MobileVD-HD's 1-chip plan
    put every v5e slice over HBM)."""
    same = [r for r in results if not r.get("planned_only") and r["row"] == row and r.get("per_chip") == per_chip
            and r["devices"] >= 2 and ("total_bytes" in r or "oom_used_bytes" in r)]
    same.sort(key=lambda r: (_generation(r["topology"]) != _generation(topology), -r["devices"]))
    sharded = state_bytes * (1 + GRADIENT_SHARE)
    for r in same:
        rest = needed(r) - sharded / r["devices"]  # activations, per-layer gathered weights, batch
        return sharded / chips_of(topology) + rest, r
    return None, None


def at_least(results: list, row: str, topology: str, per_chip: int, state_bytes: float):
    """(bytes per chip, basis): `predict` from a compiled cell with this many clips per chip; with none, the
    largest prediction from a compiled cell with FEWER clips — a lower bound (more clips never need less
    memory), enough to rule a slice out at 2 or 4 clips from the 1-clip compiles without compiling it."""
    guess, basis = predict(results, row, topology, per_chip, state_bytes)
    if guess is not None:
        return guess, basis
    floors = [predict(results, row, topology, fewer, state_bytes) for fewer in PER_CHIP if fewer < per_chip]
    return max(((g, b) for g, b in floors if g is not None), key=lambda gb: gb[0], default=(None, None))


def recorded_state_bytes(results: list, row: str) -> float | None:
    """The whole train state in bytes (parameters, EMA, Adam's moments, frozen weights) from the row's
    --plan_only sizing in `results`, or None when there is none yet. The batch's share of the arguments is
    small and counted as state here (pessimistic for larger slices)."""
    plan = next((r for r in results if r["row"] == row and r.get("planned_only")), None)
    return None if plan is None else plan["argument_bytes"] * plan["devices"]


def state_bytes_of(row: str) -> float:
    """`recorded_state_bytes`, sized first (--plan_only: seconds, no compile) and cached in the results file
    when the row has no sizing yet."""
    state = recorded_state_bytes(load(), row)
    if state is None:
        plan = compile_cell(row, CANDIDATES["v5p"][0], 1, plan_only=True)
        save(plan)
        state = recorded_state_bytes([plan], row)
    return state


def skip(results: list, row: str, topology: str, per_chip: int, state_bytes: float):
    """Why `topology` needs no compile for (row, clips per chip) — the search's one rule (module docstring):
    ("state", None, None) when the train state alone exceeds the chip's HBM, ("predicted", bytes, basis) when a
    compiled cell's arithmetic (`at_least`) puts it over; None: compile it."""
    hbm = _hbm(topology)
    if state_bytes / chips_of(topology) > hbm:
        return "state", None, None
    guess, basis = at_least(results, row, topology, per_chip, state_bytes)
    if guess is not None and guess > hbm:
        return "predicted", guess, basis
    return None


def search(row: str, generation: str, per_chip: int, fast: bool) -> dict | None:
    """Compile upwards until a slice fits (see the module docstring); returns the smallest that fits."""
    state = state_bytes_of(row)
    for topology in CANDIDATES[generation]:
        results = load()
        done = compiled(results, row, topology, per_chip)
        if done is None:
            why = skip(results, row, topology, per_chip, state)
            if why is not None:
                reason, guess, basis = why
                if reason == "predicted":
                    print(f"skip {row} {topology} ×{per_chip}: predicted {guess / GIB:.2f} GiB per chip > "
                          f"{_hbm(topology) / GIB:.4g} GiB from the compiled {basis['topology']} ×{basis['per_chip']}",
                          flush=True)
                continue
            done = compile_cell(row, topology, per_chip, fast)
            save(done)
        if done.get("fits"):
            return done
    return None


def _hbm(topology: str) -> float:
    sys.path.insert(0, str(ROOT))
    from mvd_jax.train_compile import parse_tpu

    return parse_tpu(topology).generation.hbm_gib * GIB


# ---- tables ------------------------------------------------------------------------------------------------
def smallest_table(results: list) -> str:
    """Per row, generation and clips per chip: the smallest compiled slice that fits."""
    lines = ["| config | per chip | " + " | ".join(CANDIDATES) + " |", "|---|---|" + "---|" * len(CANDIDATES)]
    for row in ROWS:
        for per_chip in PER_CHIP:
            cells = []
            for gen, topologies in CANDIDATES.items():
                fit = next((compiled(results, row, t, per_chip) for t in topologies
                            if (compiled(results, row, t, per_chip) or {}).get("fits")), None)
                if fit is None:
                    tried = [t for t in topologies if compiled(results, row, t, per_chip)]
                    basis = _ruled_out(results, row, gen, per_chip)
                    pending = _pending(results, row, gen, per_chip)
                    if tried and pending:
                        cells.append(f"search not finished (compiled {', '.join(tried)}: no fit; next {pending})")
                    elif tried:
                        cells.append(f"no fit on any slice (compiled {', '.join(tried)}; larger ones predicted over HBM)")
                    elif basis:
                        cells.append(f"no fit on any slice (every slice predicted over HBM from the compiled {basis})")
                    else:
                        cells.append("not compiled yet")
                else:
                    chips = f"{fit['devices']} chip{'s' if fit['devices'] > 1 else ''}"
                    cells.append(f"{fit['topology']} ({chips}): {fit['total_bytes'] / GIB:.1f} of "
                                 f"{fit['hbm_bytes'] / GIB:.0f} GiB, {fit['predicted_step_s']:.2f} s/step")
            if any(c != "not compiled yet" for c in cells):
                lines.append(f"| {row} | {per_chip} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pending(results: list, row: str, generation: str, per_chip: int) -> str | None:
    """The smallest slice of `generation` the search would still compile for (row, clips per chip) — neither
    compiled nor skipped by its rule — or None when the search is over."""
    state = recorded_state_bytes(results, row)
    if state is None:
        return None
    return next((t for t in CANDIDATES[generation] if compiled(results, row, t, per_chip) is None
                 and skip(results, row, t, per_chip, state) is None), None)


def _ruled_out(results: list, row: str, generation: str, per_chip: int) -> str | None:
    """The compiled cell (as "TOPOLOGY ×B") from which every slice of `generation` is predicted over HBM by the
    search's own rule (`skip`), so such a generation gets no compile at all — else None."""
    state = recorded_state_bytes(results, row)
    if state is None:
        return None
    basis = None
    for topology in CANDIDATES[generation]:
        why = skip(results, row, topology, per_chip, state)
        if why is None:
            return None
        basis = why[2] or basis
    return f"{basis['topology']} ×{basis['per_chip']}" if basis else None


def cells_table(results: list) -> str:
    lines = ["| config | slice | clips/chip | fits | per-chip memory (compiler's plan) | HBM | FLOPs / step (jaxpr) | "
             f"predicted step at {UTILIZATION:.0%} | compile | host peak RSS |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted((r for r in results if not r.get("planned_only")),
                    key=lambda r: (list(ROWS).index(r["row"]) if r["row"] in ROWS else 99, _generation(r["topology"]),
                                   r.get("per_chip", 1), r["devices"])):
        if "temp_bytes" in r:
            mem = (f"{r['total_bytes'] / GIB:.2f} GiB (state + batch {r['argument_bytes'] / GIB:.2f}, temporaries "
                   f"{r['temp_bytes'] / GIB:.2f})")
        else:
            mem = f"{r['oom_used_bytes'] / GIB:.2f} GiB (the TPU compiler ran out of HBM)"
        rss = f"{r['host_peak_rss_bytes'] / GIB:.1f} GiB" if r.get("host_peak_rss_bytes") else "–"
        how = f"{r['compile_s'] / 60:.0f} min" + (" (fast)" if r.get("fast_compile") else "")
        lines.append(f"| {r['row']} | {r['topology']} ({r['accelerator_type']}) | {r.get('per_chip', 1)} | "
                     f"{'yes' if r['fits'] else 'no'} | {mem} | {r['hbm_bytes'] / GIB:.0f} GiB | "
                     f"{r['jaxpr_flops_per_step'] / 1e12:.1f} T | {r['predicted_step_s']:.2f} s | {how} | {rss} |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", action="append", default=[], help="ROW:TOPOLOGY:CLIPS_PER_CHIP, e.g. svd_512x256:v5e:2x2:1")
    p.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--generations", nargs="*", default=list(CANDIDATES), choices=list(CANDIDATES))
    p.add_argument("--per_chip", nargs="*", type=int, default=list(PER_CHIP))
    p.add_argument("--table", action="store_true", help="only print the recorded results")
    p.add_argument("--fast_compile", action="store_true")
    p.add_argument("--plan_only", action="store_true", help="no compiles: size the train state per chip")
    args = p.parse_args()
    if args.plan_only:
        for row in args.rows:
            state_bytes_of(row)
    elif not args.table:
        for cell in args.only:
            row, gen, shape, per_chip = cell.split(":")
            save(compile_cell(row, f"{gen}:{shape}", int(per_chip), args.fast_compile))
        if not args.only:
            # priority: every row at one clip per chip on each generation first, then 2 and 4 clips
            for per_chip in args.per_chip:
                for gen in args.generations:
                    for row in args.rows:
                        try:
                            search(row, gen, per_chip, args.fast_compile)
                        except RuntimeError as e:  # e.g. the compile killed for host memory: the next cell
                            print(f"FAILED, not recorded (a rerun retries it): {e}", flush=True)
    print("Full-UNet training: AdamW + EMA on every parameter, remat, bf16 activations, FSDP over all chips, "
          "B 14-frame clips per chip. Regenerate: python launch/scaling_table.py")
    results = load()
    print("\nSmallest compiled slice that fits:\n" + smallest_table(results))
    print("\nEvery compiled cell:\n" + cells_table(results))


if __name__ == "__main__":
    main()
