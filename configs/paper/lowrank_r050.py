"""Truncated-SVD low-rank self-attention projections, rank r = 0.5 (Table 5's baseline, models/low_rank.py);
uncollapsed cross-attention as in Table 5. 14 frames at 512×256, batch 1. Paper: Table 5,
+ Truncated singular decomposition 0.5.

Efficiency table (params, TFLOPs per UNet forward):
    python -m mvd_jax.tables --configs=configs/paper/lowrank_r050.py
"""
import ml_collections

from mvd_jax.models.unet_config import UNetConfig


def get_config():
    c = ml_collections.ConfigDict()
    c.name = "lowrank_r050"
    c.model = UNetConfig(low_rank_factor=0.5).to_dict()
    c.frames = 14
    c.height = 256
    c.width = 512
    c.batch = 1
    c.vae_scale_factor = 8
    c.paper = ml_collections.ConfigDict(dict(tflops=8.6, source="Table 5, + Truncated singular decomposition 0.5"))
    return c
