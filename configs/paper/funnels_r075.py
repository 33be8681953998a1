"""channel funnels r = 0.75 on every self-attention, merged; uncollapsed cross-attention as in Table 5.
14 frames at 512×256, batch 1. Paper: Table 4, CSI 0.75 (no TFLOPs given).

Efficiency table (params, TFLOPs per UNet forward):
    python -m mvd_jax.tables --configs=configs/paper/funnels_r075.py
"""
import ml_collections

from mvd_jax.models.unet_config import UNetConfig


def get_config():
    c = ml_collections.ConfigDict()
    c.name = "funnels_r075"
    c.model = UNetConfig(funnel_factor=0.75, funnels_merged=True).to_dict()
    c.frames = 14
    c.height = 256
    c.width = 512
    c.batch = 1
    c.vae_scale_factor = 8
    c.paper = ml_collections.ConfigDict(dict(tflops=None, source="Table 4, CSI 0.75 (no TFLOPs given)"))
    return c
