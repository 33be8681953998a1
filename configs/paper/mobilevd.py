"""MobileVD: collapsed cross-attention + temporal multiscaling + 70 % temporal pruning + funnels r =
0.5, merged. 14 frames at 512×256, batch 1. Paper: Tables 1 and 2, MobileVD (+ channel funneling).

Efficiency table (params, TFLOPs per UNet forward):
    python -m mvd_jax.tables --configs=configs/paper/mobilevd.py
"""
from mvd_jax.settings import efficiency_row
from mvd_jax.models.gates import SVD_BLOCKS_BY_COST
from mvd_jax.models.unet_config import UNetConfig


def get_config():
    model = UNetConfig(collapse_cross_attention=True, temporal_multiscale=True,
                       pruned_temporal_blocks=SVD_BLOCKS_BY_COST[:27],
                       funnel_factor=0.5, funnels_merged=True)
    return efficiency_row("mobilevd", model, height=256, width=512, paper_tflops=4.34,
                          paper_source="Tables 1 and 2, MobileVD (+ channel funneling)")
