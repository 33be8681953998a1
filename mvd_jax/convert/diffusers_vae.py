"""Checkpoint import/export for SVD's temporal VAE (diffusers' AutoencoderKLTemporalDecoder folder ↔ NNX).

The NNX module mirrors diffusers' tree (models/vae.py), so the mapping is the generic one of
convert/strict.py, with the same strict checking: every missing, unexpected or wrong-shaped parameter
is named with both shapes.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import jax.numpy as jnp
from flax import nnx

from mvd_jax import storage
from mvd_jax.convert.safetensors_io import write_safetensors
from mvd_jax.convert.strict import (
    check_tensors,
    expected_from_module,
    folder_weights,
    module_from_tensors,
    module_to_tensors,
    read_json_object,
)
from mvd_jax.models.vae import AutoencoderKLTemporalDecoder, VAEConfig

DIFFUSERS_CLASS = "AutoencoderKLTemporalDecoder"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


def abstract_vae(config: VAEConfig) -> AutoencoderKLTemporalDecoder:
    return nnx.eval_shape(lambda: AutoencoderKLTemporalDecoder(config, rngs=nnx.Rngs(0)))


def read_vae_config(folder) -> VAEConfig:
    config = storage.local_mirror(storage.path(folder) / "config.json") if storage.is_remote(folder) else None
    return VAEConfig.from_dict(read_json_object(Path(config or Path(folder) / "config.json"), DIFFUSERS_CLASS))


def vae_from_tensors(tensors: dict, config: VAEConfig, *, source: str = "<tensors>",
                     dtype=jnp.float32) -> AutoencoderKLTemporalDecoder:
    abstract = abstract_vae(config)
    check_tensors(tensors, expected_from_module(abstract), source, "the VAE config")
    return module_from_tensors(abstract, tensors, dtype=dtype)


def load_vae(folder, *, dtype=jnp.float32) -> AutoencoderKLTemporalDecoder:
    """Loads a diffusers `vae/` folder (config.json + diffusion_pytorch_model[.fp16].safetensors); a gs://
    folder is mirrored to local disk first (mvd_jax/storage.py)."""
    folder = Path(storage.local_mirror(folder))
    config = read_vae_config(folder)
    return vae_from_tensors(folder_weights(folder, WEIGHTS_NAME), config, source=str(folder), dtype=dtype)


def save_vae_diffusers(model: AutoencoderKLTemporalDecoder, out_dir) -> Path:
    """Writes config.json + diffusion_pytorch_model.safetensors that diffusers' from_pretrained reads."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / (WEIGHTS_NAME + ".tmp")
    write_safetensors(tmp, module_to_tensors(model), metadata={"format": "pt"})
    os.replace(tmp, out_dir / WEIGHTS_NAME)
    config = {"_class_name": DIFFUSERS_CLASS, **model.config.to_diffusers_dict()}
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out_dir
