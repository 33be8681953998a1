"""channel funnels r = 0.75 on every self-attention, merged; uncollapsed cross-attention as in Table 5.
14 frames at 512×256, batch 1. Paper: Table 4, CSI 0.75 (no TFLOPs given).

Efficiency table (params, TFLOPs per UNet forward):
    python -m mvd_jax.tables --configs=configs/paper/funnels_r075.py
"""
from mvd_jax.settings import efficiency_row
from mvd_jax.models.unet_config import UNetConfig


def get_config():
    model = UNetConfig(funnel_factor=0.75, funnels_merged=True)
    return efficiency_row("funnels_r075", model, height=256, width=512, paper_tflops=None,
                          paper_source="Table 4, CSI 0.75 (no TFLOPs given)")
