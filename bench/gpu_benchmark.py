"""GPU benchmark, JAX (this repo) vs diffusers (PyTorch eager) on the same weights, bf16, in one process:
SVD UNet forward at 14×512×256 and 14×1024×576, MobileVD forward (configs/paper/mobilevd.py, JAX only:
diffusers has no MobileVD), and the SVD training step at 14×512×256 (forward + backward of the EDM loss).

On the H200 machine (no diffusers there; bench/gpu_bench.sh installs the carried wheels first):
    bash bench/gpu_bench.sh                    # everything (estimated 5–6 min); JSON to $OUT (else bench/results)
    bash bench/gpu_bench.sh --quick            # SVD-512 and MobileVD forwards only
On a CPU, the same code path at a tiny size (small random 2-level UNets, 4 frames, few latent pixels, float32):
    .venv/bin/python bench/gpu_benchmark.py --tiny --out bench/results/gpu_benchmark_tiny_cpu.json
    PYTHONPATH=. python bench/gpu_benchmark.py --tiny --skip-torch   # JAX only (an env without torch)

Rows (batch 1, 14 frames; --rows picks, in this order):
  svd512    SVD UNet forward, 14×512×256 video (32×64 latents)          JAX vs diffusers
  mobilevd  MobileVD forward, 14×512×256 (configs/paper/mobilevd.py)     JAX only, random N(0, 0.02) weights
  svd1024   SVD UNet forward, 14×1024×576 (72×128 latents)              JAX vs diffusers
  train512  SVD training step at 14×512×256: forward + backward          JAX vs diffusers
Precision. Forward rows: parameters and activations bf16 on both sides (diffusers `.to(bfloat16)`; the
JAX state cast to bf16). Training step: float32 parameters and gradients, bf16 activations — the trainer's
`train.dtype=bfloat16` (mvd_jax/train/loss.py casts the UNet's inputs) and `torch.autocast(bfloat16)` —
on the loss of bench/train_step_vs_torch.py (EDM: x_σ = x₀ + σε, D = c_skip·x_σ + c_out·F(c_in·x_σ, …),
λ(σ)·mean (D − x₀)²) with the same σ and ε on both sides; no optimizer update.
Weights. The SVD rows use one diffusers UNet with every parameter random (tests/oracle.py) converted to our
NNX model (mvd_jax.convert), so both sides compute the same function: the relative L2 difference of the
outputs (or loss and gradient norm) is printed as a check (bf16: ~1e-2 expected).
Attention (JAX). `--attention` (default auto) is the AttentionForm set on every attention layer
(mvd_jax/models/attention_kernel.set_form): on a GPU auto = cuDNN fused attention where it applies (bf16,
head width ≤ 128, > 1 key), XLA's form otherwise; `xla` forces XLA's form. The form chosen for each
distinct attention shape is in the JSON. diffusers uses torch's scaled_dot_product_attention.

Measured. Time: each side called --warmup times, then --steps timed calls (median and min), JAX to
`block_until_ready`, torch to `torch.cuda.synchronize()`; the JAX compile (lower + compile) is timed apart.
Peak memory: JAX `compiled.memory_analysis()` (arguments + outputs + temporaries − aliased: parameters,
inputs, outputs and scratch of that program); torch the growth of `torch.cuda.max_memory_allocated()`
over one call plus the parameters and inputs it reads (what else the process holds is not counted).
FLOPs: dense matmul + conv multiply-adds × 2 from the jaxpr (mvd_jax/eval/flops.py, the paper's
convention; the train row counts forward + backward), traced with XLA's attention form so the attention
products are counted whatever form runs; XLA's cost analysis beside it. Achieved TFLOP/s = those FLOPs /
median time, for both sides, and as a fraction of the machine's bf16 matmul peak, measured here by both
frameworks (--matmul-n, 8192³) — the fraction uses the higher of the two peaks.
Time limit. Rows are skipped (recorded with the reason) when the elapsed time plus the row's expected cost
would pass --deadline-s, so the one command ends inside the device call; the JSON is rewritten after each
row. Set XLA_PYTHON_CLIENT_PREALLOCATE=false (done here unless set): JAX and torch share the GPU.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GIB = 2**30

# Rows, in run order: (what, video frames, height, width); latents are 8× smaller, 4 channels.
ROWS = {
    "svd512": ("SVD forward 512×256", 14, 256, 512),
    "mobilevd": ("MobileVD forward 512×256", 14, 256, 512),
    "svd1024": ("SVD forward 1024×576", 14, 576, 1024),
    "train512": ("SVD train step 512×256 (fwd+bwd)", 14, 256, 512),
}
# --tiny: the same rows on small random UNets at (frames, latent h, w) for a 2-core CPU: SVD's block pattern cut to
# two levels (attention on the top level, a plain level below; bench/train_step_vs_torch.py's `small`), one block
# per level, tests/oracle.py's "tiny" widths — XLA's CPU compile time grows with the block count.
TINY_WIDTHS = dict(block_out_channels=(32, 64), num_attention_heads=(2, 4), cross_attention_dim=32,
                   addition_time_embed_dim=8, projection_class_embeddings_input_dim=24, layers_per_block=1,
                   down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
                   up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"))
TINY_LATENTS = {"svd512": (4, 8, 16), "mobilevd": (4, 8, 16), "svd1024": (4, 16, 24), "train512": (4, 8, 16)}
# Seconds a row is expected to take on the H200 (compiles measured there: forward 36–39 s, train step ≈ 125 s),
# for --deadline-s; the SVD rows also pay once for building and converting the 1.5 B-parameter model.
EXPECTED_S = {"svd512": 75, "mobilevd": 50, "svd1024": 60, "train512": 170}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, from {list(ROWS)}")
    p.add_argument("--quick", action="store_true", help="rows svd512,mobilevd only")
    p.add_argument("--tiny", action="store_true", help="tiny random UNets and sizes (the CPU proof of the code path)")
    p.add_argument("--skip-torch", action="store_true", help="JAX side only (no torch/diffusers needed)")
    p.add_argument("--attention", default="auto", choices=["auto", "xla", "cudnn", "blocked"],
                   help="JAX attention form (models/attention_kernel.py)")
    p.add_argument("--platform", default=None, help="JAX_PLATFORMS (default: cpu with --tiny, else cuda)")
    p.add_argument("--warmup", type=int, default=None, help="default 3 (GPU), 1 (--tiny)")
    p.add_argument("--steps", type=int, default=None, help="timed calls per side; default 10 (GPU), 3 (--tiny)")
    p.add_argument("--dtype", default=None, choices=["bfloat16", "float32"],
                   help="activation (and forward-row parameter) dtype; default bfloat16, float32 with --tiny (a CPU "
                        "without bf16 units runs torch's bf16 convolutions ~100× slower)")
    p.add_argument("--matmul-n", type=int, default=None, help="matmul peak size; default 8192 (GPU), 256 (--tiny)")
    p.add_argument("--deadline-s", type=float, default=None,
                   help="skip rows that would end after this many seconds; default 420 (GPU), none (--tiny)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON path (default bench/results/gpu_benchmark[_tiny].json)")
    args = p.parse_args(argv)
    args.rows = ["svd512", "mobilevd"] if args.quick else [r for r in args.rows.split(",") if r]
    unknown = set(args.rows) - set(ROWS)
    if unknown:
        p.error(f"unknown rows {sorted(unknown)}; known: {list(ROWS)}")
    tiny = args.tiny
    args.platform = args.platform or ("cpu" if tiny else "cuda")
    args.warmup = args.warmup if args.warmup is not None else (1 if tiny else 3)
    args.steps = args.steps if args.steps is not None else (3 if tiny else 10)
    args.matmul_n = args.matmul_n or (256 if tiny else 8192)
    args.dtype = args.dtype or ("float32" if tiny else "bfloat16")
    args.deadline_s = args.deadline_s if args.deadline_s is not None else (float("inf") if tiny else 420.0)
    args.out = args.out or str(REPO / "bench" / "results" / f"gpu_benchmark{'_tiny' if tiny else ''}.json")
    return args


ARGS = parse_args() if __name__ == "__main__" else None
# Before JAX is imported: the platform (bench/train_step_vs_torch.py, imported below, would default it to
# the CPU) and no preallocation, since torch allocates on the same GPU.
if ARGS:
    os.environ["JAX_PLATFORMS"] = ARGS.platform
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
sys.path.insert(0, str(REPO / "tests"))  # oracle.py (the random diffusers UNet)
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from bench_io import write_json  # noqa: E402
# the NumPy batch/σ/ε and the trainer's defaults (torch is optional there)
from train_step_vs_torch import defaults, make_data, rel  # noqa: E402
from unet_forward import compile_jax, inputs_for, jax_forward, paper_model  # noqa: E402
from mvd_jax.diffusion import edm  # noqa: E402
from mvd_jax.eval.flops import jaxpr_flops  # noqa: E402
from mvd_jax.models import attention_kernel  # noqa: E402
from mvd_jax.models.unet_config import UNetConfig  # noqa: E402
from mvd_jax.train.model_state import ParamCodec  # noqa: E402


# ---- configs -----------------------------------------------------------------------------------------
def row_label(name: str, tiny: bool, size) -> str:
    return ROWS[name][0] + (f" [tiny: {size[0]}×{size[1]}×{size[2]} latents]" if tiny else "")


def row_model(name: str, tiny: bool) -> tuple[UNetConfig, tuple[int, int, int]]:
    """(UNetConfig, (frames, latent height, latent width)) of a row."""
    _, t, h, w = ROWS[name]
    if name == "mobilevd":
        cfg, size = paper_model("configs/paper/mobilevd.py")
    else:
        cfg, size = UNetConfig(), (t, h // 8, w // 8)
    if tiny:
        from mvd_jax.models.gates import temporal_block_names

        cfg, size = dataclasses.replace(cfg, **TINY_WIDTHS), TINY_LATENTS[name]
        # MobileVD's pruning list cut to the blocks this small UNet has
        kept = set(temporal_block_names(dataclasses.replace(cfg, pruned_temporal_blocks=())))
        cfg = dataclasses.replace(cfg, pruned_temporal_blocks=tuple(b for b in cfg.pruned_temporal_blocks if b in kept))
    return cfg, size


# ---- JAX helpers -------------------------------------------------------------------------------------
def random_unet_fast(cfg: UNetConfig, seed: int):
    """A UNet of `cfg` with N(0, 0.02) weights, for rows without a diffusers twin (timing only). Each leaf is
    a window of one 16 M-value NumPy draw at a leaf-dependent offset: a billion parameters in seconds, where
    a NumPy draw per value takes tens of seconds (unet_forward.random_unet) and one jitted draw per leaf
    compiles for minutes on the CPU."""
    from mvd_jax.models.unet import SpatioTemporalUNet

    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: SpatioTemporalUNet(cfg, rngs=nnx.Rngs(0))))
    leaves, treedef = jax.tree.flatten(abstract)
    pool = 0.02 * np.random.default_rng(seed).standard_normal(1 << 24, np.float32)
    arrays = []
    for i, x in enumerate(leaves):
        n = int(np.prod(x.shape))
        reps = -(-n // pool.size)
        src = np.tile(pool, reps) if reps > 1 else pool
        start = (i * 1_000_003) % (src.size - n + 1)
        arrays.append(jnp.asarray(src[start:start + n].reshape(x.shape).astype(x.dtype)))
    return nnx.merge(graphdef, jax.tree.unflatten(treedef, arrays))


def cast_floats(tree, dtype):
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def count_flops(fn, *args) -> float:
    """Paper-convention FLOPs (dense matmul/conv × 2) of fn on abstract arguments (no compile)."""
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), args)
    return float(jaxpr_flops(jax.make_jaxpr(fn)(*abstract)))


def time_calls(call, sync, warmup: int, steps: int) -> tuple[list[float], object]:
    """Runs call() warmup times, then `steps` timed times (each to sync(result)); (times, last result)."""
    out = None
    for _ in range(warmup):
        out = call()
        sync(out)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        out = call()
        sync(out)
        times.append(time.perf_counter() - t0)
    return times, out


def stats(times) -> dict:
    return dict(times_s=times, median_s=statistics.median(times), min_s=min(times))


def jax_peak_stats() -> dict | None:
    try:
        s = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001  (the CPU backend may have none)
        return None
    return {k: s[k] for k in ("peak_bytes_in_use", "bytes_in_use", "bytes_limit") if s and k in s} or None


# ---- torch helpers (imported only when torch runs) -------------------------------------------------
class Torch:
    def __init__(self, device: str):
        import torch

        self.torch, self.device = torch, device
        self.cuda = device == "cuda"

    def sync(self, _=None):
        if self.cuda:
            self.torch.cuda.synchronize()

    def peak_of(self, call) -> int:
        """Bytes by which torch's allocator peak grows over one call (0 on the CPU: no allocator stats)."""
        if not self.cuda:
            return 0
        t = self.torch
        t.cuda.synchronize()
        base = t.cuda.memory_allocated()
        t.cuda.reset_peak_memory_stats()
        call()
        t.cuda.synchronize()
        return t.cuda.max_memory_allocated() - base

    @staticmethod
    def nbytes(tensors) -> int:
        return sum(x.numel() * x.element_size() for x in tensors)


