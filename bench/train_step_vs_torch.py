"""One training step (forward + backward + AdamW update) of the same small SVD-shaped UNet in JAX (this
repo) and in PyTorch (diffusers' UNetSpatioTemporalConditionModel), on the same data, in one process.

    .venv/bin/python bench/train_step_vs_torch.py --out /tmp/train_step_vs_torch.json

    options: --model small|demo|tiny|svd_like  --batch 2  --frames F --height H --width W (latent size)
             --warmup 2 --steps 5 --pause 0.5  --torch-threads N  --torch-adamw default|foreach|fused
             --trainer-step

With the defaults: 3–5 minutes on this repo's 2 shared CPU cores, depending on their load (45–80 s of
it XLA's compile); --trainer-step adds a second compile (~2 more minutes).

Models. `small` (default) is the bench issue's small config: 2 levels, block_out_channels (32, 64),
heads (2, 4), 8 frames, 32×32 latents. tests/oracle.py has no 2-level config, so it is made here from
SMALL_CONFIGS["tiny"]'s other keys (cross_attention_dim 32, layers_per_block 1, …) and SVD's block
pattern cut to two levels (attention on the top level, a plain level below). `demo` is the trainer's demo model
(configs/demo.py) with its MobileVD options (collapse_cross_attention, temporal_multiscale) switched off,
because diffusers has neither: both sides then compute the same SVD math; its default size is the
demo's (8 frames, 16×32 latents). `tiny` and `svd_like` are tests/oracle.py's SMALL_CONFIGS (4 levels).

Both sides start from the same weights: diffusers builds the UNet with random values in every parameter
(oracle.random_diffusers_unet) and mvd_jax.convert's unet_from_tensors maps its state_dict into ours.

The step, identical on both sides:
    loss  = the EDM denoising loss of mvd_jax/train/loss.py (diffusion_loss, with cond_dropout 0 and no
            gates): x_σ = x_0 + σ·ε; D = c_skip·x_σ + c_out·F([c_in·x_σ, cond latent], c_noise(σ)),
            L = mean_clips (σ²+1)/σ² · mean (D − x_0)². σ (ln σ ~ N(0.7, 1.6²), the trainer's defaults)
            and ε are drawn in NumPy once per step index and given to both, so the losses compare.
    grads = autodiff of that loss (JAX: jax.value_and_grad in one jitted program with the state donated,
            like the trainer's step; PyTorch: eager loss.backward()).
    update= global-norm clipping at 1.0, then AdamW (lr 1e-4, β 0.9/0.999, ε 1e-8, weight decay 0: the
            trainer's optimizer defaults) through mvd_jax/train/model_state.make_optimizer. Its schedule
            warms up linearly from lr 0 over max(1, warmup) steps, so step 0 has lr 0; the PyTorch side
            is given the same schedule value at each step (param_groups' lr).
The JAX step leaves out what the trainer's step adds around this (EMA, the finite-check select); pass
--trainer-step to also time the trainer's own jitted step (mvd_jax/train/trainer.build_programs), which
draws σ and ε itself, so its loss is not compared.

Timing. Each side first runs `--warmup` steps (JAX: after jit.lower().compile(), whose time is reported
as "compile"; PyTorch is eager and has no compile). The `--steps` timed steps then alternate JAX,
PyTorch, JAX, … so both see the same background load (the machine may be shared), with `--pause`
seconds of idle before each so neither side's spinning worker threads are charged to the other; each
JAX step is timed to jax.block_until_ready of its outputs. PyTorch uses torch.set_num_threads
(default: the cores this process may run on, = os.cpu_count() unless pinned with taskset); XLA's CPU
backend uses those cores by default. Median and min are reported. On a machine that other jobs load,
PyTorch's multi-threaded step swings wildly (seen here at 16×16 latents: 2 s to 16 s per step with 2
threads on 2 busy cores, a steady 0.5 s with 1 thread): its OpenMP regions split work statically and wait for the
slowest thread, so one descheduled thread stalls the step; XLA's work-stealing pool degrades more
gently. For a steadier comparison there, pin both sides to one core:
    taskset -c 1 .venv/bin/python bench/train_step_vs_torch.py --out /tmp/one_core.json

Peak memory.
    JAX: compiled.memory_analysis(): argument + output + temp − alias bytes (the donated state's output
         reuses the argument buffers, so without "− alias" the state would count twice).
    PyTorch: bytes that stay resident (parameters, AdamW's moments, batch, σ, ε) + the step's transient
         peak measured with glibc's mallinfo2() (bytes handed out by malloc, all arenas and mmapped
         chunks; PyTorch's CPU allocator is malloc) polled by a thread during one extra, untimed step,
         minus its value just before the step: gradients, saved activations and temporaries. Unlike
         RSS or ru_maxrss, this drops when memory is freed, and it ignores what JAX holds.
    The same mallinfo2 measurement is made on the JAX step and kept in the JSON (jax.malloc_peak_delta_
    bytes) but not printed: it misses XLA's temp buffer when the runtime keeps that allocation between
    executions (seen at 16×16 latents), so it is a lower bound there.

Where JAX's memory went (small model, 32×32 latents): the spatial self-attention over 1024 tokens.
jax.nn.dot_product_attention on CPU materialises the (clips, heads, 1024, 1024) float32 scores and
probabilities (128 MiB each, in the forward and again in the backward of each attention block), while
torch's CPU scaled_dot_product_attention is a fused kernel that never forms them: JAX's peak was 2559 MiB
vs PyTorch's 767. The CPU attention of mvd_jax/models/attention_kernel.py (blocked loops, and a custom
gradient that recomputes each block's probabilities) brought the JAX step to 1241 MiB and 2.86 → 2.30 s
(README "Performance").

Sanity checks printed (and in the JSON): the first step's loss on both sides and their relative
difference (float32, different op orders: ~1e-7–1e-5), the largest one over all steps; the same for the
gradient's global norm before clipping (the backward agrees, not just the forward); and the relative
L2 difference between the two sides' total parameter updates after all steps. The last is ~1e-3, not
~1e-6: a few parameters have a gradient that is zero in exact arithmetic (e.g. a per-channel bias that
a GroupNorm with one channel per group removes again), so both sides hold float32 rounding noise there,
and AdamW divides by √v and turns that noise into full lr-sized steps of arbitrary sign.
"""
from __future__ import annotations

