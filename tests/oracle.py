"""Helpers that build the PyTorch oracle (diffusers) for the tests.

Test-only: imports torch and diffusers.
"""
from __future__ import annotations

import numpy as np
import torch
from diffusers import UNetSpatioTemporalConditionModel

# Small configs with SVD's full block structure: 4 levels, the same down/up block types, ≥ 2 heads.
SMALL_CONFIGS = {
    "tiny": dict(
        block_out_channels=(32, 64, 64, 64), num_attention_heads=(2, 2, 4, 4), cross_attention_dim=32,
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=24, layers_per_block=1, num_frames=8),
    "svd_like": dict(
        block_out_channels=(32, 64, 96, 96), num_attention_heads=(2, 4, 3, 3), cross_attention_dim=48,
        addition_time_embed_dim=16, projection_class_embeddings_input_dim=48, layers_per_block=2,
        transformer_layers_per_block=(1, 2, 1, 1), num_frames=14),
}


def random_diffusers_unet(config: dict, seed: int = 0) -> UNetSpatioTemporalConditionModel:
    """A diffusers UNet whose every parameter is random (norm scales, biases and mix factors included),
    so a mis-mapped parameter cannot hide behind a default value like 1, 0 or 0.5."""
    torch.manual_seed(seed)
    return randomize_parameters(UNetSpatioTemporalConditionModel(**config).eval(), seed + 1)


def randomize_parameters(model, seed: int):
    """Every parameter of a torch model drawn at random (in place; returns the model): matrices
    N(0, 1/fan_in), mix factors N(0, 1), norm scales 1 + 0.2·N, everything else 0.2·N."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / np.sqrt(fan_in))
            elif name.endswith("mix_factor"):
                p.copy_(torch.randn(p.shape, generator=g))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model


def random_inputs(config: dict, batch: int, frames: int, height: int, width: int, seed: int = 0):
    """NumPy inputs in diffusers' layout: sample (B, T, C, H, W)."""
    rng = np.random.default_rng(seed)
    d = config.get("cross_attention_dim", 1024)
    n_ids = config["projection_class_embeddings_input_dim"] // config["addition_time_embed_dim"]
    return dict(
        sample=rng.standard_normal((batch, frames, config.get("in_channels", 8), height, width)).astype(np.float32),
        timestep=rng.uniform(-2.0, 2.0, (batch,)).astype(np.float32),  # c_noise = ln(σ)/4 for σ ∈ [3e-4, 3e3]
        encoder_hidden_states=rng.standard_normal((batch, 1, d)).astype(np.float32),
        added_time_ids=np.stack([rng.uniform(0, 30, batch), rng.uniform(0, 255, batch), rng.uniform(0, 0.1, batch)][:n_ids]
                                + [rng.uniform(0, 1, batch)] * (n_ids - 3), axis=1).astype(np.float32),
    )


@torch.no_grad()
def diffusers_forward(model: UNetSpatioTemporalConditionModel, sample, timestep, encoder_hidden_states, added_time_ids,
                      image_only_indicator=None) -> np.ndarray:
    """diffusers' forward; with an image_only_indicator the top-level steps of
    `UNetSpatioTemporalConditionModel.forward` are replayed around diffusers' own blocks, because that
    forward hard-codes zeros for the indicator while its blocks accept one."""
    t = lambda a: torch.from_numpy(np.asarray(a))
    if image_only_indicator is None:
        return model(t(sample), t(timestep), t(encoder_hidden_states), t(added_time_ids), return_dict=False)[0].numpy()

    sample, timestep, ehs, ids = t(sample), t(timestep), t(encoder_hidden_states), t(added_time_ids)
    b, f = sample.shape[:2]
    emb = model.time_embedding(model.time_proj(timestep.expand(b)).to(sample.dtype))
    emb = emb + model.add_embedding(model.add_time_proj(ids.flatten()).reshape(b, -1))
    x = model.conv_in(sample.flatten(0, 1))
    emb = emb.repeat_interleave(f, dim=0)
    ehs = ehs.repeat_interleave(f, dim=0)
    iio = t(image_only_indicator).to(sample.dtype)
    skips = (x,)
    for blk in model.down_blocks:
        kw = dict(encoder_hidden_states=ehs) if getattr(blk, "has_cross_attention", False) else {}
        x, res = blk(hidden_states=x, temb=emb, image_only_indicator=iio, **kw)
        skips += res
    x = model.mid_block(hidden_states=x, temb=emb, encoder_hidden_states=ehs, image_only_indicator=iio)
    for i, blk in enumerate(model.up_blocks):
        res, skips = skips[-len(blk.resnets):], skips[:-len(blk.resnets)]
        size = skips[-1].shape[2:] if i < len(model.up_blocks) - 1 else None
        kw = dict(encoder_hidden_states=ehs) if getattr(blk, "has_cross_attention", False) else {}
        x = blk(hidden_states=x, temb=emb, res_hidden_states_tuple=res, upsample_size=size, image_only_indicator=iio, **kw)
    x = model.conv_out(model.conv_act(model.conv_norm_out(x)))
    return x.reshape(b, f, *x.shape[1:]).numpy()


def rel_l2(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))
