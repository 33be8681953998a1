"""channel funnels r = 0.5 on convolutions instead of attention, merged (see models/funnels.py for the
placement); uncollapsed cross-attention as in Table 5. 14 frames at 512×256, batch 1. Paper: Table
5, + Funnels (convolutions) 0.5.

Efficiency table (params, TFLOPs per UNet forward):
    python -m mvd_jax.tables --configs=configs/paper/funnels_conv_r050.py
"""
import ml_collections

from mvd_jax.models.unet_config import UNetConfig


def get_config():
    c = ml_collections.ConfigDict()
    c.name = "funnels_conv_r050"
    c.model = UNetConfig(funnel_factor=0.5, funnel_target='conv', funnels_merged=True).to_dict()
    c.frames = 14
    c.height = 256
    c.width = 512
    c.batch = 1
    c.vae_scale_factor = 8
    c.paper = ml_collections.ConfigDict(dict(tflops=7.2, source="Table 5, + Funnels (convolutions) 0.5"))
    return c
