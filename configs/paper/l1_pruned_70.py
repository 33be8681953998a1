"""the L1-regularised pruning baseline at 70 % (training: temporal_gating='l1'; the efficiency row
removes the same default blocks as pruned_70 — which blocks L1 drops is decided by training). 14
frames at 512×256, batch 1. Paper: Table 6, L1 regularization 70 %.

Efficiency table (params, TFLOPs per UNet forward):
    python -m mvd_jax.tables --configs=configs/paper/l1_pruned_70.py
"""
import ml_collections

from mvd_jax.models.gates import SVD_BLOCKS_BY_COST
from mvd_jax.models.unet_config import UNetConfig


def get_config():
    c = ml_collections.ConfigDict()
    c.name = "l1_pruned_70"
    c.model = UNetConfig(collapse_cross_attention=True, temporal_multiscale=True, pruned_temporal_blocks=SVD_BLOCKS_BY_COST[:27]).to_dict()
    c.frames = 14
    c.height = 256
    c.width = 512
    c.batch = 1
    c.vae_scale_factor = 8
    c.paper = ml_collections.ConfigDict(dict(tflops=4.67, source="Table 6, L1 regularization 70 %"))
    return c
