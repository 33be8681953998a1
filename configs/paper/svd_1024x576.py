"""Stable Video Diffusion's UNet at 1024x576, 14 frames, batch 1: the paper's "Tables 1 and 8, 1024×576 SVD" row.

Efficiency table (params, TFLOPs per UNet forward):
    python -m mvd_jax.tables --configs=configs/paper/svd_1024x576.py
"""
import ml_collections

from mvd_jax.models.unet_config import UNetConfig


def get_config():
    c = ml_collections.ConfigDict()
    c.name = "svd_1024x576"
    c.model = UNetConfig().to_dict()  # SVD img2vid UNet (diffusers defaults)
    c.frames = 14
    c.height = 576
    c.width = 1024
    c.batch = 1
    c.vae_scale_factor = 8
    c.paper = ml_collections.ConfigDict(dict(tflops=45.43, source="Tables 1 and 8, 1024×576 SVD"))
    return c
