"""Loading generative-models (SGM) single-file checkpoints.

The SGM file is written by this test from diffusers weights with its OWN renaming rules, written
from the published SVD layout in the style of diffusers' convert_svd_to_diffusers.py (string
replacements over block indices), independent of mvd_jax's structured mapping in
`mvd_jax.convert.sgm_names`. The two must agree for loading to succeed.
"""
import numpy as np
import pytest

import oracle
from conftest import jax_forward
from mvd_jax.convert import CheckpointMismatchError, load_unet, unet_to_tensors
from mvd_jax.convert.diffusers_unet import expected_parameters
from mvd_jax.convert.safetensors_io import read_safetensors, write_safetensors
from mvd_jax.convert.sgm_names import diffusers_to_sgm
from mvd_jax.models import UNetConfig

RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
          ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")]


def sgm_name_independent(key: str, layers: int, n_levels: int, up_has_attn: list[bool]) -> str:
    """diffusers → SGM renaming, uniform layers_per_block, written from the published layout."""
    top = {"conv_in.": "input_blocks.0.0.", "time_embedding.linear_1.": "time_embed.0.",
           "time_embedding.linear_2.": "time_embed.2.", "add_embedding.linear_1.": "label_emb.0.0.",
           "add_embedding.linear_2.": "label_emb.0.2.", "conv_norm_out.": "out.0.", "conv_out.": "out.2."}
    for old, new in top.items():
        if key.startswith(old):
            return new + key[len(old):]
    parts = key.split(".")
    if parts[0] == "mid_block":
        slot = {"resnets.0": "0", "attentions.0": "1", "resnets.1": "2"}[f"{parts[1]}.{parts[2]}"]
        prefix, rest = f"middle_block.{slot}", parts[3:]
        kind = parts[1]
    else:
        block, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
        if parts[0] == "down_blocks":
            base = 1 + block * (layers + 1)
            if kind == "downsamplers":
                return f"input_blocks.{base + layers}.0.op." + ".".join(rest[1:])
            prefix = f"input_blocks.{base + j}.{0 if kind == 'resnets' else 1}"
        else:
            base = block * (layers + 1)
            if kind == "upsamplers":
                return f"output_blocks.{base + layers}.{2 if up_has_attn[block] else 1}.conv." + ".".join(rest[1:])
            prefix = f"output_blocks.{base + j}.{0 if kind == 'resnets' else 1}"
    rest = ".".join(rest)
    if kind == "resnets":
        for old, new in RESNET:
            rest = rest.replace(f"spatial_res_block.{old}.", f"{new}.").replace(f"temporal_res_block.{old}.", f"time_stack.{new}.")
    else:
        rest = rest.replace("temporal_transformer_blocks.", "time_stack.")
        rest = rest.replace("time_pos_embed.linear_1.", "time_pos_embed.0.").replace("time_pos_embed.linear_2.", "time_pos_embed.2.")
    return f"{prefix}.{rest}"


def write_sgm_file(diffusers_folder, path, config: dict, with_other_models=False):
    tensors = read_safetensors(diffusers_folder / "diffusion_pytorch_model.safetensors")
    up_has_attn = [t.startswith("CrossAttn") for t in UNetConfig.from_dict(config).up_block_types]
    out = {"model.diffusion_model." + sgm_name_independent(k, config["layers_per_block"], 4, up_has_attn): v
           for k, v in tensors.items()}
    if with_other_models:  # a full SGM checkpoint also holds the conditioner and the VAE
        out["conditioner.embedders.0.open_clip.model.positional_embedding"] = np.zeros((3, 2), np.float32)
        out["first_stage_model.encoder.conv_in.weight"] = np.zeros((4, 3, 3, 3), np.float32)
    write_safetensors(path, out)
    return path


@pytest.mark.parametrize("name", ["tiny", "svd_like"])
def test_sgm_file_loads_to_the_same_weights_and_numbers(diffusers_unets, tmp_path, name):
    config = oracle.SMALL_CONFIGS[name]
    torch_model, folder = diffusers_unets(name)
    sgm = write_sgm_file(folder, tmp_path / "svd.safetensors", config, with_other_models=True)

    from_sgm = load_unet(sgm, config=config)
    from_diffusers = load_unet(folder)
    a, b = unet_to_tensors(from_sgm), unet_to_tensors(from_diffusers)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)

    inputs = oracle.random_inputs(config, 2, 3, 8, 16, seed=11)
    err = oracle.rel_l2(jax_forward(from_sgm, inputs), oracle.diffusers_forward(torch_model, **inputs))
    assert err <= 1e-5


def test_sgm_file_without_config_is_read_as_svd_and_rejected_when_it_is_not(diffusers_unets, tmp_path):
    _, folder = diffusers_unets("tiny")
    sgm = write_sgm_file(folder, tmp_path / "small.safetensors", oracle.SMALL_CONFIGS["tiny"])
    with pytest.raises(CheckpointMismatchError, match="wrong-shape"):
        load_unet(sgm)


def test_full_svd_names_follow_the_published_layout():
    """Names every SVD single file has (generative-models VideoUNet, svd.yaml), from the published layout."""
    cfg = UNetConfig()
    names = {diffusers_to_sgm(k, cfg) for k in expected_parameters(cfg)}
    for published in [
        "input_blocks.0.0.weight", "time_embed.0.weight", "time_embed.2.bias", "label_emb.0.0.weight",
        "label_emb.0.2.bias", "out.0.weight", "out.2.bias",
        "input_blocks.1.0.in_layers.2.weight", "input_blocks.1.0.time_stack.in_layers.2.weight",
        "input_blocks.1.0.time_mixer.mix_factor", "input_blocks.1.1.time_pos_embed.0.weight",
        "input_blocks.1.1.time_stack.0.ff_in.net.0.proj.weight", "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
        "input_blocks.3.0.op.weight", "input_blocks.4.0.skip_connection.weight", "input_blocks.6.0.op.bias",
        "input_blocks.9.0.op.weight", "input_blocks.11.0.out_layers.3.weight",
        "middle_block.0.time_stack.emb_layers.1.weight", "middle_block.1.time_stack.0.attn2.to_v.weight",
        "middle_block.1.time_mixer.mix_factor", "middle_block.2.time_mixer.mix_factor",
        "output_blocks.0.0.skip_connection.weight", "output_blocks.2.1.conv.weight",
        "output_blocks.3.1.proj_in.weight", "output_blocks.5.2.conv.weight", "output_blocks.8.2.conv.bias",
        "output_blocks.11.1.proj_out.weight", "output_blocks.11.1.time_stack.0.norm3.bias",
    ]:
        assert published in names, published
    assert len(names) == len(expected_parameters(cfg))  # the mapping is one-to-one
    assert not any(".op." in n for n in names if n.startswith("input_blocks.11")) and "input_blocks.12.0.op.weight" not in names
