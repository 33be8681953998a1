"""Flax NNX models of mvd_jax."""
from mvd_jax.models.unet import SpatioTemporalUNet
from mvd_jax.models.unet_config import UNetConfig

__all__ = ["SpatioTemporalUNet", "UNetConfig"]
