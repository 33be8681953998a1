"""Checkpoint import/export for SVD's temporal VAE (diffusers' AutoencoderKLTemporalDecoder folder ↔ NNX).

The NNX module mirrors diffusers' tree (models/vae.py), so the mapping is the generic one of
models/tensors.py, with the same strict checking: every missing, unexpected or wrong-shaped parameter
is named with both shapes.
"""
from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp

from mvd_jax import storage
from mvd_jax.convert.strict import abstract_module, folder_weights, load_module, read_json_object, save_module
from mvd_jax.models.vae import AutoencoderKLTemporalDecoder, VAEConfig

DIFFUSERS_CLASS = "AutoencoderKLTemporalDecoder"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


def abstract_vae(config: VAEConfig) -> AutoencoderKLTemporalDecoder:
    return abstract_module(AutoencoderKLTemporalDecoder, config)


def read_vae_config(folder) -> VAEConfig:
    config = storage.local_mirror(storage.path(folder) / "config.json") if storage.is_remote(folder) else None
    return VAEConfig.from_dict(read_json_object(Path(config or Path(folder) / "config.json"), DIFFUSERS_CLASS))


def vae_from_tensors(tensors: dict, config: VAEConfig, *, source: str = "<tensors>",
                     dtype=jnp.float32) -> AutoencoderKLTemporalDecoder:
    return load_module(abstract_vae(config), tensors, source=source, what="the VAE config", dtype=dtype)


def load_vae(folder, *, dtype=jnp.float32) -> AutoencoderKLTemporalDecoder:
    """Loads a diffusers `vae/` folder (config.json + diffusion_pytorch_model[.fp16].safetensors); a gs://
    folder is mirrored to local disk first (mvd_jax/storage.py)."""
    folder = Path(storage.local_mirror(folder))
    config = read_vae_config(folder)
    return vae_from_tensors(folder_weights(folder, WEIGHTS_NAME), config, source=str(folder), dtype=dtype)


def save_vae_diffusers(model: AutoencoderKLTemporalDecoder, out_dir, *, float16: bool = False) -> Path:
    """Writes config.json + diffusion_pytorch_model[.fp16].safetensors that diffusers' from_pretrained reads."""
    config = {"_class_name": DIFFUSERS_CLASS, **model.config.to_diffusers_dict()}
    return save_module(model, out_dir, WEIGHTS_NAME, config, float16=float16)
