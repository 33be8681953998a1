"""Check or convert an SVD UNet checkpoint.

    python -m mvd_jax.convert PATH [--config CONFIG_JSON] [--out DIFFUSERS_DIR]

PATH is a diffusers `unet/` folder (or a pipeline folder holding one), a diffusers-named
.safetensors file, or a generative-models single file (`svd.safetensors`). The checkpoint is loaded
strictly (every parameter must match the config); with --out it is written back as a diffusers
folder (config.json + diffusion_pytorch_model.safetensors) that diffusers' from_pretrained reads.
"""
from __future__ import annotations

import argparse
import sys

import jax
import numpy as np
from flax import nnx

from mvd_jax.convert.diffusers_unet import read_unet_checkpoint, save_unet_diffusers, unet_from_tensors
from mvd_jax.errors import cli_main


@cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mvd_jax.convert", description=__doc__.split("\n")[0])
    parser.add_argument("path", help="checkpoint folder or .safetensors file")
    parser.add_argument("--config", help="diffusers config.json (default: the folder's, or SVD's for SGM files)")
    parser.add_argument("--out", help="write the UNet as a diffusers folder here")
    args = parser.parse_args(argv)

    tensors, config, kind = read_unet_checkpoint(args.path, args.config)
    model = unet_from_tensors(tensors, config, source=args.path)
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    print(f"loaded {kind} checkpoint {args.path}: {n:,} parameters, block_out_channels={list(config.block_out_channels)}")
    if args.out:
        save_unet_diffusers(model, args.out)
        print(f"wrote diffusers UNet to {args.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
