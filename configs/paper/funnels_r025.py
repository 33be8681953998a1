"""channel funnels r = 0.25 on every self-attention, merged (§2(d)); Table 5's TFLOPs count the
uncollapsed cross-attention (its 'Original UNet' is 8.6), so these rows do too. 14 frames at
512×256, batch 1. Paper: Table 4, CSI 0.25 (no TFLOPs given).

Efficiency table (params, TFLOPs per UNet forward):
    python -m mvd_jax.tables --configs=configs/paper/funnels_r025.py
"""
import ml_collections

from mvd_jax.models.unet_config import UNetConfig


def get_config():
    c = ml_collections.ConfigDict()
    c.name = "funnels_r025"
    c.model = UNetConfig(funnel_factor=0.25, funnels_merged=True).to_dict()
    c.frames = 14
    c.height = 256
    c.width = 512
    c.batch = 1
    c.vae_scale_factor = 8
    c.paper = ml_collections.ConfigDict(dict(tflops=None, source="Table 4, CSI 0.25 (no TFLOPs given)"))
    return c
