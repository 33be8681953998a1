"""Checkpoint import for the SD-1.5 / InstructPix2Pix UNet (models/unet2d_condition.py): a diffusers `unet/`
folder (config.json + diffusion_pytorch_model.safetensors, its sharded index or fp16 variant) → NNX.

The mapping is mechanical (models/tensors.py): diffusers `down_blocks.0.attentions.0.proj_in.weight` is the
NNX path down_blocks/0/attentions/0/proj_in/kernel with the layout transposed. Loading is strict: every
missing, unexpected or wrong-shaped parameter is an error naming it with both shapes. The one exception is
explicit: `drop_unused=True` discards the tensors of the attentions a MoViE config removes
(drop_top_attention: `down_blocks.0.attentions.*` and the last up block's `attentions.*`), and only those.
A config with `guidance_scales` (the guidance-distilled student) loaded from a checkpoint that has no guidance
weights gets them created: the embedding's MLP at random (guidance_seed), every
`guidance_emb_proj` at zero — the model then computes exactly what the checkpoint does
(models/guidance_embedding.with_fresh_guidance).

Pickled `.bin` weights are refused, as for every checkpoint in this package (a pickle can run code when
loaded, and reading one needs torch); diffusers' `save_pretrained(safe_serialization=True)` converts them.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from mvd_jax import storage
from mvd_jax.convert import strict
from mvd_jax.convert.strict import folder_weights
from mvd_jax.errors import UserError
from mvd_jax.models.guidance_embedding import with_fresh_guidance
from mvd_jax.models.tensors import (
    CheckpointMismatchError,
    abstract_module,
    expected_from_module,
    load_module,
    module_to_tensors,
)
from mvd_jax.models.unet2d_condition import UNet2DConditionModel
from mvd_jax.models.unet2d_config import MOVIE_KEYS, UNet2DConditionConfig

DIFFUSERS_CLASS = "UNet2DConditionModel"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


def resolve_config(config: Any) -> UNet2DConditionConfig:
    """A UNet2DConditionConfig, a dict of diffusers' keys, or a path to config.json → UNet2DConditionConfig."""
    return strict.resolve_config(config, UNet2DConditionConfig, DIFFUSERS_CLASS)


def abstract_unet2d(config: UNet2DConditionConfig) -> UNet2DConditionModel:
    """The UNet with ShapeDtypeStruct leaves: shapes without memory."""
    return abstract_module(UNet2DConditionModel, config)


def expected_parameters(config: UNet2DConditionConfig) -> dict[str, tuple]:
    """diffusers name → torch-layout shape of every parameter of the UNet built from `config`."""
    return expected_from_module(abstract_unet2d(config))


def fresh_guidance_embedding(config: UNet2DConditionConfig, seed: int = 0):
    """A freshly initialised guidance embedding for the UNet of `config` (guidance_scales > 0)."""
    from flax import nnx

    from mvd_jax.models.guidance_embedding import GuidanceEmbedding

    return GuidanceEmbedding(config.guidance_scales, config.block_out_channels[0], config.time_embed_dim,
                             flip_sin_to_cos=config.flip_sin_to_cos, freq_shift=config.freq_shift, rngs=nnx.Rngs(seed))


def unet2d_from_tensors(tensors: dict[str, np.ndarray], config: UNet2DConditionConfig, *, source: str = "<tensors>",
                        dtype=jnp.float32, drop_unused: bool = False, guidance_seed: int = 0) -> UNet2DConditionModel:
    """Builds the UNet from diffusers-named, torch-layout tensors, strictly checked against `config`.

    drop_unused: discard the tensors of the attentions `config` removes (config.removed_attention_prefixes,
    drop_top_attention), e.g. to start Mobile-Pix2Pix from an SD-1.5 / InstructPix2Pix checkpoint. Nothing
    else is ever dropped: any other missing, unexpected or wrong-shaped tensor is still an error.
    config.guidance_scales > 0 with no guidance tensors in `tensors`: they are created (with_fresh_guidance, the
    MLP from guidance_seed); some but not all of them present is an error like any other mismatch.
    """
    if config.guidance_scales:
        tensors = with_fresh_guidance(tensors, expected_parameters(config),
                                      fresh_guidance_embedding(config, guidance_seed))
    removed = config.removed_attention_prefixes
    if drop_unused:
        tensors = {k: v for k, v in tensors.items() if not k.startswith(removed)}
    try:
        return load_module(abstract_unet2d(config), tensors, source=source, what="the UNet2DConditionModel config",
                           dtype=dtype)
    except CheckpointMismatchError as e:
        if not drop_unused and removed and any(k.startswith(removed) for k in tensors):
            first, *rest = str(e).splitlines()
            hint = (f"{first} (the config drops the top-level attentions {list(removed)}: pass drop_unused=True to "
                    "discard their tensors)")
            raise CheckpointMismatchError("\n".join([hint, *rest])) from None
        raise


def unet2d_to_tensors(model: UNet2DConditionModel) -> dict[str, np.ndarray]:
    """diffusers-named, torch-layout float32 NumPy arrays of every parameter."""
    return module_to_tensors(model)


def load_unet2d(path, config=None, *, dtype=jnp.float32, drop_unused: bool = False, guidance_seed: int = 0,
                **movie_options) -> UNet2DConditionModel:
    """Loads an SD-1.5 / InstructPix2Pix UNet from a diffusers `unet/` folder (or a pipeline folder holding one;
    a gs:// folder is mirrored to local disk first, mvd_jax/storage.py).

    config: None (the folder's config.json), a UNet2DConditionConfig, a dict of diffusers' keys or a path.
    movie_options: MoViE switches applied on top of it (cross_frame_attention, drop_top_attention,
    guidance_scales), e.g. `load_unet2d(folder, drop_top_attention=True, drop_unused=True)` builds
    Mobile-Pix2Pix from a base checkpoint, `load_unet2d(folder, guidance_scales=2)` the guidance-distillation
    student at its start. drop_unused, guidance_seed: see unet2d_from_tensors.
    """
    unknown = sorted(set(movie_options) - set(MOVIE_KEYS))
    if unknown:
        raise UserError(f"unknown MoViE option(s) {unknown}; known: {list(MOVIE_KEYS)}")
    if storage.is_remote(path):
        remote = storage.path(path)
        if not (remote / "config.json").exists() and (remote / "unet" / "config.json").exists():
            remote = remote / "unet"
        if not remote.exists():
            raise UserError(f"checkpoint not found: {path}")
        path = storage.local_mirror(remote)
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    if not path.is_dir():
        raise UserError(f"{path}: expected a diffusers unet/ folder (config.json + {WEIGHTS_NAME})")
    if not (path / "config.json").is_file() and (path / "unet" / "config.json").is_file():
        path = path / "unet"
    cfg = resolve_config(config if config is not None else path / "config.json")
    if movie_options:
        cfg = dataclasses.replace(cfg, **movie_options)
    return unet2d_from_tensors(folder_weights(path, WEIGHTS_NAME), cfg, source=str(path), dtype=dtype,
                               drop_unused=drop_unused, guidance_seed=guidance_seed)
