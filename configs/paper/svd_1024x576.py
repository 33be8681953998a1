"""Stable Video Diffusion's UNet at 1024x576, 14 frames, batch 1: the paper's "Tables 1 and 8, 1024×576 SVD" row.

Efficiency table (params, TFLOPs per UNet forward):
    python -m mvd_jax.tables --configs=configs/paper/svd_1024x576.py
"""
from mvd_jax.settings import efficiency_row
from mvd_jax.models.unet_config import UNetConfig


def get_config():
    model = UNetConfig()
    return efficiency_row("svd_1024x576", model, height=576, width=1024, paper_tflops=45.43,
                          paper_source="Tables 1 and 8, 1024×576 SVD")
