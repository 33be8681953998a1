"""Checkpoint import/export: diffusers folders and SGM single files ↔ NNX modules."""
from mvd_jax.convert.diffusers_unet import (
    load_unet,
    read_unet_checkpoint,
    save_unet_diffusers,
    unet_from_tensors,
    unet_to_tensors,
)
from mvd_jax.convert.strict import CheckpointMismatchError

__all__ = ["CheckpointMismatchError", "load_unet", "read_unet_checkpoint", "save_unet_diffusers",
           "unet_from_tensors", "unet_to_tensors"]
