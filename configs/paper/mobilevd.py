"""MobileVD: collapsed cross-attention + temporal multiscaling + 70 % temporal pruning + funnels r =
0.5, merged. 14 frames at 512×256, batch 1. Paper: Tables 1 and 2, MobileVD (+ channel funneling).

Efficiency table (params, TFLOPs per UNet forward):
    python -m mvd_jax.tables --configs=configs/paper/mobilevd.py
"""
import ml_collections

from mvd_jax.models.gates import SVD_BLOCKS_BY_COST
from mvd_jax.models.unet_config import UNetConfig


def get_config():
    c = ml_collections.ConfigDict()
    c.name = "mobilevd"
    c.model = UNetConfig(collapse_cross_attention=True, temporal_multiscale=True, pruned_temporal_blocks=SVD_BLOCKS_BY_COST[:27], funnel_factor=0.5, funnels_merged=True).to_dict()
    c.frames = 14
    c.height = 256
    c.width = 512
    c.batch = 1
    c.vae_scale_factor = 8
    c.paper = ml_collections.ConfigDict(dict(tflops=4.34, source="Tables 1 and 2, MobileVD (+ channel funneling)"))
    return c
