"""the collapsed 512×256 model with an extra 2× spatial reduction below the top level instead. 14
frames at 512×256, batch 1. Paper: Table 3, spatial ms. only.

Efficiency table (params, TFLOPs per UNet forward):
    python -m mvd_jax.tables --configs=configs/paper/spatial_ms.py
"""
from mvd_jax.settings import efficiency_row
from mvd_jax.models.unet_config import UNetConfig


def get_config():
    model = UNetConfig(collapse_cross_attention=True, spatial_multiscale=True)
    return efficiency_row("spatial_ms", model, height=256, width=512, paper_tflops=4.35,
                          paper_source="Table 3, spatial ms. only")
