"""Checkpoint import/export for the SVD UNet: diffusers folders/files and SGM single files ↔ NNX.

The NNX module mirrors diffusers' tree, so the mapping is mechanical (models/tensors.py):
  NNX path  down_blocks/0/resnets/0/spatial_res_block/conv1/kernel
  diffusers down_blocks.0.resnets.0.spatial_res_block.conv1.weight
Loading is strict: any missing key, unexpected key or wrong shape is an error that names every
offending parameter with both shapes. Nothing is skipped or zero-filled.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from mvd_jax import storage
from mvd_jax.convert.safetensors_io import read_header, read_safetensors
from mvd_jax.convert.sgm_names import SGM_PREFIX, diffusers_to_sgm
from mvd_jax.convert import strict
from mvd_jax.convert.strict import folder_weights, read_json_object, refuse_pickle, save_module
from mvd_jax.errors import UserError
from mvd_jax.models.unet import SpatioTemporalUNet
from mvd_jax.models.unet_config import MOBILEVD_KEYS, UNetConfig
from mvd_jax.models.unet_tensors import (  # noqa: F401  (abstract_unet re-exported: the converter's public API)
    abstract_unet,
    expected_parameters,
    unet_from_tensors,
    unet_to_tensors,
)

DIFFUSERS_CLASS = "UNetSpatioTemporalConditionModel"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


# ---- config resolution ---------------------------------------------------------------------------
def resolve_config(config: Any) -> UNetConfig:
    """A UNetConfig, a dict of diffusers' keys, or a path to config.json → UNetConfig."""
    return strict.resolve_config(config, UNetConfig, DIFFUSERS_CLASS)


def _read_diffusers_config(path: Path) -> UNetConfig:
    return UNetConfig.from_dict(read_json_object(path, DIFFUSERS_CLASS))


def _is_sgm(names) -> bool:
    return any(n.startswith(SGM_PREFIX) or n.startswith("input_blocks.") for n in names)


def read_unet_checkpoint(path, config=None) -> tuple[dict[str, np.ndarray], UNetConfig, str]:
    """Reads any supported UNet checkpoint into diffusers names and torch layouts.

    Returns (tensors, config, kind) where kind is "diffusers" or "sgm".
    `path`: a diffusers `unet/` folder (or a pipeline folder holding one), a diffusers-named
    .safetensors file (config from `config` or a config.json beside it), or an SGM single file
    (config from `config`, default: SVD's). A gs:// path is mirrored to local disk first (only the
    unet/ folder of a pipeline folder; mvd_jax/storage.py).
    """
    if storage.is_remote(path):
        remote = storage.path(path)
        if remote.is_dir() and not (remote / "config.json").exists() and (remote / "unet" / "config.json").exists():
            remote = remote / "unet"
        if not remote.exists():
            raise UserError(f"checkpoint not found: {path}")
        path = storage.local_mirror(remote)
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    if path.is_dir():
        if not (path / "config.json").is_file() and (path / "unet" / "config.json").is_file():
            path = path / "unet"
        cfg = resolve_config(config) if config is not None else _read_diffusers_config(path / "config.json")
        return folder_weights(path, WEIGHTS_NAME), cfg, "diffusers"

    refuse_pickle(path)
    if path.suffix != ".safetensors":
        raise UserError(f"{path}: expected a .safetensors file or a diffusers folder")
    header, _, _ = read_header(path)
    if _is_sgm(header):
        cfg = resolve_config(config) if config is not None else UNetConfig()
        tensors = read_safetensors(path)
        if any(n.startswith(SGM_PREFIX) for n in tensors):  # a full SGM model: keep only the UNet
            tensors = {n[len(SGM_PREFIX):]: t for n, t in tensors.items() if n.startswith(SGM_PREFIX)}
        sgm_to_diffusers = {diffusers_to_sgm(k, cfg): k for k in expected_parameters(cfg)}
        renamed = {sgm_to_diffusers.get(n, f"<sgm>{n}"): t for n, t in tensors.items()}
        return renamed, cfg, "sgm"

    if config is None:
        beside = path.parent / "config.json"
        if not beside.is_file():
            raise UserError(f"{path} is a diffusers-named file without a config: pass config= or put config.json beside it")
        config = beside
    return read_safetensors(path), resolve_config(config), "diffusers"


# ---- public API ----------------------------------------------------------------------------------
def load_unet(path, config=None, *, dtype=jnp.float32) -> SpatioTemporalUNet:
    """Loads SVD UNet weights from a diffusers folder/file or an SGM single file (see read_unet_checkpoint)."""
    tensors, cfg, _ = read_unet_checkpoint(path, config)
    return unet_from_tensors(tensors, cfg, source=str(path), dtype=dtype)


def save_unet_diffusers(model: SpatioTemporalUNet, out_dir, *, float16: bool = False,
                        mobilevd_keys: bool = False) -> Path:
    """Writes `config.json` + `diffusion_pytorch_model.safetensors` (float16: `….fp16.safetensors`, diffusers'
    fp16 variant) that diffusers' from_pretrained loads. A UNet with MobileVD structure diffusers cannot
    represent (temporal multiscaling, pruning, funnels) is refused unless `mobilevd_keys`: then config.json
    also holds those keys — this package's loaders rebuild the same network from it; diffusers would warn
    about the unknown keys and compute a different one."""
    extra = {k: v for k, v in model.config.to_dict().items() if k in MOBILEVD_KEYS} if mobilevd_keys else {}
    base = dataclasses.replace(model.config, **{k: getattr(UNetConfig, k) for k in extra})
    config = {"_class_name": DIFFUSERS_CLASS, **base.to_diffusers_dict(), **extra}
    return save_module(model, out_dir, WEIGHTS_NAME, config, float16=float16)
