"""SVD at 512×256 with the collapsed 1-token cross-attention (§2(c)). 14 frames at 512×256, batch 1.
Paper: Table 2, + optimized cross-attention.

Efficiency table (params, TFLOPs per UNet forward):
    python -m mvd_jax.tables --configs=configs/paper/xattn.py
"""
import ml_collections

from mvd_jax.models.unet_config import UNetConfig


def get_config():
    c = ml_collections.ConfigDict()
    c.name = "xattn"
    c.model = UNetConfig(collapse_cross_attention=True).to_dict()
    c.frames = 14
    c.height = 256
    c.width = 512
    c.batch = 1
    c.vae_scale_factor = 8
    c.paper = ml_collections.ConfigDict(dict(tflops=8.24, source="Table 2, + optimized cross-attention"))
    return c
