"""diffusers' SVD UNet timed in a process that never initialises JAX, then again after JAX's GPU client has
started in the same process: a check on bench/gpu_benchmark.py's torch column, which runs both frameworks in
one process. (On the H200, 2026-12-04, that column read 162 ms for the 512×256 forward and 220 ms at
1024×576 — 1.36× the time for 5.3× the FLOPs, i.e. bound by the host's kernel launches, not the GPU.)

    python3 bench/diffusers_alone.py --out $OUT/diffusers_alone.json     # ≈ 1.5 min on an H200
    .venv/bin/python bench/diffusers_alone.py --tiny                      # the code path on the CPU

Rows: SVD UNet forward at 14×512×256 and 14×1024×576 (bf16 parameters and activations, inference_mode),
and forward + backward at 14×512×256 (float32 parameters, bf16 autocast, MSE of the output against noise:
the same kernels as the EDM loss of gpu_benchmark.py up to a few elementwise ops). Weights are torch's
default initialisation (timing does not depend on their values). Median of --steps calls after --warmup,
each to torch.cuda.synchronize().
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
from diffusers import UNetSpatioTemporalConditionModel

TINY = dict(block_out_channels=(32, 64, 64, 64), num_attention_heads=(2, 2, 2, 2), cross_attention_dim=32,
            addition_time_embed_dim=8, projection_class_embeddings_input_dim=24, layers_per_block=1)


def inputs(frames, h, w, dtype, device, cross_dim):
    g = torch.Generator().manual_seed(0)
    return dict(sample=torch.randn(1, frames, 8, h, w, generator=g).to(device, dtype),
                timestep=torch.tensor([1.0], device=device),
                encoder_hidden_states=torch.randn(1, 1, cross_dim, generator=g).to(device, dtype),
                added_time_ids=torch.tensor([[6.0, 127.0, 0.02]], device=device))


def timed(call, sync, warmup, steps):
    for _ in range(warmup):
        call()
    sync()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - t0)
    return dict(median_s=statistics.median(times), min_s=min(times), times_s=times)


def rows(model, fwd, sizes, device, warmup, steps, sync):
    cross = model.config.cross_attention_dim
    out = {}
    for name, (t, h, w) in sizes.items():
        if name.startswith("forward"):
            x = inputs(t, h, w, next(fwd.parameters()).dtype, device, cross)

            def call():
                with torch.inference_mode():
                    return fwd(**x, return_dict=False)[0]
        else:
            x = inputs(t, h, w, torch.float32, device, cross)
            target = torch.randn(1, t, 4, h, w, device=device)

            def call():
                with torch.autocast(device_type=device, dtype=torch.bfloat16):
                    y = model(**x, return_dict=False)[0]
                loss = ((y.float() - target) ** 2).mean()
                loss.backward()
                for p in model.parameters():
                    p.grad = None
        out[name] = timed(call, sync, warmup, steps)
        print(f"{name} {t}×{h * 8}×{w * 8}: {out[name]['median_s'] * 1e3:.1f} ms (median of {steps})", flush=True)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="a small UNet on the CPU (the code path only)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    device = "cpu" if args.tiny else "cuda"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sizes = ({"forward_512x256": (14, 32, 64), "forward_1024x576": (14, 72, 128), "train_512x256": (14, 32, 64)}
             if not args.tiny else {"forward_512x256": (2, 8, 16), "forward_1024x576": (2, 16, 24),
                                    "train_512x256": (2, 8, 16)})
    t0 = time.perf_counter()
    with torch.device(device):  # initialised on the device (seconds, where the CPU takes a minute)
        model = UNetSpatioTemporalConditionModel(**(TINY if args.tiny else {}))
    model = model.to(device)  # AlphaBlender.mix_factor, a legacy torch.Tensor([...]), is left on the CPU otherwise
    fwd = copy.deepcopy(model).to(device, torch.bfloat16).eval()
    print(f"built in {time.perf_counter() - t0:.1f} s; torch {torch.__version__}", flush=True)
    result = dict(device=torch.cuda.get_device_name() if device == "cuda" else "cpu", torch=torch.__version__,
                  warmup=args.warmup, steps=args.steps, alone=rows(model, fwd, sizes, device, args.warmup, args.steps,
                                                                   sync))
    # JAX's GPU client started in this process (what gpu_benchmark.py does before its torch calls)
    import jax
    import jax.numpy as jnp

    jnp.ones((1024, 1024)).sum().block_until_ready()
    print(f"JAX {jax.__version__} started on {jax.devices()[0].platform}", flush=True)
    result["after_jax"] = rows(model, fwd, {k: sizes[k] for k in ("forward_512x256", "train_512x256")}, device,
                               args.warmup, args.steps, sync)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