def matmul_peaks(n: int, dtype: str, torch_side: Torch | None, reps: int = 10, rounds: int = 5) -> dict:
    """n×n×n matmul FLOP/s in `dtype`: median over `rounds` of `reps` back-to-back products, per framework."""
    flops = 2 * n**3
    rng = np.random.default_rng(0)
    a_np = rng.standard_normal((n, n), np.float32)
    out = {"n": n, "dtype": dtype}
    a = jnp.asarray(a_np, dtype)
    f = jax.jit(lambda x, y: x @ y).lower(a, a).compile()
    f(a, a).block_until_ready()

    def jax_round():
        r = None
        for _ in range(reps):
            r = f(a, a)
        return r

    times, _ = time_calls(jax_round, jax.block_until_ready, 1, rounds)
    out["jax_flops_per_s"] = flops * reps / statistics.median(times)
    if torch_side is not None:
        t = torch_side.torch
        ta = t.from_numpy(a_np).to(torch_side.device, getattr(t, dtype))

        def torch_round():
            r = None
            for _ in range(reps):
                r = ta @ ta
            return r

        times, _ = time_calls(torch_round, torch_side.sync, 1, rounds)
        out["torch_flops_per_s"] = flops * reps / statistics.median(times)
    out["peak_flops_per_s"] = max(v for k, v in out.items() if k.endswith("_flops_per_s"))
    return out


