"""Truncated-SVD low-rank self-attention projections, rank r = 0.25 (Table 5's baseline, models/low_rank.py);
uncollapsed cross-attention as in Table 5. 14 frames at 512×256, batch 1. Paper: Table 5,
+ Truncated singular decomposition 0.25.

Efficiency table (params, TFLOPs per UNet forward):
    python -m mvd_jax.tables --configs=configs/paper/lowrank_r025.py
"""
from mvd_jax.settings import efficiency_row
from mvd_jax.models.unet_config import UNetConfig


def get_config():
    model = UNetConfig(low_rank_factor=0.25)
    return efficiency_row("lowrank_r025", model, height=256, width=512, paper_tflops=8.0,
                          paper_source="Table 5, + Truncated singular decomposition 0.25")
