"""channel funnels r = 0.25 on every self-attention, merged (§2(d)); Table 5's TFLOPs count the
uncollapsed cross-attention (its 'Original UNet' is 8.6), so these rows do too. 14 frames at
512×256, batch 1. Paper: Table 4, CSI 0.25 (no TFLOPs given).

Efficiency table (params, TFLOPs per UNet forward):
    python -m mvd_jax.tables --configs=configs/paper/funnels_r025.py
"""
from mvd_jax.settings import efficiency_row
from mvd_jax.models.unet_config import UNetConfig


def get_config():
    model = UNetConfig(funnel_factor=0.25, funnels_merged=True)
    return efficiency_row("funnels_r025", model, height=256, width=512, paper_tflops=None,
                          paper_source="Table 4, CSI 0.25 (no TFLOPs given)")
