"""+ temporal multiscaling: T/2 below the top resolution level (§2(b)). 14 frames at 512×256, batch 1.
Paper: Tables 2 and 3, + temporal multiscaling.

Efficiency table (params, TFLOPs per UNet forward):
    python -m mvd_jax.tables --configs=configs/paper/temporal_ms.py
"""
import ml_collections

from mvd_jax.models.unet_config import UNetConfig


def get_config():
    c = ml_collections.ConfigDict()
    c.name = "temporal_ms"
    c.model = UNetConfig(collapse_cross_attention=True, temporal_multiscale=True).to_dict()
    c.frames = 14
    c.height = 256
    c.width = 512
    c.batch = 1
    c.vae_scale_factor = 8
    c.paper = ml_collections.ConfigDict(dict(tflops=5.42, source="Tables 2 and 3, + temporal multiscaling"))
    return c
