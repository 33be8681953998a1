"""temporal block pruning, 90 % (34 of 38 removed). 14 frames at 512×256, batch 1. Paper: Table 6, our
method 90 %.

Efficiency table (params, TFLOPs per UNet forward):
    python -m mvd_jax.tables --configs=configs/paper/pruned_90.py
"""
import ml_collections

from mvd_jax.models.gates import SVD_BLOCKS_BY_COST
from mvd_jax.models.unet_config import UNetConfig


def get_config():
    c = ml_collections.ConfigDict()
    c.name = "pruned_90"
    c.model = UNetConfig(collapse_cross_attention=True, temporal_multiscale=True, pruned_temporal_blocks=SVD_BLOCKS_BY_COST[:34]).to_dict()
    c.frames = 14
    c.height = 256
    c.width = 512
    c.batch = 1
    c.vae_scale_factor = 8
    c.paper = ml_collections.ConfigDict(dict(tflops=4.06, source="Table 6, our method 90 %"))
    return c
