"""The SVD UNet as a flat dict of diffusers-named, torch-layout tensors (the generic rules: models/tensors.py).

Checkpoint loading (convert/diffusers_unet.py) and model surgery (funnels, low-rank factors, pruning)
both go through here: a UNet is rebuilt from an edited dict, strictly checked against its config.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from mvd_jax.models.tensors import abstract_module, expected_from_module, load_module, module_to_tensors
from mvd_jax.models.unet import SpatioTemporalUNet
from mvd_jax.models.unet_config import UNetConfig

# Parameters that MobileVD adds to an SVD UNet and that start from a fixed value rather than from the
# checkpoint: the temporal-gate importances (gates.py). A checkpoint may carry them (a run being
# resumed) or not (an SVD checkpoint entering the gate-learning stage).
FRESH_PREFIXES = ("temporal_gates.",)


def fresh_value(name: str, shape: tuple) -> np.ndarray:
    if name == "temporal_gates.logits":
        return np.zeros(shape, np.float32)  # all blocks equally important
    if name == "temporal_gates.scales":
        return np.ones(shape, np.float32)  # L1 baseline: every block fully on
    raise KeyError(name)


def abstract_unet(config: UNetConfig) -> SpatioTemporalUNet:
    """The UNet with ShapeDtypeStruct leaves: shapes without memory."""
    return abstract_module(SpatioTemporalUNet, config)


def expected_parameters(config: UNetConfig) -> dict[str, tuple]:
    """diffusers name → torch-layout shape, for every parameter of the UNet built from `config`."""
    return expected_from_module(abstract_unet(config))


def unet_from_tensors(tensors: dict[str, np.ndarray], config: UNetConfig, *, source: str = "<tensors>",
                      dtype=jnp.float32, guidance_seed: int = 0) -> SpatioTemporalUNet:
    """Builds the UNet from diffusers-named, torch-layout tensors (strictly checked). A config with guidance_scales
    loaded from tensors without guidance weights gets them fresh (models/guidance_embedding.with_fresh_guidance:
    zero projections, the MLP from guidance_seed): the UNet then computes what the tensors' UNet does."""
    if config.guidance_scales:
        from flax import nnx

        from mvd_jax.models.guidance_embedding import GuidanceEmbedding, with_fresh_guidance

        embedding = GuidanceEmbedding(config.guidance_scales, config.block_out_channels[0], config.time_embed_dim,
                                      rngs=nnx.Rngs(guidance_seed))
        tensors = with_fresh_guidance(tensors, expected_parameters(config), embedding)
    return load_module(abstract_unet(config), tensors, source=source, what="the UNet config", dtype=dtype,
                       fresh_prefixes=FRESH_PREFIXES, fresh_value=fresh_value)


def unet_to_tensors(model: SpatioTemporalUNet) -> dict[str, np.ndarray]:
    """diffusers-named, torch-layout float32 NumPy arrays of every parameter."""
    return module_to_tensors(model)