# ---- rows --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def torch_guard(r: dict):
    try:
        yield
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        r.pop("torch", None)
        r["torch_error"] = f"{type(e).__name__}: {str(e)[:500]}"


@dataclasses.dataclass
class SvdPair:
    """SVD's UNet on both sides with the same weights (diffusers' random UNet converted), built once."""
    unet: object  # our NNX model, float32
    torch_model: object | None  # diffusers, float32, on the device (the training step)
    n_params: int
    torch_fwd: object | None = None  # the forward rows' copy in the activation dtype (diffusers `.to(bfloat16)`)


def build_svd(cfg: UNetConfig, args, torch_side: Torch | None) -> SvdPair:
    from mvd_jax.convert.diffusers_unet import unet_from_tensors

    if torch_side is None:
        unet = random_unet_fast(cfg, args.seed)
        return SvdPair(unet, None, sum(x.size for x in jax.tree.leaves(nnx.state(unet))))
    import oracle

    model = oracle.random_diffusers_unet(cfg.to_diffusers_dict(), seed=args.seed)
    tensors = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    unet = unet_from_tensors(tensors, cfg, source="random diffusers UNet")
    n = sum(v.size for v in tensors.values())
    del tensors
    # Built on the CPU and moved: under `with torch.device("cuda")` AlphaBlender.mix_factor (a legacy
    # torch.Tensor([...])) would stay on the CPU (accelerators.md).
    model = model.to(torch_side.device)
    fwd = copy.deepcopy(model).to(getattr(torch_side.torch, args.dtype)).eval()
    return SvdPair(unet, model, n, fwd)


