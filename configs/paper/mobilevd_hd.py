"""MobileVD-HD: the MobileVD recipe at 1024×576. 14 frames at 1024×576, batch 1. Paper: Tables 7 and 8,
MobileVD-HD.

Efficiency table (params, TFLOPs per UNet forward):
    python -m mvd_jax.tables --configs=configs/paper/mobilevd_hd.py
"""
import ml_collections

from mvd_jax.models.gates import SVD_BLOCKS_BY_COST
from mvd_jax.models.unet_config import UNetConfig


def get_config():
    c = ml_collections.ConfigDict()
    c.name = "mobilevd_hd"
    c.model = UNetConfig(collapse_cross_attention=True, temporal_multiscale=True, pruned_temporal_blocks=SVD_BLOCKS_BY_COST[:27], funnel_factor=0.5, funnels_merged=True).to_dict()
    c.frames = 14
    c.height = 576
    c.width = 1024
    c.batch = 1
    c.vae_scale_factor = 8
    c.paper = ml_collections.ConfigDict(dict(tflops=23.63, source="Tables 7 and 8, MobileVD-HD"))
    return c
