"""UNet forward speed: this repo's JAX UNet vs diffusers' PyTorch UNet on the same weights, MobileVD vs SVD
in JAX, and this machine's matmul peak, in one process.

    .venv/bin/python bench/unet_forward.py --out /tmp/unet_forward.json             # small + mid (minutes)
    .venv/bin/python bench/unet_forward.py --full --out /tmp/unet_forward_full.json  # + SVD 14×512×256 and
                                                                                      #   MobileVD vs SVD (long)

Rows (each: batch 1 unless --batch; float32 on both sides; `jax.jit` compiled once, timed after --warmup
calls, median and min of --steps; PyTorch eager under torch.inference_mode, same threads as XLA's pool):
  small     the bench issue's small config: 2 levels, channels (32, 64), heads (2, 4), 8 frames, 32×32 latents
            (bench/train_step_vs_torch.py `small`)
  mid       SVD's 4-level block pattern at 0.4 of its width: channels (128, 256, 512, 512), heads
            (2, 4, 8, 8) (head width 64 like SVD's), cross-attention 1024, 14 frames at 32×64 latents
            (= 512×256 video)
  svd       SVD's UNet (diffusers' default config, 1.52 B parameters) at 14×512×256 — with --full
  mobilevd / svd_512x256 (JAX only, with --full): configs/paper/mobilevd.py (collapsed cross-attention,
            temporal multiscaling, 70 % of temporal blocks pruned, funnels merged) vs configs/paper/
            svd_512x256.py, random weights (NumPy, N(0, 0.02)): the speed-up MobileVD's architecture buys.
The JAX and PyTorch sides of a row start from the same random weights (diffusers' model built by
tests/oracle.random_diffusers_unet, converted with mvd_jax.convert) and take the same inputs; the relative
L2 difference of their outputs is printed (a wrong comparison would show here).

Measured besides time: XLA's FLOPs of the compiled forward (cost analysis) and the achieved FLOP/s as a
fraction of the machine's matmul peak (a jitted 4096² float32 matmul, median of 10); JAX peak memory from
`compiled.memory_analysis()` (arguments + outputs + temporaries − aliased), PyTorch's as the malloc peak
during one forward (glibc mallinfo2, bench/train_step_vs_torch.MallocPeak) plus its parameters.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # oracle.py
sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from bench_io import write_json  # noqa: E402
from train_step_vs_torch import CORES, MallocPeak, model_and_size, rel  # noqa: E402
from mvd_jax.models.unet_config import UNetConfig  # noqa: E402

GIB = 2**30


# ---- configs ------------------------------------------------------------------------------------------
def row_config(name: str) -> tuple[UNetConfig, tuple[int, int, int]]:
    """(plain SVD-math UNetConfig, (frames, latent height, latent width))."""
    if name == "small":
        return model_and_size("small")
    if name == "mid":
        return UNetConfig(block_out_channels=(128, 256, 512, 512), num_attention_heads=(2, 4, 8, 8),
                          num_frames=14), (14, 32, 64)
    if name == "svd":
        return UNetConfig(), (14, 32, 64)
    raise ValueError(name)


def inputs_for(cfg: UNetConfig, b: int, t: int, h: int, w: int, seed: int = 0) -> dict:
    """Channels-last NumPy inputs (our layout)."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    return dict(sample=rng.standard_normal((b, t, h, w, cfg.in_channels)).astype(f32),
                timestep=np.full((b,), 0.25 * np.log(10.0), f32),  # c_noise(σ = 10)
                context=rng.standard_normal((b, 1, cfg.context_dims[0])).astype(f32),
                added_time_ids=np.tile(np.asarray([[6.0, 127.0, 0.02]], f32), (b, 1)))


# ---- JAX --------------------------------------------------------------------------------------------
def jax_forward(unet):
    graphdef, state = nnx.split(unet)

    def fwd(state, sample, timestep, context, added_time_ids):
        return nnx.merge(graphdef, state)(sample, timestep, context, added_time_ids)

    return jax.jit(fwd), state