def forward_row(name: str, cfg, size, unet, torch_model, n_params: int, args, torch_side) -> dict:
    t, h, w = size
    form = attention_kernel.AttentionForm(args.attention)
    x32 = inputs_for(cfg, 1, t, h, w, args.seed)
    # the sample and context in the activation dtype; timestep and added ids stay float32 (embedded, then cast)
    x = {k: jnp.asarray(v, args.dtype if k in ("sample", "context") else jnp.float32) for k, v in x32.items()}
    attention_kernel.set_form(unet, attention_kernel.XLA)
    count_fn, _ = jax_forward(unet)
    attention_kernel.set_form(unet, form)
    fn, state = jax_forward(unet)
    state = cast_floats(state, args.dtype)
    flops = count_flops(count_fn, state, *x.values())
    with attention_kernel.recording() as forms:
        compiled, compile_s, jax_peak, xla_flops = compile_jax(fn, state, x)
    jt, jout = time_calls(lambda: compiled(state, *x.values()), jax.block_until_ready, args.warmup, args.steps)
    r = dict(row=name, what=row_label(name, args.tiny, size), params=int(n_params), latents=[1, t, h, w],
             flops=flops, xla_flops=xla_flops, attention=args.attention, attention_forms=forms,
             jax=dict(compile_s=compile_s, peak_bytes=int(jax_peak), **stats(jt)))
    del state
    if torch_model is not None:
        with torch_guard(r):  # a failing torch side keeps the JAX numbers
            tt, dev, model = torch_side.torch, torch_side.device, torch_model
            tdt = getattr(tt, args.dtype)
            tx = dict(sample=tt.from_numpy(np.ascontiguousarray(x32["sample"].transpose(0, 1, 4, 2, 3))).to(dev, tdt),
                      timestep=tt.from_numpy(x32["timestep"]).to(dev),
                      encoder_hidden_states=tt.from_numpy(x32["context"]).to(dev, tdt),
                      added_time_ids=tt.from_numpy(x32["added_time_ids"]).to(dev))

            def call():
                with tt.inference_mode():
                    return model(**tx, return_dict=False)[0]

            times, tout = time_calls(call, torch_side.sync, args.warmup, args.steps)
            grow = torch_side.peak_of(call)
            peak = grow + Torch.nbytes(list(model.parameters()) + list(tx.values())) if torch_side.cuda else None
            r["torch"] = dict(peak_bytes=peak, **stats(times))
            r["rel_l2_jax_vs_torch"] = rel(np.asarray(jout.astype(jnp.float32)).transpose(0, 1, 4, 2, 3),
                                           tout.float().cpu().numpy())
    return r


