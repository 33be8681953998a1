"""Round trip to diffusers format, and parameter counts."""
import json

import numpy as np
import torch
from diffusers import UNetSpatioTemporalConditionModel

import oracle
from mvd_jax.convert import load_unet, save_unet_diffusers
from mvd_jax.convert.diffusers_unet import abstract_unet, expected_parameters
from mvd_jax.models import UNetConfig
from flax import nnx
import jax


def test_save_unet_diffusers_round_trip_is_identical(diffusers_unets, tmp_path):
    torch_model, folder = diffusers_unets("svd_like")
    save_unet_diffusers(load_unet(folder), tmp_path / "unet")
    reloaded = UNetSpatioTemporalConditionModel.from_pretrained(tmp_path / "unet")
    original, back = torch_model.state_dict(), reloaded.state_dict()
    assert original.keys() == back.keys()
    for k in original:
        assert torch.equal(original[k], back[k]), k
    saved_config = json.loads((tmp_path / "unet" / "config.json").read_text())
    for k, v in oracle.SMALL_CONFIGS["svd_like"].items():
        assert saved_config[k] == (list(v) if isinstance(v, tuple) else v), k


def test_full_svd_parameter_count():
    state = nnx.state(abstract_unet(UNetConfig()), nnx.Param)
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state)) == 1_524_623_082
    temporal = ("temporal_res_block", "temporal_transformer_blocks", "time_pos_embed", "time_mixer")
    shapes = expected_parameters(UNetConfig())
    assert sum(int(np.prod(s)) for k, s in shapes.items() if any(p in k for p in temporal)) == 656_076_838
    assert sum(k.endswith("time_mixer.mix_factor") for k in shapes) == 38  # 22 res-blocks + 16 transformers


def test_small_config_parameters_match_diffusers_names_and_shapes(diffusers_unets):
    torch_model, _ = diffusers_unets("tiny")
    ours = expected_parameters(UNetConfig.from_dict(oracle.SMALL_CONFIGS["tiny"]))
    theirs = {k: tuple(v.shape) for k, v in torch_model.state_dict().items()}
    assert ours == theirs


def test_resolve_config_takes_each_form_and_refuses_the_wrong_class(tmp_path):
    """Both UNets' converters resolve a config the same way (convert/strict.resolve_config): the dataclass
    itself, a dict of diffusers' keys, a config.json path; a config.json of another class and any other
    type are refused with the class named."""
    import pytest

    from mvd_jax.convert import diffusers_unet, diffusers_unet2d
    from mvd_jax.errors import UserError
    from mvd_jax.models.unet2d_config import UNet2DConditionConfig

    svd = dict(oracle.SMALL_CONFIGS["tiny"])
    (tmp_path / "svd.json").write_text(json.dumps({"_class_name": "UNetSpatioTemporalConditionModel", **svd}))
    sd = {"block_out_channels": [32, 64], "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
          "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "cross_attention_dim": 32}
    (tmp_path / "sd.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel", **sd}))
    from_dict = diffusers_unet.resolve_config(svd)
    assert diffusers_unet.resolve_config(tmp_path / "svd.json") == from_dict == UNetConfig.from_dict(svd)
    assert diffusers_unet.resolve_config(from_dict) is from_dict
    sd_config = diffusers_unet2d.resolve_config(str(tmp_path / "sd.json"))
    assert isinstance(sd_config, UNet2DConditionConfig) and sd_config == diffusers_unet2d.resolve_config(sd)
    with pytest.raises(UserError, match="describes a UNet2DConditionModel, not a UNetSpatioTemporalConditionModel"):
        diffusers_unet.resolve_config(tmp_path / "sd.json")
    with pytest.raises(UserError, match="describes a UNetSpatioTemporalConditionModel, not a UNet2DConditionModel"):
        diffusers_unet2d.resolve_config(tmp_path / "svd.json")
    with pytest.raises(UserError, match="config must be a UNet2DConditionConfig, a dict or a path.*not int"):
        diffusers_unet2d.resolve_config(3)