import argparse
import ctypes
import dataclasses
import os
import platform
import resource
import statistics
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # a CPU comparison: torch here is the CPU build

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # tests/oracle.py: the random diffusers UNet the tests use

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
try:
    import torch  # noqa: E402

    import oracle  # noqa: E402
except ImportError:  # a JAX-only environment: bench/gpu_benchmark.py --skip-torch uses the NumPy/JAX helpers
    torch = oracle = None
from bench_io import write_json  # noqa: E402
from mvd_jax.settings import load_config, unet_config  # noqa: E402
from mvd_jax.convert.diffusers_unet import unet_from_tensors, unet_to_tensors  # noqa: E402
from mvd_jax.diffusion import edm  # noqa: E402
from mvd_jax.models.unet_config import UNetConfig  # noqa: E402
from mvd_jax.settings import defaults  # noqa: E402
from mvd_jax.train.model_state import ParamCodec, make_optimizer  # noqa: E402

MIB = 2**20
CORES = len(os.sched_getaffinity(0))  # os.cpu_count(), unless the process is pinned (taskset)


# ---- models -----------------------------------------------------------------------------------------
def model_and_size(name: str) -> tuple[UNetConfig, tuple[int, int, int]]:
    """(plain-SVD UNetConfig, default (frames, latent height, latent width))."""
    if name == "small":
        base = {k: v for k, v in oracle.SMALL_CONFIGS["tiny"].items()
                if k not in ("block_out_channels", "num_attention_heads")}
        cfg = UNetConfig.from_dict(dict(
            base, block_out_channels=(32, 64), num_attention_heads=(2, 4),
            # SVD's pattern cut to two levels: attention where the resolution is highest, none below.
            down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
            up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal")))
        return cfg, (8, 32, 32)
    if name == "demo":
        c = load_config(str(REPO / "configs" / "demo.py"))
        # diffusers has no MobileVD options; off on both sides, the weights and the math are SVD's.
        cfg = dataclasses.replace(unet_config(c), collapse_cross_attention=False, temporal_multiscale=False,
                                  num_frames=c.frames)
        f = c.autoencoder.pixel_factor
        return cfg, (c.frames, c.height // f, c.width // f)
    return UNetConfig.from_dict(oracle.SMALL_CONFIGS[name]), (8, 32, 32)


def make_data(cfg: UNetConfig, b, t, h, w, n_steps, p_mean, p_std, seed):
    """One batch (channels-last, our layout) plus σ and ε for each step index, all NumPy float32."""
    c = cfg.out_channels
    if cfg.in_channels != 2 * c:
        raise SystemExit(f"in_channels {cfg.in_channels} must be 2×out_channels {c} (noisy + conditioning latent)")
    dims = set(cfg.context_dims)
    if len(dims) != 1:
        raise SystemExit("the image embedding needs one cross_attention_dim for every level")
    rng = np.random.default_rng(seed)
    f32 = np.float32
    batch = dict(
        latents=rng.standard_normal((b, t, h, w, c)).astype(f32),
        cond_latent=rng.standard_normal((b, h, w, c)).astype(f32),
        image_embeds=rng.standard_normal((b, 1, dims.pop())).astype(f32),
        # fps − 1, motion bucket, noise augmentation: what the trainer feeds; extra ids (if any) in [0, 1]
        added_time_ids=np.concatenate([np.tile([[6.0, 127.0, 0.02]], (b, 1)),
                                       rng.uniform(0, 1, (b, cfg.num_added_time_ids - 3))], 1).astype(f32),
    )
    sigmas = np.exp(p_mean + p_std * rng.standard_normal((n_steps, b))).astype(f32)
    noises = rng.standard_normal((n_steps, b, t, h, w, c)).astype(f32)
    return batch, sigmas, noises


# ---- the JAX step -----------------------------------------------------------------------------------
def jax_program(unet, tx):
    codec = ParamCodec(unet)

    def loss_fn(params, batch, sigma, noise):
        # diffusion_loss (mvd_jax/train/loss.py) with σ and ε given instead of drawn from a key, and
        # cond_dropout 0: the same edm.denoise / edm.loss_weight it calls.
        model = codec.merge(params)
        latents = batch["latents"]
        b, t = latents.shape[:2]
        noisy = latents + sigma.reshape(b, 1, 1, 1, 1) * noise
        cond = jnp.repeat(batch["cond_latent"][:, None], t, axis=1)
        denoised = edm.denoise(lambda x, c_noise, ctx, ids: model(x, c_noise, ctx, ids),
                               noisy, sigma, cond, batch["image_embeds"], batch["added_time_ids"])
        per_clip = jnp.mean(jnp.square(denoised - latents), axis=(1, 2, 3, 4)) * edm.loss_weight(sigma)
        return jnp.mean(per_clip)

    def step(state, batch, sigma, noise):
        loss, grads = jax.value_and_grad(loss_fn)(state["params"], batch, sigma, noise)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        # The gradient's global norm before clipping (the trainer logs it too): compared with torch's.
        new = {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state}
        return new, (loss, optax.tree.norm(grads))

    params = codec.to_dict(unet)
    state = {"params": params, "opt_state": tx.init(params)}
    # Donated like the trainer's step: the new state is written into the old state's buffers.
    return codec, state, jax.jit(step, donate_argnums=(0,))


def trainer_program(cfg: UNetConfig, unet, size, batch_size, opt):
    """The trainer's own jitted step (EMA, finite checks, σ/ε from its key) from build_programs."""
    from mvd_jax.convert.diffusers_unet import abstract_unet
    from mvd_jax.train import sharding as shd
    from mvd_jax.settings import resolve
    from mvd_jax.train.trainer import build_programs

    frames, h, w = size
    c = ml_collections.ConfigDict(dict(name="bench", model=cfg.to_dict(), frames=frames, height=h, width=w))
    c = resolve(c)
    c.train.batch_size, c.train.cond_dropout = batch_size, 0.0
    c.optimizer = opt
    tx, schedule = make_optimizer(c.optimizer)
    mesh = shd.make_mesh(dict(c.mesh))
    programs = build_programs(c, abstract_unet(cfg), mesh, None, tx, schedule)
    params = programs.codec.to_dict(unet)
    state = programs.init_state({k: params[k] for k in programs.train_keys})
    frozen = {k: params[k] for k in programs.frozen_keys}
    return programs, state, frozen


# ---- the PyTorch step -------------------------------------------------------------------------------
def torch_loss(model, batch, sigma, noise):
    """The same EDM loss in diffusers' layout (B, T, C, H, W)."""
    latents = batch["latents"]
    b, t = latents.shape[:2]
    s = sigma.view(b, 1, 1, 1, 1)
    noisy = latents + s * noise
    cond = batch["cond_latent"][:, None].expand(-1, t, -1, -1, -1)
    unet_input = torch.cat([noisy / torch.sqrt(s**2 + 1.0), cond], dim=2)
    v = model(unet_input, 0.25 * torch.log(sigma), batch["image_embeds"], batch["added_time_ids"],
              return_dict=False)[0]
    denoised = noisy / (s**2 + 1.0) + (-s / torch.sqrt(s**2 + 1.0)) * v
    per_clip = torch.mean(torch.square(denoised - latents), dim=(1, 2, 3, 4)) * (sigma**2 + 1.0) / sigma**2
    return per_clip.mean()


def torch_step(model, optimizer, params, batch, sigma, noise, lr, clip):
    for group in optimizer.param_groups:  # make_optimizer's schedule value for this step
        group["lr"] = lr
    loss = torch_loss(model, batch, sigma, noise)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)  # the norm before clipping
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)  # gradients are freed between steps, as in JAX
    return loss.detach(), grad_norm


# ---- measurement helpers ----------------------------------------------------------------------------
class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]


