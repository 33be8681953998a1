"""+ temporal block pruning, 70 % of the 38 blocks (27 removed; the tables' default choice of blocks,
see gates.SVD_BLOCKS_BY_COST). 14 frames at 512×256, batch 1. Paper: Tables 2 and 6, our method 70
%.

Efficiency table (params, TFLOPs per UNet forward):
    python -m mvd_jax.tables --configs=configs/paper/pruned_70.py
"""
from mvd_jax.settings import efficiency_row
from mvd_jax.models.gates import SVD_BLOCKS_BY_COST
from mvd_jax.models.unet_config import UNetConfig


def get_config():
    model = UNetConfig(collapse_cross_attention=True, temporal_multiscale=True,
                       pruned_temporal_blocks=SVD_BLOCKS_BY_COST[:27])
    return efficiency_row("pruned_70", model, height=256, width=512, paper_tflops=4.64,
                          paper_source="Tables 2 and 6, our method 70 %")
