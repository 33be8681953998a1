"""Per-chip memory of ONE attention on a TPU, XLA's form vs the Pallas flash kernel, compiled ahead of time on
this CPU host (libtpu describes the topology; nothing runs on a TPU).

    python bench/tpu_attention_aot.py                       # SVD's level-0 self-attention at 1024×576 on v5e:2x2
    python bench/tpu_attention_aot.py --tokens 2048 --heads 5 --head_dim 64 --topology v5e:2x2 --clips_per_chip 1

The attention is the SVD UNet's top-level spatial self-attention: every frame of every clip attends over its
H/8·W/8 latent positions (9216 at 1024×576, 2048 at 512×256) with 5 heads of 64; batch = clips × 14 frames,
split over the chips (one clip per chip by default), bf16. Both forms go through
models/attention_kernel.py exactly as the UNet calls it (`dot_product_attention` with an AttentionForm on
the slice's mesh): "xla" is `jax.nn.dot_product_attention`'s XLA form, "pallas_tpu" the flash kernel under
`shard_map`. For each: the forward alone and forward + backward (gradients of a sum of the output with
respect to q, k, v), the compiler's temporaries per chip (`memory_analysis().temp_size_in_bytes`) and the
compile time; a plan beyond the chip's HBM is the compiler's RESOURCE_EXHAUSTED, reported with its figures.
Results: bench/results/tpu_attention_aot.json (--out).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GIB = 1024 ** 3


def compile_attention(topology: str, tokens: int, heads: int, head_dim: int, frames: int, clips_per_chip: int,
                      implementation: str) -> dict:
    """{"forward": ..., "forward_backward": ...}: each the temporaries per chip and compile seconds, or the
    compiler's out-of-memory figures."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P

    from mvd_jax.models import attention_kernel as ak
    from mvd_jax.train.aot import device_mesh, parse_hbm_oom, tpu_topology_devices
    from mvd_jax.train_compile import parse_tpu

    tpu = parse_tpu(topology)
    devices = tpu_topology_devices(tpu.libtpu_topology, chip_config_name=tpu.generation.chip_config_name,
                                   chips_per_host_bounds=tpu.chips_per_host_bounds)
    mesh = device_mesh({"data": -1, "fsdp": 1, "tensor": 1}, devices)
    chips = len(devices)
    form = ak.form_for_mesh(implementation, mesh)
    x = jax.ShapeDtypeStruct((chips * clips_per_chip * frames, tokens, heads, head_dim), jnp.bfloat16,
                             sharding=NamedSharding(mesh, P(("data", "fsdp"))))
    scale = head_dim ** -0.5
    attend = lambda q, k, v: ak.dot_product_attention(q, k, v, scale, form)  # noqa: E731
    loss = lambda q, k, v: jnp.sum(attend(q, k, v).astype(jnp.float32))  # noqa: E731
    out = {}
    for name, fn in (("forward", attend), ("forward_backward", jax.grad(loss, argnums=(0, 1, 2)))):
        t0 = time.perf_counter()
        with ak.recording() as forms:
            lowered = jax.jit(fn).lower(x, x, x)
        try:
            compiled = lowered.compile()
            mem = compiled.memory_analysis()
            entry = {"temp_bytes": float(mem.temp_size_in_bytes), "argument_bytes": float(mem.argument_size_in_bytes),
                     "output_bytes": float(mem.output_size_in_bytes),
                     "pallas_kernel_calls": compiled.as_text().count('custom_call_target="tpu_custom_call"')}
        except Exception as e:  # the TPU compiler refuses a plan beyond the chip's HBM
            oom = parse_hbm_oom(str(e))
            if oom is None:
                raise
            entry = {"oom_used_bytes": oom[0], "oom_capacity_bytes": oom[1],
                     "compile_error": str(e).strip().splitlines()[0][:300]}
        entry.update(compile_s=time.perf_counter() - t0, forms=sorted({f["form"] for f in forms}))
        out[name] = entry
    return out


def describe(entry: dict) -> str:
    if "temp_bytes" in entry:
        return f"{entry['temp_bytes'] / GIB:8.2f} GiB"
    return f"{entry['oom_used_bytes'] / GIB:8.2f} GiB (RESOURCE_EXHAUSTED: over {entry['oom_capacity_bytes'] / GIB:.2f})"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--topology", default="v5e:2x2")
    p.add_argument("--tokens", type=int, default=9216, help="latent positions per frame (1024×576: 128·72)")
    p.add_argument("--heads", type=int, default=5)
    p.add_argument("--head_dim", type=int, default=64)
    p.add_argument("--frames", type=int, default=14)
    p.add_argument("--clips_per_chip", type=int, default=1)
    p.add_argument("--forms", default="xla,pallas_tpu")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "tpu_attention_aot.json"))
    args = p.parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    jax.config.update("jax_platforms", "cpu")  # the topology is described, not run
    shape = dict(topology=args.topology, tokens=args.tokens, heads=args.heads, head_dim=args.head_dim,
                 frames=args.frames, clips_per_chip=args.clips_per_chip)
    results = {form: compile_attention(implementation=form, **shape) for form in args.forms.split(",")}
    print(f"one self-attention, {args.clips_per_chip} clip(s) × {args.frames} frames per chip, {args.tokens} tokens, "
          f"{args.heads} heads × {args.head_dim}, bf16, on {args.topology} (temporaries per chip):")
    print(f"  {'form':<11} {'forward':>30}   {'forward + backward':>30}   compile s")
    for form, r in results.items():
        print(f"  {form:<11} {describe(r['forward']):>30}   {describe(r['forward_backward']):>30}   "
              f"{r['forward']['compile_s']:.1f} / {r['forward_backward']['compile_s']:.1f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"shape": shape, "results": results}, indent=1) + "\n")
        print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
