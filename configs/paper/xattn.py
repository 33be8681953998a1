"""SVD at 512×256 with the collapsed 1-token cross-attention (§2(c)). 14 frames at 512×256, batch 1.
Paper: Table 2, + optimized cross-attention.

Efficiency table (params, TFLOPs per UNet forward):
    python -m mvd_jax.tables --configs=configs/paper/xattn.py
"""
from mvd_jax.settings import efficiency_row
from mvd_jax.models.unet_config import UNetConfig


def get_config():
    model = UNetConfig(collapse_cross_attention=True)
    return efficiency_row("xattn", model, height=256, width=512, paper_tflops=8.24,
                          paper_source="Table 2, + optimized cross-attention")
