"""channel funnels r = 0.5 on every self-attention, merged; uncollapsed cross-attention as in Table 5.
14 frames at 512×256, batch 1. Paper: Table 5, + Funnels 0.5.

Efficiency table (params, TFLOPs per UNet forward):
    python -m mvd_jax.tables --configs=configs/paper/funnels_r050.py
"""
from mvd_jax.settings import efficiency_row
from mvd_jax.models.unet_config import UNetConfig


def get_config():
    model = UNetConfig(funnel_factor=0.5, funnels_merged=True)
    return efficiency_row("funnels_r050", model, height=256, width=512, paper_tflops=8.0,
                          paper_source="Table 5, + Funnels 0.5")