def train_program(codec: ParamCodec, dtype):
    """(params, batch, σ, ε) → (loss, gradients, gradient norm): the loss of bench/train_step_vs_torch.py's
    jax_program (σ and ε given) with mvd_jax/train/loss.py's cast of the UNet's inputs to `dtype`."""

    def loss_fn(params, batch, sigma, noise):
        model = codec.merge(params)
        latents = batch["latents"]
        b, frames = latents.shape[:2]
        noisy = latents + sigma.reshape(b, 1, 1, 1, 1) * noise
        cond = jnp.repeat(batch["cond_latent"][:, None], frames, axis=1)

        def model_fn(xin, c_noise, ctx, ids):
            return model(xin.astype(dtype), c_noise, ctx.astype(dtype), ids).astype(jnp.float32)

        denoised = edm.denoise(model_fn, noisy, sigma, cond, batch["image_embeds"], batch["added_time_ids"])
        return jnp.mean(jnp.mean(jnp.square(denoised - latents), axis=(1, 2, 3, 4)) * edm.loss_weight(sigma))

    def step(params, batch, sigma, noise):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch, sigma, noise)
        return loss, grads, optax.tree.norm(grads)

    return step


def train_row(name: str, cfg, size, unet, torch_model, n_params: int, args, torch_side) -> dict:
    """Forward + backward of the EDM loss: float32 parameters and gradients, activations in args.dtype."""
    t, h, w = size
    tr = defaults().train  # the trainer's ln σ ~ N(P_mean, P_std²)
    batch_np, sigmas, noises = make_data(cfg, 1, t, h, w, 1, tr.p_mean, tr.p_std, args.seed)
    sigma_np, noise_np = sigmas[0], noises[0]

    attention_kernel.set_form(unet, attention_kernel.XLA)
    count_step = train_program(ParamCodec(unet), args.dtype)
    attention_kernel.set_form(unet, attention_kernel.AttentionForm(args.attention))
    codec = ParamCodec(unet)
    step = jax.jit(train_program(codec, args.dtype))
    params = codec.to_dict(unet)
    batch = {k: jnp.asarray(v) for k, v in batch_np.items()}
    sigma, noise = jnp.asarray(sigma_np), jnp.asarray(noise_np)
    flops = count_flops(count_step, params, batch, sigma, noise)
    with attention_kernel.recording() as forms:
        t0 = time.perf_counter()
        compiled = step.lower(params, batch, sigma, noise).compile()
        compile_s = time.perf_counter() - t0
    ma = compiled.memory_analysis()
    jax_peak = ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes - ma.alias_size_in_bytes
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    jt, (jloss, _, jnorm) = time_calls(lambda: compiled(params, batch, sigma, noise), jax.block_until_ready,
                                       args.warmup, args.steps)
    r = dict(row=name, what=row_label(name, args.tiny, size), params=int(n_params), latents=[1, t, h, w],
             flops=flops, xla_flops=float(cost.get("flops", float("nan"))), attention=args.attention,
             attention_forms=forms,
             jax=dict(compile_s=compile_s, peak_bytes=int(jax_peak), loss=float(jloss), grad_norm=float(jnorm),
                      **stats(jt)))
    del params
    if torch_model is not None:
        with torch_guard(r):  # a failing torch side keeps the JAX numbers
            from train_step_vs_torch import torch_loss

            tt, dev = torch_side.torch, torch_side.device
            model = torch_model.train()
            nchw = lambda a: tt.from_numpy(np.ascontiguousarray(np.moveaxis(a, -1, -3))).to(dev)
            tb = dict(latents=nchw(batch_np["latents"]), cond_latent=nchw(batch_np["cond_latent"]),
                      image_embeds=tt.from_numpy(batch_np["image_embeds"]).to(dev),
                      added_time_ids=tt.from_numpy(batch_np["added_time_ids"]).to(dev))
            tsig, tnoise = tt.from_numpy(sigma_np).to(dev), nchw(noise_np)
            params_t = list(model.parameters())
            last = {}

            def call():
                with tt.autocast(device_type=dev, dtype=tt.bfloat16, enabled=args.dtype == "bfloat16"):
                    loss = torch_loss(model, tb, tsig, tnoise)
                loss.backward()
                last["loss"] = loss.detach()
                last["norm"] = tt.linalg.vector_norm(tt.stack([tt.linalg.vector_norm(p.grad) for p in params_t
                                                               if p.grad is not None]))
                for p in params_t:  # gradients freed between steps (JAX returns them and they are dropped)
                    p.grad = None
                return loss

            # The gradient's global norm is part of each timed call on both sides (JAX computes it in the step).
            times, _ = time_calls(call, torch_side.sync, args.warmup, args.steps)
            grow = torch_side.peak_of(call)
            peak = grow + Torch.nbytes(params_t + list(tb.values()) + [tsig, tnoise]) if torch_side.cuda else None
            tl, tn = float(last["loss"]), float(last["norm"])
            r["torch"] = dict(peak_bytes=peak, loss=tl, grad_norm=tn, **stats(times))
            r["loss_rel_diff"] = abs(r["jax"]["loss"] - tl) / abs(tl)
            r["grad_norm_rel_diff"] = abs(r["jax"]["grad_norm"] - tn) / abs(tn)
    return r


