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


def vae_folder(path) -> Path:
    """A diffusers VAE folder: `path` itself, or its vae/ (an SVD pipeline folder)."""
    folder = storage.path(path)
    return folder / "vae" if (folder / "vae" / "config.json").is_file() else folder


def autoencoder_vae_config(a) -> VAEConfig:
    """The VAEConfig an experiment config's `autoencoder` section names, without loading weights: kind
    'random_vae' from its vae_* keys; 'vae' from its checkpoint (a VAE folder, or an autoencoder-phase run
    directory: that run's own autoencoder section); 'svd' from the pipeline folder's vae/."""
    import json

    if a["kind"] == "random_vae":
        blocks = tuple(a["vae_block_out_channels"])
        return VAEConfig(block_out_channels=blocks, layers_per_block=a["vae_layers_per_block"],
                         latent_channels=a["vae_latent_channels"], scaling_factor=a["vae_scaling_factor"],
                         down_block_types=("DownEncoderBlock2D",) * len(blocks))
    run_config = storage.path(a["checkpoint"]) / "checkpoints" / "config.json"
    if a["kind"] == "vae" and run_config.is_file():
        return autoencoder_vae_config(json.loads(run_config.read_text())["autoencoder"])
    return read_vae_config(vae_folder(a["checkpoint"]))
