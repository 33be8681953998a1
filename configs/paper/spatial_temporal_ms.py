"""the collapsed 512×256 model with both spatial and temporal multiscaling. 14 frames at 512×256, batch
1. Paper: Table 3, spatial + temporal ms..

Efficiency table (params, TFLOPs per UNet forward):
    python -m mvd_jax.tables --configs=configs/paper/spatial_temporal_ms.py
"""
import ml_collections

from mvd_jax.models.unet_config import UNetConfig


def get_config():
    c = ml_collections.ConfigDict()
    c.name = "spatial_temporal_ms"
    c.model = UNetConfig(collapse_cross_attention=True, spatial_multiscale=True, temporal_multiscale=True).to_dict()
    c.frames = 14
    c.height = 256
    c.width = 512
    c.batch = 1
    c.vae_scale_factor = 8
    c.paper = ml_collections.ConfigDict(dict(tflops=3.39, source="Table 3, spatial + temporal ms."))
    return c
