"""the L1-regularised pruning baseline at 70 % (training: temporal_gating='l1'; the efficiency row
removes the same default blocks as pruned_70 — which blocks L1 drops is decided by training). 14
frames at 512×256, batch 1. Paper: Table 6, L1 regularization 70 %.

Efficiency table (params, TFLOPs per UNet forward):
    python -m mvd_jax.tables --configs=configs/paper/l1_pruned_70.py
"""
from mvd_jax.settings import efficiency_row
from mvd_jax.models.gates import SVD_BLOCKS_BY_COST
from mvd_jax.models.unet_config import UNetConfig


def get_config():
    model = UNetConfig(collapse_cross_attention=True, temporal_multiscale=True,
                       pruned_temporal_blocks=SVD_BLOCKS_BY_COST[:27])
    return efficiency_row("l1_pruned_70", model, height=256, width=512, paper_tflops=4.67,
                          paper_source="Table 6, L1 regularization 70 %")