# ---- report ------------------------------------------------------------------------------------------
def form_summary(forms) -> str:
    """'cudnn 6, xla 10': distinct attention shapes per form chosen."""
    counts = {}
    for f in forms:
        counts[f["form"]] = counts.get(f["form"], 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + " shapes"


def table(result: dict) -> str:
    """A Markdown table for README "Performance"."""
    peak = result["matmul"]["peak_flops_per_s"]
    unit, scale = ("ms", 1e3)
    rows = [f"| {result['title']} | diffusers eager (SDPA) {unit} | this repo, JAX jit {unit} | speed-up | "
            "JAX compile s | TFLOP per call (jaxpr) | JAX TFLOP/s (% of peak) | torch TFLOP/s (% of peak) | "
            "JAX peak GiB | torch peak GiB | check |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if "skipped" in r or "error" in r:
            why = f"skipped: {r['skipped']}" if "skipped" in r else f"failed: {r['error'][:200]}"
            rows.append(f"| {ROWS[r['row']][0]} | {why} |||||||||")
            continue
        j, tq = r["jax"], r.get("torch")
        f = r["flops"]
        tf = lambda s: f"{f / s / 1e12:.3g} ({100 * f / s / peak:.0f} %)"
        gib = lambda b: "–" if b is None else f"{b / GIB:.2f}"
        check = (f"torch failed: {r['torch_error'][:120]}" if "torch_error" in r else "–" if tq is None
                 else f"rel L2 {r['rel_l2_jax_vs_torch']:.1e}" if "rel_l2_jax_vs_torch" in r
                 else f"loss {r['loss_rel_diff']:.1e}, ‖g‖ {r['grad_norm_rel_diff']:.1e}")
        if "attention_error" in r:
            check += f"; JAX attention {r['attention']} (`{result['attention']}` failed: {r['attention_error'][:120]})"
        t_ms = "–" if tq is None else f"{tq['median_s'] * scale:.1f}"
        speedup = "–" if tq is None else f"{tq['median_s'] / j['median_s']:.2f}×"
        rows.append(
            f"| {r['what']} | {t_ms} | {j['median_s'] * scale:.1f} | {speedup} | {j['compile_s']:.1f} | "
            f"{f / 1e12:.4g} | {tf(j['median_s'])} | {'–' if tq is None else tf(tq['median_s'])} | "
            f"{gib(j['peak_bytes'])} | {gib(None if tq is None else tq['peak_bytes'])} | {check} |")
    m = result["matmul"]
    lines = "\n".join(rows)
    peaks = ", ".join(f"{k.split('_')[0]} {v / 1e12:.3g}" for k, v in m.items() if k.endswith("_flops_per_s")
                      and not k.startswith("peak"))
    by_name = {r["row"]: r for r in result["rows"] if "jax" in r}
    extra = ""
    if "svd512" in by_name and "mobilevd" in by_name:
        svd, mvd = by_name["svd512"], by_name["mobilevd"]
        ratio = svd["jax"]["median_s"] / mvd["jax"]["median_s"]
        extra = (f"\nMobileVD vs SVD forward at 512×256 in JAX: {ratio:.2f}× faster "
                 f"(FLOP ratio {svd['flops'] / mvd['flops']:.2f}×).")
    return (f"{lines}\n\n{m['dtype']} matmul peak {m['n']}³ (TFLOP/s): {peaks}; % of peak uses the higher. "
            f"Median of {result['steps']} calls after {result['warmup']} warm-up; {result['device']}; "
            f"{result['versions_line']}; JAX attention `{result['attention']}`.{extra}")


def run_row(name: str, svd: SvdPair | None, args, torch_side, result: dict):
    """One row's measurements; builds SVD's pair on first use. Returns (row dict, svd)."""
    cfg, size = row_model(name, args.tiny)
    if name == "mobilevd":
        unet = random_unet_fast(cfg, args.seed)
        n = sum(x.size for x in jax.tree.leaves(nnx.state(unet)))
        return forward_row(name, cfg, size, unet, None, n, args, torch_side), svd
    if svd is None:
        tb = time.perf_counter()
        svd = build_svd(cfg, args, torch_side)
        result["svd_build_s"] = time.perf_counter() - tb
        print(f"SVD UNet built and converted ({svd.n_params / 1e6:.1f} M parameters) in "
              f"{result['svd_build_s']:.1f} s", flush=True)
    if name == "train512":
        return train_row(name, cfg, size, svd.unet, svd.torch_model, svd.n_params, args, torch_side), svd
    return forward_row(name, cfg, size, svd.unet, svd.torch_fwd, svd.n_params, args, torch_side), svd


def main(args):
    t_start = time.perf_counter()
    torch_side = None
    versions = {"python": platform.python_version(), "jax": jax.__version__,
                "flax": __import__("flax").__version__}
    if not args.skip_torch:
        import diffusers

        torch_side = Torch("cuda" if args.platform in ("cuda", "gpu") else "cpu")
        if not torch_side.cuda:  # on shared CPU cores torch's OpenMP team stalls (bench/train_step_vs_torch.py)
            torch_side.torch.set_num_threads(1)
        versions.update(torch=torch_side.torch.__version__, diffusers=diffusers.__version__)
    dev = jax.devices()[0]
    device = getattr(dev, "device_kind", str(dev))
    if torch_side is not None and torch_side.cuda:
        device += f" (torch: {torch_side.torch.cuda.get_device_name()})"
    print(f"JAX on {device} ({jax.default_backend()}), {versions}; rows {args.rows}; attention {args.attention}",
          flush=True)
    matmul = matmul_peaks(args.matmul_n, args.dtype, torch_side)
    print(f"{args.dtype} matmul peak: " + ", ".join(f"{k} {v / 1e12:.2f} TFLOP/s" for k, v in matmul.items()
                                             if k.endswith("_flops_per_s")), flush=True)
    result = dict(benchmark="gpu_benchmark", tiny=args.tiny, dtype=args.dtype, title=f"UNet, {args.dtype}, batch 1" + (
        " (TINY random UNets, not SVD)" if args.tiny else ", 14 frames"), device=device, platform=jax.default_backend(),
                  versions=versions, versions_line=", ".join(f"{k} {v}" for k, v in versions.items()),
                  attention=args.attention, warmup=args.warmup, steps=args.steps, seed=args.seed, matmul=matmul,
                  rows=[], env={k: os.environ.get(k) for k in ("XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_FLAGS",
                                                                 "JAX_COMPILATION_CACHE_DIR")})
    svd = None
    for name in args.rows:
        elapsed = time.perf_counter() - t_start
        expected = 0 if args.tiny else EXPECTED_S[name] + (0 if svd is not None or name == "mobilevd" else 40)
        if elapsed + expected > args.deadline_s:
            result["rows"].append(dict(row=name, skipped=f"time: {elapsed:.0f} s elapsed + ≈{expected} s > "
                                                           f"deadline {args.deadline_s:.0f} s"))
            print(f"{name}: skipped ({result['rows'][-1]['skipped']})", flush=True)
            continue
        t0 = time.perf_counter()
        try:
            r, svd = run_row(name, svd, args, torch_side, result)
        except Exception as e:  # noqa: BLE001  (one device call: keep the other rows and say what broke)
            traceback.print_exc()
            r = dict(row=name, error=f"{type(e).__name__}: {str(e)[:500]}")
            elapsed = time.perf_counter() - t_start
            if args.attention != "xla" and elapsed + expected <= args.deadline_s:
                # e.g. cuDNN refusing a shape: the row once more with XLA's attention, the failure on record
                print(f"{name}: failed with attention {args.attention}; again with xla", flush=True)
                try:
                    r2, svd = run_row(name, svd, argparse.Namespace(**{**vars(args), "attention": "xla"}),
                                      torch_side, result)
                    r = {**r2, "attention_error": r["error"]}
                except Exception as e2:  # noqa: BLE001
                    traceback.print_exc()
                    r["error_with_xla"] = f"{type(e2).__name__}: {str(e2)[:500]}"
        r["row_wall_s"] = time.perf_counter() - t0
        result["rows"].append(r)
        if "error" in r:
            print(f"{name}: FAILED after {r['row_wall_s']:.0f} s: {r['error']}", flush=True)
        else:
            tq = r.get("torch")
            print(f"{name}: JAX {1e3 * r['jax']['median_s']:.2f} ms (compile {r['jax']['compile_s']:.1f} s, "
                  f"{r['jax']['peak_bytes'] / GIB:.2f} GiB)" + ("" if tq is None else
                  f", torch {1e3 * tq['median_s']:.2f} ms") + f", {r['flops'] / 1e12:.4g} TFLOP; attention "
                  f"{form_summary(r['attention_forms'])}; row {r['row_wall_s']:.0f} s", flush=True)
        result["jax_memory_stats"] = jax_peak_stats()
        result["wall_s"] = time.perf_counter() - t_start
        write_json(args.out, result)
    result["table_markdown"] = table(result)
    result["wall_s"] = time.perf_counter() - t_start
    write_json(args.out, result)
    print("\n" + result["table_markdown"])
    print(f"\ntotal {result['wall_s']:.0f} s")


if __name__ == "__main__":
    main(ARGS)
