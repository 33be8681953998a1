"""channel funnels r = 0.5 on convolutions instead of attention, merged (see models/funnels.py for the
placement); uncollapsed cross-attention as in Table 5. 14 frames at 512×256, batch 1. Paper: Table
5, + Funnels (convolutions) 0.5.

Efficiency table (params, TFLOPs per UNet forward):
    python -m mvd_jax.tables --configs=configs/paper/funnels_conv_r050.py
"""
from mvd_jax.settings import efficiency_row
from mvd_jax.models.unet_config import UNetConfig


def get_config():
    model = UNetConfig(funnel_factor=0.5, funnel_target='conv', funnels_merged=True)
    return efficiency_row("funnels_conv_r050", model, height=256, width=512, paper_tflops=7.2,
                          paper_source="Table 5, + Funnels (convolutions) 0.5")
