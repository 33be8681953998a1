"""Parameter names of Stability AI's generative-models (SGM) `VideoUNet`, derived from diffusers' names.

SVD's single-file checkpoints (`svd.safetensors`) store the UNet under `model.diffusion_model.` with
the original LDM layout:
  input_blocks.0.0                    conv_in
  input_blocks.k.0 / .k.1             a down resnet / its transformer (k counts resnets and downsamplers)
  input_blocks.k.0.op                 a downsampler
  middle_block.0 / .1 / .2            mid resnet, transformer, resnet
  output_blocks.k.0 / .k.1            an up resnet / its transformer
  output_blocks.k.{1|2}.conv          an upsampler (.2 when the block has a transformer)
  time_embed.{0,2}, label_emb.0.{0,2} time and added-time-id MLPs;  out.0 / out.2  norm_out / conv_out
Inside a resnet: in_layers.0/.2 = norm1/conv1, emb_layers.1 = time_emb_proj, out_layers.0/.3 =
norm2/conv2, skip_connection = conv_shortcut; its temporal half lives under `time_stack.` and the
blend factor is `time_mixer.mix_factor`. Inside a transformer, the temporal blocks are `time_stack.i`
and `time_pos_embed.{0,2}` the frame-embedding MLP; everything else keeps diffusers' names.
(This mirrors the published layout that diffusers' `scripts/convert_svd_to_diffusers.py` reads.)
Tensor layouts are identical in both namings.
"""
from __future__ import annotations

import re

from mvd_jax.models.unet_config import UNetConfig

SGM_PREFIX = "model.diffusion_model."

_TOP = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def _resnet_rest(rest: str) -> str:
    """`spatial_res_block.conv1.weight` → `in_layers.2.weight`; temporal half goes under `time_stack.`."""
    part, _, tail = rest.partition(".")
    if part == "time_mixer":
        return rest
    layer, _, leaf = tail.partition(".")
    sgm = f"{_RESNET[layer]}.{leaf}"
    return sgm if part == "spatial_res_block" else f"time_stack.{sgm}"


def _transformer_rest(rest: str) -> str:
    rest = re.sub(r"^temporal_transformer_blocks\.", "time_stack.", rest)
    return re.sub(r"^time_pos_embed\.linear_([12])\.", lambda m: f"time_pos_embed.{2 * int(m.group(1)) - 2}.", rest)


def diffusers_to_sgm(key: str, config: UNetConfig) -> str:
    """The SGM name (without the `model.diffusion_model.` prefix) of diffusers parameter `key`."""
    module, _, leaf = key.rpartition(".")
    if module in _TOP:
        return f"{_TOP[module]}.{leaf}"

    # Index of the first input/output block of each level in SGM's flat lists.
    n = len(config.block_out_channels)
    first_in = [1]
    for i in range(n - 1):
        first_in.append(first_in[-1] + config.layers[i] + 1)  # resnets + the downsampler
    up_layers = [l + 1 for l in config.layers[::-1]]
    first_out = [0]
    for i in range(n - 1):
        first_out.append(first_out[-1] + up_layers[i])

    m = re.match(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.(.*)$", key)
    if m:
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "downsamplers":
            return f"input_blocks.{first_in[b] + config.layers[b]}.0.{rest.replace('conv.', 'op.', 1)}"
        k = first_in[b] + j
        return f"input_blocks.{k}.0.{_resnet_rest(rest)}" if kind == "resnets" else f"input_blocks.{k}.1.{_transformer_rest(rest)}"

    m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)$", key)
    if m:
        kind, j, rest = m[1], int(m[2]), m[3]
        if kind == "resnets":
            return f"middle_block.{2 * j}.{_resnet_rest(rest)}"
        return f"middle_block.{2 * j + 1}.{_transformer_rest(rest)}"

    m = re.match(r"up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)\.(.*)$", key)
    if m:
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "upsamplers":
            slot = 2 if config.up_block_types[b].startswith("CrossAttn") else 1
            return f"output_blocks.{first_out[b] + up_layers[b] - 1}.{slot}.{rest}"
        k = first_out[b] + j
        return f"output_blocks.{k}.0.{_resnet_rest(rest)}" if kind == "resnets" else f"output_blocks.{k}.1.{_transformer_rest(rest)}"

    raise KeyError(f"no SGM name for diffusers parameter {key!r}")
