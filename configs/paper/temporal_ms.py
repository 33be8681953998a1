"""+ temporal multiscaling: T/2 below the top resolution level (§2(b)). 14 frames at 512×256, batch 1.
Paper: Tables 2 and 3, + temporal multiscaling.

Efficiency table (params, TFLOPs per UNet forward):
    python -m mvd_jax.tables --configs=configs/paper/temporal_ms.py
"""
from mvd_jax.settings import efficiency_row
from mvd_jax.models.unet_config import UNetConfig


def get_config():
    model = UNetConfig(collapse_cross_attention=True, temporal_multiscale=True)
    return efficiency_row("temporal_ms", model, height=256, width=512, paper_tflops=5.42,
                          paper_source="Tables 2 and 3, + temporal multiscaling")
