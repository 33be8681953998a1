"""Checkpoint import/export for the tiny autoencoder (diffusers' AutoencoderTiny folder ↔ NNX).

models/tiny_autoencoder.py mirrors AutoencoderTiny's tree, so the mapping is the generic one of
models/tensors.py with its strict checks. A folder written here with `temporal_mixing` on carries that
key in config.json and the `decoder.time_mixers.*` tensors; diffusers cannot build that model (it has no
temporal layers), this package does. A TAESD folder (per-frame) loads as it is.
"""
from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp

from mvd_jax import storage
from mvd_jax.convert.strict import abstract_module, folder_weights, load_module, read_json_object, save_module
from mvd_jax.models.tiny_autoencoder import TinyAutoencoder, TinyAutoencoderConfig

DIFFUSERS_CLASS = "AutoencoderTiny"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


def abstract_tiny_autoencoder(config: TinyAutoencoderConfig) -> TinyAutoencoder:
    return abstract_module(TinyAutoencoder, config)


def read_tiny_autoencoder_config(folder) -> TinyAutoencoderConfig:
    folder = Path(storage.local_mirror(folder))
    return TinyAutoencoderConfig.from_dict(read_json_object(folder / "config.json", DIFFUSERS_CLASS))


def tiny_autoencoder_from_tensors(tensors: dict, config: TinyAutoencoderConfig, *, source: str = "<tensors>",
                                  dtype=jnp.float32) -> TinyAutoencoder:
    return load_module(abstract_tiny_autoencoder(config), tensors, source=source,
                       what="the tiny autoencoder config", dtype=dtype)


def load_tiny_autoencoder(folder, *, dtype=jnp.float32) -> TinyAutoencoder:
    """A diffusers AutoencoderTiny folder (config.json + diffusion_pytorch_model[.fp16].safetensors)."""
    folder = Path(storage.local_mirror(folder))
    config = read_tiny_autoencoder_config(folder)
    return tiny_autoencoder_from_tensors(folder_weights(folder, WEIGHTS_NAME), config, source=str(folder),
                                         dtype=dtype)


def save_tiny_autoencoder(model: TinyAutoencoder, out_dir, *, float16: bool = False) -> Path:
    """config.json + the weights, the folder diffusers' AutoencoderTiny.from_pretrained reads (per-frame models)."""
    config = {"_class_name": DIFFUSERS_CLASS, **model.config.to_diffusers_dict()}
    return save_module(model, out_dir, WEIGHTS_NAME, config, float16=float16)
