"""Stable Video Diffusion's UNet at 512x256, 14 frames, batch 1: the paper's "Table 2, 512×256 SVD" row.

Efficiency table (params, TFLOPs per UNet forward):
    python -m mvd_jax.tables --configs=configs/paper/svd_512x256.py
"""
from mvd_jax.settings import efficiency_row
from mvd_jax.models.unet_config import UNetConfig


def get_config():
    model = UNetConfig()
    return efficiency_row("svd_512x256", model, height=256, width=512, paper_tflops=8.60,
                          paper_source="Table 2, 512×256 SVD")
