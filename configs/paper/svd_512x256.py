"""Stable Video Diffusion's UNet at 512x256, 14 frames, batch 1: the paper's "Table 2, 512×256 SVD" row.

Efficiency table (params, TFLOPs per UNet forward):
    python -m mvd_jax.tables --configs=configs/paper/svd_512x256.py
"""
import ml_collections

from mvd_jax.models.unet_config import UNetConfig


def get_config():
    c = ml_collections.ConfigDict()
    c.name = "svd_512x256"
    c.model = UNetConfig().to_dict()  # SVD img2vid UNet (diffusers defaults)
    c.frames = 14
    c.height = 256
    c.width = 512
    c.batch = 1
    c.vae_scale_factor = 8
    c.paper = ml_collections.ConfigDict(dict(tflops=8.60, source="Table 2, 512×256 SVD"))
    return c
