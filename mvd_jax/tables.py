"""Efficiency table: parameters and TFLOPs per UNet forward for paper configs.

    python -m mvd_jax.tables                       # every config in configs/paper/
    python -m mvd_jax.tables --configs=configs/paper/svd_512x256.py --format=json

Nothing is materialised: the UNet is built with `nnx.eval_shape` and its forward traced on
ShapeDtypeStructs. `tflops` is the paper's convention (2 × multiply-adds of every conv and matmul,
attention included, counted from the jaxpr); `xla_tflops` is XLA's cost analysis of the same jitted
forward, which also counts elementwise ops but skips conv taps that fall on padding.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mvd_jax.config import load_config, unet_config
from mvd_jax.convert.diffusers_unet import abstract_unet
from mvd_jax.errors import UserError, cli_main
from mvd_jax.eval.flops import count_flops

PAPER_CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "paper")
# Default row order: the paper's Table 2 progression, then the ablations of Tables 3–6.
PAPER_ORDER = ["svd_1024x576", "svd_512x256", "xattn", "temporal_ms", "pruned_70", "mobilevd", "mobilevd_hd",
               "spatial_ms", "spatial_temporal_ms", "funnels_r025", "funnels_r050", "funnels_r075",
               "funnels_conv_r050", "lowrank_r050", "lowrank_r025", "pruned_80", "pruned_90", "l1_pruned_70"]


def _paper_configs() -> list[str]:
    found = sorted(glob.glob(os.path.join(PAPER_CONFIG_DIR, "*.py")))
    rank = {name: i for i, name in enumerate(PAPER_ORDER)}
    stem = lambda p: os.path.splitext(os.path.basename(p))[0]
    return sorted(found, key=lambda p: (rank.get(stem(p), len(rank)), stem(p)))


def unet_row(config, name: str | None = None) -> dict:
    """One table row: params and FLOPs of one UNet forward at the config's video size.

    `name` (default: config.name) labels the row; the CLI uses the config file's stem.
    """
    cfg = unet_config(config)
    scale = config.get("vae_scale_factor", 8)
    if config.height % scale or config.width % scale:
        raise UserError(f"{name or config.name}: height/width ({config.height}×{config.width}) must be multiples of {scale}")
    b, t, h, w = config.get("batch", 1), config.frames, config.height // scale, config.width // scale

    graphdef, state = nnx.split(abstract_unet(cfg))
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(nnx.merge(graphdef, state), nnx.Param)))

    def forward(state, sample, timestep, context, added_time_ids):
        return nnx.merge(graphdef, state)(sample, timestep, context, added_time_ids)

    f32 = jnp.float32
    args = (state,
            jax.ShapeDtypeStruct((b, t, h, w, cfg.in_channels), f32),
            jax.ShapeDtypeStruct((b,), f32),
            jax.ShapeDtypeStruct((b, 1, cfg.context_dims[0]), f32),
            jax.ShapeDtypeStruct((b, cfg.num_added_time_ids), f32))
    flops = count_flops(forward, *args)
    paper = config.get("paper", {}) or {}
    return {"config": name or config.name, "frames": t, "height": config.height, "width": config.width, "batch": b,
            "params": params, "tflops": flops["flops"] / 1e12, "xla_tflops": flops["xla_flops"] / 1e12,
            "paper_tflops": paper.get("tflops")}


def format_table(rows: list[dict]) -> str:
    head = ["config", "frames", "size (W×H)", "params", "TFLOPs", "XLA TFLOPs", "paper TFLOPs", "vs paper"]
    lines = []
    for r in rows:
        p = r["paper_tflops"]
        lines.append([r["config"], str(r["frames"]), f"{r['width']}×{r['height']}", f"{r['params']:,}",
                      f"{r['tflops']:.2f}", f"{r['xla_tflops']:.2f}", f"{p:.2f}" if p else "-",
                      f"{100 * (r['tflops'] / p - 1):+.1f}%" if p else "-"])
    widths = [max(len(x) for x in col) for col in zip(head, *lines)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    note = ("TFLOPs per UNet forward, batch as configured: 2·MACs of all convs and matmuls (attention included), "
            "the paper's convention; XLA's cost analysis beside it.")
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, lines), "", note])


@cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mvd_jax.tables", description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="*", help="config files (file.py[:arg]); default: configs/paper/*.py")
    parser.add_argument("--format", choices=["table", "json"], default="table")
    args = parser.parse_args(argv)
    specs = args.configs or _paper_configs()
    if not specs:
        raise UserError(f"no configs given and none found in {PAPER_CONFIG_DIR}")
    rows = [unet_row(load_config(spec), name=os.path.splitext(os.path.basename(spec.partition(":")[0]))[0])
            for spec in specs]
    print(json.dumps(rows, indent=2) if args.format == "json" else format_table(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
