"""temporal block pruning, 90 % (34 of 38 removed). 14 frames at 512×256, batch 1. Paper: Table 6, our
method 90 %.

Efficiency table (params, TFLOPs per UNet forward):
    python -m mvd_jax.tables --configs=configs/paper/pruned_90.py
"""
from mvd_jax.settings import efficiency_row
from mvd_jax.models.gates import SVD_BLOCKS_BY_COST
from mvd_jax.models.unet_config import UNetConfig


def get_config():
    model = UNetConfig(collapse_cross_attention=True, temporal_multiscale=True,
                       pruned_temporal_blocks=SVD_BLOCKS_BY_COST[:34])
    return efficiency_row("pruned_90", model, height=256, width=512, paper_tflops=4.06,
                          paper_source="Table 6, our method 90 %")