class MallocPeak:
    """Peak bytes in use from malloc (glibc mallinfo2: arenas' used chunks + mmapped chunks) while the
    block runs, minus the value on entry; polled from a thread (the measured code releases the GIL)."""

    def __init__(self, period_s: float = 2e-4):
        self.period_s = period_s
        try:
            self._libc = ctypes.CDLL("libc.so.6")
            self._libc.mallinfo2.restype = _MallInfo2
        except (OSError, AttributeError):  # not glibc ≥ 2.33: report nothing rather than a wrong number
            self._libc = None

    def _in_use(self) -> int:
        m = self._libc.mallinfo2()
        return m.uordblks + m.hblkhd

    def __enter__(self):
        self.delta = None
        if self._libc is None:
            return self
        self._stop = threading.Event()
        self._base = self._peak = self._in_use()

        def poll():
            while not self._stop.is_set():
                self._peak = max(self._peak, self._in_use())
                time.sleep(self.period_s)

        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._libc is not None:
            self._stop.set()
            self._thread.join()
            self.delta = max(self._peak, self._in_use()) - self._base


def tree_bytes(tree) -> int:
    return sum(x.nbytes for x in jax.tree.leaves(tree))


def torch_state_bytes(params, optimizer) -> int:
    moments = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    return sum(t.numel() * t.element_size() for t in list(params) + moments)


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