def compile_jax(fn, state, x: dict):
    t0 = time.perf_counter()
    compiled = fn.lower(state, *x.values()).compile()
    compile_s = time.perf_counter() - t0
    ma = compiled.memory_analysis()
    peak = ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes - ma.alias_size_in_bytes
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return compiled, compile_s, peak, float(cost.get("flops", float("nan")))


def random_unet(cfg: UNetConfig, seed: int = 0):
    """A UNet of `cfg` with N(0, 0.02) NumPy weights (fast for 1.5 B parameters; timing only)."""
    from mvd_jax.models.unet import SpatioTemporalUNet

    abstract = nnx.eval_shape(lambda: SpatioTemporalUNet(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    rng = np.random.default_rng(seed)
    leaves, treedef = jax.tree.flatten(state)
    arrays = [jnp.asarray((0.02 * rng.standard_normal(x.shape, np.float32)).astype(x.dtype)) for x in leaves]
    return nnx.merge(graphdef, jax.tree.unflatten(treedef, arrays))


def matmul_peak(n: int = 4096, reps: int = 10) -> float:
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32))
    f = jax.jit(lambda x, y: x @ y).lower(a, a).compile()
    f(a, a).block_until_ready()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f(a, a).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)


# ---- one row: JAX vs PyTorch -----------------------------------------------------------------------
def compare_row(name: str, args) -> dict:
    import torch

    from mvd_jax.convert.diffusers_unet import unet_from_tensors
    import oracle

    cfg, (t, h, w) = row_config(name)
    b = args.batch
    torch_model = oracle.random_diffusers_unet(cfg.to_diffusers_dict(), seed=args.seed).eval()
    tensors = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
    n_params = sum(v.size for v in tensors.values())
    unet = unet_from_tensors(tensors, cfg, source="random diffusers UNet")
    del tensors
    x = inputs_for(cfg, b, t, h, w, args.seed)
    fn, state = jax_forward(unet)
    jx = {k: jax.device_put(v) for k, v in x.items()}
    compiled, compile_s, jax_peak, flops = compile_jax(fn, state, jx)

    tx = dict(sample=torch.from_numpy(np.ascontiguousarray(x["sample"].transpose(0, 1, 4, 2, 3))),
              timestep=torch.from_numpy(x["timestep"]), encoder_hidden_states=torch.from_numpy(x["context"]),
              added_time_ids=torch.from_numpy(x["added_time_ids"]))

    def run_jax():
        t0 = time.perf_counter()
        out = compiled(state, *jx.values())
        out.block_until_ready()
        return time.perf_counter() - t0, out

    def run_torch():
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = torch_model(**tx, return_dict=False)[0]
        return time.perf_counter() - t0, out

    for _ in range(args.warmup):
        _, jout = run_jax()
        _, tout = run_torch()
    with MallocPeak() as torch_mem:
        run_torch()
    jt, tt = [], []
    for _ in range(args.steps):  # alternating: both sides see the same background load
        time.sleep(args.pause)
        jt.append(run_jax()[0])
        time.sleep(args.pause)
        tt.append(run_torch()[0])
    err = rel(np.asarray(jout).transpose(0, 1, 4, 2, 3), tout.numpy())
    param_bytes = 4 * n_params
    return dict(row=name, params=int(n_params), shape=[b, t, h, w], compile_s=compile_s,
                jax_median_s=statistics.median(jt), jax_min_s=min(jt),
                torch_median_s=statistics.median(tt), torch_min_s=min(tt),
                speedup=statistics.median(tt) / statistics.median(jt), xla_flops=flops,
                jax_flops_per_s=flops / statistics.median(jt), jax_peak_bytes=int(jax_peak),
                torch_peak_bytes=int(param_bytes + (torch_mem.delta or 0)), rel_l2_jax_vs_torch=err)


