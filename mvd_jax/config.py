"""Loading experiment configs: ml_collections files in the big_vision style.

A config file defines `get_config(arg=None) -> ConfigDict`; it is named on the command line as
`path/to/file.py` or `path/to/file.py:arg`. Keys are checked strictly: an unknown top-level key or an
unknown key in the `model` section is an error, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Any

import ml_collections

from mvd_jax.errors import UserError
from mvd_jax.models.unet_config import UNetConfig

# Top-level keys a config may hold (later subsystems add theirs here).
KNOWN_KEYS = {
    "name": "short identifier used in tables and run directories",
    "model": "UNet architecture, keyed like diffusers' UNetSpatioTemporalConditionModel config",
    "frames": "number of video frames",
    "height": "video height in pixels",
    "width": "video width in pixels",
    "batch": "batch size of one UNet forward in the efficiency tables",
    "vae_scale_factor": "pixels per latent pixel (8 for SVD's VAE)",
    "paper": "reference numbers from the paper, for comparison only",
    "data": "video data settings (e.g. data.fps: the clip frame rate; mvd_jax.data, mvd_jax.train.config)",
    "autoencoder": "where latents and image embeddings come from (mvd_jax.train.config)",
    "train": "training loop settings (mvd_jax.train.config)",
    "optimizer": "AdamW, warm-up, clipping, EMA (mvd_jax.train.config)",
    "adversarial": "the single-step adversarial phase: D heads, σ sets, losses, G/D optimizers (mvd_jax.train.config)",
    "mesh": "device mesh sizes: data, fsdp, tensor (−1 = fill)",
    "init_from": "an SVD diffusers folder, or a previous stage's workdir, to initialise the UNet from",
    "init_ema": "start from the previous stage's EMA weights (True) or its raw weights",
    "prune_from_gates": "remove the temporal blocks the previous (gate-learning) stage's gates dropped",
}


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Loads `file.py[:arg]` and validates its keys."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise UserError(f"config file not found: {path}")
    module_spec = importlib.util.spec_from_file_location(f"_mvd_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # a broken config file is the user's to fix; say which and why
        raise UserError(f"config file {path} failed to load: {type(e).__name__}: {e}") from None
    if not hasattr(module, "get_config"):
        raise UserError(f"config file {path} defines no get_config()")
    config = module.get_config(arg) if arg else module.get_config()
    validate(config, source=spec)
    return config


def validate(config: ml_collections.ConfigDict, source: str = "<config>") -> None:
    unknown = sorted(set(config.keys()) - set(KNOWN_KEYS))
    if unknown:
        raise UserError(f"{source}: unknown config key(s) {unknown}; known: {sorted(KNOWN_KEYS)}")
    if "model" in config:
        try:
            unet_config(config)
        except UserError as e:
            raise UserError(f"{source}: model: {e}") from None


def unet_config(config: ml_collections.ConfigDict) -> UNetConfig:
    return UNetConfig.from_dict(_to_plain(config.model))


def _to_plain(x: Any):
    if isinstance(x, (ml_collections.ConfigDict, dict)):
        return {k: _to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_plain(v) for v in x]
    return x


def efficiency_row(name: str, model: UNetConfig, *, height: int, width: int, frames: int = 14,
                   paper_tflops: float | None = None, paper_source: str = "") -> ml_collections.ConfigDict:
    """The config of one efficiency-table row: a UNet at a video size, with the paper's number beside it."""
    c = ml_collections.ConfigDict()
    c.name = name
    c.model = model.to_dict()
    c.frames = frames
    c.height = height
    c.width = width
    c.batch = 1
    c.vae_scale_factor = 8
    c.paper = ml_collections.ConfigDict(dict(tflops=paper_tflops, source=paper_source))
    # The training sections too, so a table row is also a training config (SVD's VAE/CLIP supply the
    # latents: --config.autoencoder.checkpoint=SVD_DIR) and `mvd_jax.train_compile` can size it.
    from mvd_jax.train.config import resolve

    c.autoencoder = dict(kind="svd")
    return resolve(c)