# ---- main -------------------------------------------------------------------------------------------
def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="small", choices=["small", "demo", "tiny", "svd_like"])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--frames", type=int, default=None, help="default: the model's (8)")
    p.add_argument("--height", type=int, default=None, help="latent height; default: the model's")
    p.add_argument("--width", type=int, default=None, help="latent width; default: the model's")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--torch-adamw", default="default", choices=["default", "foreach", "fused"],
                   help="torch.optim.AdamW implementation (default: what torch picks on CPU, the for-loop)")
    p.add_argument("--trainer-step", action="store_true",
                   help="also time the trainer's own step (build_programs: + EMA, finite checks)")
    p.add_argument("--torch-threads", type=int, default=CORES,
                   help="torch.set_num_threads (default: every core this process may use)")
    p.add_argument("--pause", type=float, default=0.5, help="seconds of idle between the sides' timed steps")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args()
    if args.warmup < 1 or args.steps < 1:
        raise SystemExit("--warmup and --steps must be ≥ 1")

    load_before = os.getloadavg()
    torch.set_num_threads(args.torch_threads)
    cfg, (t0, h0, w0) = model_and_size(args.model)
    b, t, h, w = args.batch, args.frames or t0, args.height or h0, args.width or w0
    opt = defaults().optimizer
    # No warm-up ramp (make_optimizer still gives step 0 lr 0, then the constant lr).
    opt.learning_rate, opt.clip_norm, opt.warmup_steps = args.lr, args.clip, 0
    n_steps = args.warmup + args.steps + 1  # + 1: the untimed memory-measurement step
    tr = defaults().train
    batch_np, sigmas, noises = make_data(cfg, b, t, h, w, n_steps, tr.p_mean, tr.p_std, args.seed)
    print(f"model {args.model}: block_out_channels {cfg.block_out_channels}, heads {cfg.heads}, "
          f"in/out channels {cfg.in_channels}/{cfg.out_channels}; batch {b} × {t} frames × {h}×{w} latents; "
          f"{CORES} CPU cores, load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")

    # ---- identical starting weights ----
    torch_model = oracle.random_diffusers_unet(cfg.to_diffusers_dict(), seed=args.seed).train()
    initial = {k: v.detach().numpy().copy() for k, v in torch_model.state_dict().items()}
    unet = unet_from_tensors(initial, cfg, source="random diffusers UNet")
    n_params = sum(v.size for v in initial.values())
    print(f"{n_params / 1e6:.2f} M parameters")

    # ---- JAX: compile (timed separately) and warm up ----
    tx, schedule = make_optimizer(opt)
    lrs = [float(schedule(i)) for i in range(n_steps)]
    codec, state, jstep = jax_program(unet, tx)
    jbatch = jax.device_put(batch_np)
    jsig, jnoise = [jax.device_put(x) for x in sigmas], [jax.device_put(x) for x in noises]  # no slicing in the loop
    tc = time.perf_counter()
    compiled = jstep.lower(state, jbatch, jsig[0], jnoise[0]).compile()
    jax_compile_s = time.perf_counter() - tc
    ma = compiled.memory_analysis()
    jax_mem = dict(argument=ma.argument_size_in_bytes, output=ma.output_size_in_bytes,
                   alias=ma.alias_size_in_bytes, temp=ma.temp_size_in_bytes)
    jax_peak = jax_mem["argument"] + jax_mem["output"] + jax_mem["temp"] - jax_mem["alias"]
    jax_losses, jax_norms, jax_times = [], [], []

    def run_jax(i):
        nonlocal state
        start = time.perf_counter()
        state, (loss, grad_norm) = compiled(state, jbatch, jsig[i], jnoise[i])
        jax.block_until_ready((state, loss, grad_norm))
        elapsed = time.perf_counter() - start
        jax_losses.append(float(loss))
        jax_norms.append(float(grad_norm))
        return elapsed

    jax_warm = [run_jax(i) for i in range(args.warmup)]

    # ---- PyTorch: optimizer, warm up ----
    tparams = list(torch_model.parameters())
    kind = {"default": {}, "foreach": dict(foreach=True), "fused": dict(fused=True)}[args.torch_adamw]
    optimizer = torch.optim.AdamW(tparams, lr=args.lr, betas=(opt.b1, opt.b2), eps=opt.eps,
                                  weight_decay=opt.weight_decay, **kind)
    to_t = lambda a, nchw: torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, -1, -3) if nchw else a))
    tbatch = dict(latents=to_t(batch_np["latents"], True), cond_latent=to_t(batch_np["cond_latent"], True),
                  image_embeds=to_t(batch_np["image_embeds"], False),
                  added_time_ids=to_t(batch_np["added_time_ids"], False))
    tsig = [torch.from_numpy(x) for x in sigmas]
    tnoise = [to_t(n, True) for n in noises]
    torch_losses, torch_norms, torch_times = [], [], []

    def run_torch(i):
        start = time.perf_counter()
        loss, grad_norm = torch_step(torch_model, optimizer, tparams, tbatch, tsig[i], tnoise[i], lrs[i], args.clip)
        elapsed = time.perf_counter() - start
        torch_losses.append(float(loss))
        torch_norms.append(float(grad_norm))
        return elapsed

    torch_warm = [run_torch(i) for i in range(args.warmup)]

    # ---- optional: the trainer's own step ----
    trainer = None
    if args.trainer_step:
        programs, tstate, frozen = trainer_program(cfg, unet_from_tensors(initial, cfg), (t, h, w), b, opt)
        tr_batch = jax.device_put({**batch_np})
        tc = time.perf_counter()
        tr_compiled = programs.train_step.lower(tstate, frozen, tr_batch).compile()
        trainer = dict(compile_s=time.perf_counter() - tc, times=[], warmup_times=[])
        tma = tr_compiled.memory_analysis()
        trainer["peak_bytes"] = (tma.argument_size_in_bytes + tma.output_size_in_bytes + tma.temp_size_in_bytes
                                 - tma.alias_size_in_bytes)

        def run_trainer():
            nonlocal tstate
            start = time.perf_counter()
            tstate, metrics = tr_compiled(tstate, frozen, tr_batch)
            jax.block_until_ready((tstate, metrics))
            return time.perf_counter() - start

        trainer["warmup_times"] = [run_trainer() for _ in range(args.warmup)]

    # ---- timed steps, alternating so both sides see the same background load ----
    # The pause lets each side's worker threads stop spinning (XLA's Eigen pool, torch's OpenMP team
    # busy-wait a while after their work) before the other side starts: on a small machine that
    # spinning would otherwise be charged to the next side's step.
    for i in range(args.warmup, args.warmup + args.steps):
        time.sleep(args.pause)
        jax_times.append(run_jax(i))
        time.sleep(args.pause)
        torch_times.append(run_torch(i))
        if trainer is not None:
            time.sleep(args.pause)
            trainer["times"].append(run_trainer())

    # ---- one untimed step each under the malloc poller ----
    last = n_steps - 1
    time.sleep(args.pause)
    with MallocPeak() as jm:
        run_jax(last)
    time.sleep(args.pause)
    with MallocPeak() as tm:
        run_torch(last)
    torch_resident = (torch_state_bytes(tparams, optimizer) + sum(x.numel() * 4 for x in tbatch.values())
                      + tsig[last].numel() * 4 + tnoise[last].numel() * 4)
    torch_peak = None if tm.delta is None else torch_resident + tm.delta
    jax_resident = tree_bytes(state) + tree_bytes(jbatch) + jsig[last].nbytes + jnoise[last].nbytes

    # ---- agreement: losses per step, parameter updates after all steps ----
    loss_rel = [abs(a - c) / abs(c) for a, c in zip(jax_losses, torch_losses)]
    norm_rel = [abs(a - c) / abs(c) for a, c in zip(jax_norms, torch_norms)]
    ours = unet_to_tensors(codec.merge(state["params"]))
    theirs = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
    upd_j = np.concatenate([(ours[k] - initial[k]).ravel() for k in initial])
    upd_t = np.concatenate([(theirs[k] - initial[k]).ravel() for k in initial])
    update_rel = rel(upd_j, upd_t)

    load_after = os.getloadavg()
    med_j, med_t = statistics.median(jax_times), statistics.median(torch_times)
    rows = [("jax", f"{jax_compile_s:.1f}", med_j, min(jax_times), jax_peak / MIB, 1.0),
            ("torch", "- (eager)", med_t, min(torch_times), None if torch_peak is None else torch_peak / MIB,
             med_t / med_j)]
    if trainer is not None:
        med_tr = statistics.median(trainer["times"])
        rows.append(("jax trainer step", f"{trainer['compile_s']:.1f}", med_tr, min(trainer["times"]),
                     trainer["peak_bytes"] / MIB, med_t / med_tr))

    print(f"\nfirst-step loss: jax {jax_losses[0]:.7g}  torch {torch_losses[0]:.7g}  relative difference "
          f"{loss_rel[0]:.1e}  (max over all {n_steps} steps {max(loss_rel):.1e})")
    print(f"gradient global norm (before clipping): jax {jax_norms[0]:.7g}  torch {torch_norms[0]:.7g}  relative "
          f"difference {norm_rel[0]:.1e}  (max over all steps {max(norm_rel):.1e})")
    print(f"parameter updates after {n_steps} steps (lr schedule {lrs[0]:g} → {lrs[-1]:g}): relative L2 "
          f"difference jax vs torch {update_rel:.1e}")
    print(f"warm-up steps s: jax {', '.join(f'{x:.2f}' for x in jax_warm)}; "
          f"torch {', '.join(f'{x:.2f}' for x in torch_warm)}")
    print(f"\n{'side':<17} | {'compile s':>9} | {'median step s':>13} | {'min step s':>10} | "
          f"{'peak mem MiB':>12} | {'torch/jax':>9}")
    print("-" * 86)
    for name, comp, med, mn, mem, ratio in rows:
        mem_s = "n/a" if mem is None else f"{mem:.0f}"
        print(f"{name:<17} | {comp:>9} | {med:>13.3f} | {mn:>10.3f} | {mem_s:>12} | {ratio:>9.2f}")
    print(f"\n{args.steps} timed steps each (alternating), after {args.warmup} warm-up steps; "
          f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min), {CORES} cores.")
    print("peak mem: jax = memory_analysis argument+output+temp−alias; torch = parameters+AdamW moments+batch "
          "+ mallinfo2 peak during a step (see the docstring).")

    result = {
        "benchmark": "train_step_vs_torch",
        "model": args.model, "unet_config": cfg.to_dict(), "parameters": int(n_params),
        "batch": b, "frames": t, "latent_height": h, "latent_width": w,
        "optimizer": {"learning_rate": args.lr, "clip_norm": args.clip, "b1": opt.b1, "b2": opt.b2, "eps": opt.eps,
                      "weight_decay": opt.weight_decay, "lr_per_step": lrs, "torch_adamw": args.torch_adamw},
        "warmup": args.warmup, "steps": args.steps, "seed": args.seed,
        "cores": CORES, "machine_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "load_average_before": list(load_before), "load_average_after": list(load_after),
        "versions": {"jax": jax.__version__, "torch": torch.__version__, "optax": optax.__version__,
                     "diffusers": __import__("diffusers").__version__},
        "jax": {"compile_s": jax_compile_s, "warmup_times_s": jax_warm, "times_s": jax_times,
                "median_s": med_j, "min_s": min(jax_times), "peak_bytes": jax_peak, "memory_analysis": jax_mem,
                "malloc_peak_delta_bytes": jm.delta, "resident_bytes": jax_resident, "losses": jax_losses,
                "grad_norms": jax_norms},
        "torch": {"warmup_times_s": torch_warm, "times_s": torch_times, "median_s": med_t, "min_s": min(torch_times),
                  "peak_bytes": torch_peak, "resident_bytes": torch_resident, "malloc_peak_delta_bytes": tm.delta,
                  "losses": torch_losses, "grad_norms": torch_norms},
        "ratio_torch_over_jax_median": med_t / med_j,
        "loss_relative_difference": loss_rel, "grad_norm_relative_difference": norm_rel,
        "update_relative_l2": update_rel, "pause_s": args.pause,
        "ru_maxrss_mib_at_end": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if trainer is not None:
        result["jax_trainer_step"] = {**trainer, "median_s": statistics.median(trainer["times"]),
                                      "min_s": min(trainer["times"])}
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