def jax_only_row(name: str, cfg: UNetConfig, size, args) -> dict:
    t, h, w = size
    unet = random_unet(cfg, args.seed)
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(unet)))
    x = {k: jax.device_put(v) for k, v in inputs_for(cfg, args.batch, t, h, w, args.seed).items()}
    fn, state = jax_forward(unet)
    compiled, compile_s, peak, flops = compile_jax(fn, state, x)
    for _ in range(args.warmup):
        compiled(state, *x.values()).block_until_ready()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        compiled(state, *x.values()).block_until_ready()
        times.append(time.perf_counter() - t0)
    return dict(row=name, params=int(n_params), shape=[args.batch, t, h, w], compile_s=compile_s,
                jax_median_s=statistics.median(times), jax_min_s=min(times), xla_flops=flops,
                jax_flops_per_s=flops / statistics.median(times), jax_peak_bytes=int(peak))


def paper_model(path: str) -> tuple[UNetConfig, tuple[int, int, int]]:
    from mvd_jax.settings import latent_geometry, load_config, unet_config

    c = load_config(str(REPO / path))
    cfg = unet_config(c)
    factor, _ = latent_geometry(c)
    return cfg, (c.frames, c.height // factor, c.width // factor)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", default="small,mid", help="comma-separated JAX-vs-PyTorch rows: small, mid, svd")
    p.add_argument("--full", action="store_true", help="add the svd row and MobileVD vs SVD-512×256 (JAX)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--pause", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    import torch

    torch.set_num_threads(CORES)
    load = os.getloadavg()
    print(f"{CORES} cores ({platform.processor() or platform.machine()}), load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; jax {jax.__version__}, torch {torch.__version__}")
    peak = matmul_peak()
    print(f"matmul peak (4096² float32, jitted): {peak / 1e9:.1f} GFLOP/s")
    rows = [r for r in args.rows.split(",") if r] + (["svd"] if args.full and "svd" not in args.rows else [])
    results = dict(cores=CORES, load_average=list(load), matmul_peak_flops_per_s=peak, rows=[], jax_only=[])
    header = f"{'row':<12}{'params':>9}{'JAX s':>9}{'torch s':>9}{'torch/JAX':>10}{'JAX GF/s':>10}{'% peak':>8}" \
             f"{'JAX GiB':>9}{'torch GiB':>10}{'rel L2':>9}"
    print(header)
    for name in rows:
        r = compare_row(name, args)
        r["fraction_of_peak"] = r["jax_flops_per_s"] / peak
        results["rows"].append(r)
        print(f"{name:<12}{r['params'] / 1e6:>8.1f}M{r['jax_median_s']:>9.3f}{r['torch_median_s']:>9.3f}"
              f"{r['speedup']:>10.2f}{r['jax_flops_per_s'] / 1e9:>10.1f}{100 * r['fraction_of_peak']:>7.0f}%"
              f"{r['jax_peak_bytes'] / GIB:>9.2f}{r['torch_peak_bytes'] / GIB:>10.2f}{r['rel_l2_jax_vs_torch']:>9.1e}",
              flush=True)
    if args.full:
        for name, path in (("svd_512x256", "configs/paper/svd_512x256.py"), ("mobilevd", "configs/paper/mobilevd.py")):
            cfg, size = paper_model(path)
            r = jax_only_row(name, cfg, size, args)
            r["fraction_of_peak"] = r["jax_flops_per_s"] / peak
            results["jax_only"].append(r)
            print(f"{name:<12}{r['params'] / 1e6:>8.1f}M{r['jax_median_s']:>9.3f}{'':>19}"
                  f"{r['jax_flops_per_s'] / 1e9:>10.1f}{100 * r['fraction_of_peak']:>7.0f}%{r['jax_peak_bytes'] / GIB:>9.2f}",
                  flush=True)
        s, m = results["jax_only"]
        results["mobilevd_speedup"] = s["jax_median_s"] / m["jax_median_s"]
        print(f"MobileVD vs SVD-512×256 forward (JAX): {results['mobilevd_speedup']:.2f}× faster")
    if args.out:
        write_json(args.out, results)


if __name__ == "__main__":
    main()
