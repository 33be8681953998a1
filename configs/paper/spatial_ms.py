"""the collapsed 512×256 model with an extra 2× spatial reduction below the top level instead. 14
frames at 512×256, batch 1. Paper: Table 3, spatial ms. only.

Efficiency table (params, TFLOPs per UNet forward):
    python -m mvd_jax.tables --configs=configs/paper/spatial_ms.py
"""
import ml_collections

from mvd_jax.models.unet_config import UNetConfig


def get_config():
    c = ml_collections.ConfigDict()
    c.name = "spatial_ms"
    c.model = UNetConfig(collapse_cross_attention=True, spatial_multiscale=True).to_dict()
    c.frames = 14
    c.height = 256
    c.width = 512
    c.batch = 1
    c.vae_scale_factor = 8
    c.paper = ml_collections.ConfigDict(dict(tflops=4.35, source="Table 3, spatial ms. only"))
    return c
