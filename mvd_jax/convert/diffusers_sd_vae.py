"""Checkpoint import/export for SD-1.5's image VAE (diffusers' AutoencoderKL folder ↔ NNX).

The NNX module mirrors diffusers' tree (models/sd_vae.py), so the mapping is the generic one of
models/tensors.py with the same strict checking as SVD's VAE (convert/diffusers_vae.py, whose file
handling this reuses): every missing, unexpected or wrong-shaped parameter is named with both shapes.
"""
from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp

from mvd_jax import storage
from mvd_jax.convert.diffusers_vae import WEIGHTS_NAME, vae_folder
from mvd_jax.convert.strict import abstract_module, folder_weights, load_module, read_json_object, save_module
from mvd_jax.models.sd_vae import DIFFUSERS_CLASS, AutoencoderKL, SDVAEConfig


def abstract_sd_vae(config: SDVAEConfig) -> AutoencoderKL:
    return abstract_module(AutoencoderKL, config)


def read_sd_vae_config(folder) -> SDVAEConfig:
    return SDVAEConfig.from_dict(read_json_object(Path(folder) / "config.json", DIFFUSERS_CLASS))


def sd_vae_from_tensors(tensors: dict, config: SDVAEConfig, *, source: str = "<tensors>",
                        dtype=jnp.float32) -> AutoencoderKL:
    return load_module(abstract_sd_vae(config), tensors, source=source, what="the SD VAE config", dtype=dtype)


def load_sd_vae(folder, *, dtype=jnp.float32) -> AutoencoderKL:
    """Loads a diffusers AutoencoderKL folder (config.json + diffusion_pytorch_model[.fp16].safetensors), or the
    vae/ of an SD / InstructPix2Pix pipeline folder; a gs:// folder is mirrored to local disk first."""
    folder = Path(vae_folder(storage.local_mirror(folder)))
    config = read_sd_vae_config(folder)
    return sd_vae_from_tensors(folder_weights(folder, WEIGHTS_NAME), config, source=str(folder), dtype=dtype)


def save_sd_vae(model: AutoencoderKL, out_dir, *, float16: bool = False) -> Path:
    """Writes config.json + diffusion_pytorch_model[.fp16].safetensors that diffusers' from_pretrained reads."""
    config = {"_class_name": DIFFUSERS_CLASS, **model.config.to_diffusers_dict()}
    return save_module(model, out_dir, WEIGHTS_NAME, config, float16=float16)
