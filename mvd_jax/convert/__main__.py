"""Check or convert an SVD UNet checkpoint.

    python -m mvd_jax.convert PATH [--config CONFIG_JSON] [--out DIFFUSERS_DIR] [--float16]

PATH is a diffusers `unet/` folder (or a pipeline folder holding one), a diffusers-named
.safetensors file, a generative-models single file (`svd.safetensors`), or a trainer workdir (its
latest checkpoint's EMA weights; --raw for the raw ones). The checkpoint is loaded strictly (every
parameter must match the config); with --out it is written as a diffusers folder (config.json +
diffusion_pytorch_model.safetensors, or the .fp16 variant with --float16) that diffusers'
from_pretrained reads and `init_from` starts a run from. A UNet with MobileVD structure (temporal
multiscaling, pruning, funnels) keeps those keys in its config.json: this package rebuilds the same
network from it, diffusers cannot. A trainer workdir of the other model phases converts to its own kind
of folder: an autoencoder run (train.phase autoencoder) to a VAE folder (AutoencoderKLTemporalDecoder), a
decoder_distill run to its tiny autoencoder's (AutoencoderTiny).
"""
from __future__ import annotations

import argparse
import sys

import jax
import numpy as np
from flax import nnx

from mvd_jax.convert.diffusers_unet import read_unet_checkpoint, save_unet_diffusers, unet_from_tensors
from mvd_jax.errors import cli_main
from mvd_jax.train.stages import is_run_dir, read_run_config, read_run_unet


def _convert_autoencoder_run(args):
    phase = read_run_config(args.path).train.phase
    if phase == "autoencoder":
        from mvd_jax.convert.diffusers_vae import save_vae_diffusers
        from mvd_jax.train.vae_train import read_run_vae

        model, _, step = read_run_vae(args.path, use_ema=not args.raw)
        save = lambda: save_vae_diffusers(model, args.out, float16=args.float16)
    else:
        from mvd_jax.convert.diffusers_tiny_autoencoder import save_tiny_autoencoder
        from mvd_jax.train.decoder_distill import read_run_tiny_autoencoder

        model, _, step = read_run_tiny_autoencoder(args.path, use_ema=not args.raw)
        save = lambda: save_tiny_autoencoder(model, args.out, float16=args.float16)
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    print(f"loaded the {type(model).__name__} of {phase} run {args.path} (step {step}, "
          f"{'raw' if args.raw else 'EMA'} weights): {n:,} parameters")
    if args.out:
        save()
        print(f"wrote it to {args.out}")


@cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mvd_jax.convert", description=__doc__.split("\n")[0])
    parser.add_argument("path", help="checkpoint folder or .safetensors file")
    parser.add_argument("--config", help="diffusers config.json (default: the folder's, or SVD's for SGM files)")
    parser.add_argument("--out", help="write the UNet as a diffusers folder here")
    parser.add_argument("--float16", action="store_true", help="write float16 weights (diffusers' fp16 variant)")
    parser.add_argument("--raw", action="store_true", help="a trainer workdir's raw weights instead of its EMA")
    args = parser.parse_args(argv)

    if is_run_dir(args.path) and read_run_config(args.path).train.phase in ("autoencoder", "decoder_distill"):
        return _convert_autoencoder_run(args)
    if is_run_dir(args.path):
        model, _, step = read_run_unet(args.path, use_ema=not args.raw)
        kind = f"trainer run (step {step}, {'raw' if args.raw else 'EMA'} weights)"
    else:
        tensors, config, kind = read_unet_checkpoint(args.path, args.config)
        model = unet_from_tensors(tensors, config, source=args.path)
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    print(f"loaded {kind} checkpoint {args.path}: {n:,} parameters, "
          f"block_out_channels={list(model.config.block_out_channels)}")
    if args.out:
        save_unet_diffusers(model, args.out, float16=args.float16, mobilevd_keys=not model.config.is_svd)
        print(f"wrote the UNet to {args.out}" + ("" if model.config.is_svd else
                                               " (with its MobileVD config keys: read by mvd_jax, not diffusers)"))


if __name__ == "__main__":
    main(sys.argv[1:])
