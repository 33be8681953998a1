"""MobileVD-HD: the MobileVD recipe at 1024×576. 14 frames at 1024×576, batch 1. Paper: Tables 7 and 8,
MobileVD-HD.

Efficiency table (params, TFLOPs per UNet forward):
    python -m mvd_jax.tables --configs=configs/paper/mobilevd_hd.py
"""
from mvd_jax.settings import efficiency_row
from mvd_jax.models.gates import SVD_BLOCKS_BY_COST
from mvd_jax.models.unet_config import UNetConfig


def get_config():
    model = UNetConfig(collapse_cross_attention=True, temporal_multiscale=True,
                       pruned_temporal_blocks=SVD_BLOCKS_BY_COST[:27],
                       funnel_factor=0.5, funnels_merged=True)
    return efficiency_row("mobilevd_hd", model, height=576, width=1024, paper_tflops=23.63,
                          paper_source="Tables 7 and 8, MobileVD-HD")
