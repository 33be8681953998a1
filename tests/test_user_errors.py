"""Bad input gives one clear error line and a non-zero exit code, never a traceback."""
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import oracle
from mvd_jax.convert import CheckpointMismatchError, load_unet
from mvd_jax.convert.safetensors_io import read_safetensors, write_safetensors
from mvd_jax.errors import UserError


def run_cli(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("MVD_JAX_VERBOSE_ERRORS", None)
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=env)


def assert_one_line_error(proc, *fragments):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_convert_cli_loads_a_good_checkpoint(diffusers_unets, tmp_path):
    torch_model, folder = diffusers_unets("tiny")
    proc = run_cli("mvd_jax.convert", str(folder), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    n = sum(p.numel() for p in torch_model.parameters())
    assert f"{n:,} parameters" in proc.stdout
    assert (tmp_path / "out" / "diffusion_pytorch_model.safetensors").is_file()


def test_truncated_safetensors(diffusers_unets, tmp_path):
    _, folder = diffusers_unets("tiny")
    bad = tmp_path / "unet"
    shutil.copytree(folder, bad)
    weights = bad / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    assert_one_line_error(run_cli("mvd_jax.convert", str(bad)), "truncated", str(weights))

    weights.write_bytes(data[:5])
    assert_one_line_error(run_cli("mvd_jax.convert", str(bad)), "truncated")


def test_checkpoint_of_another_architecture(tmp_path):
    from diffusers import UNet2DConditionModel
    other = UNet2DConditionModel(block_out_channels=(32, 64), cross_attention_dim=32, layers_per_block=1,
                                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), sample_size=8)
    other.save_pretrained(tmp_path / "sd_unet")
    assert_one_line_error(run_cli("mvd_jax.convert", str(tmp_path / "sd_unet")), "UNet2DConditionModel")

    # The same weights presented with an SVD-family config: every parameter is named in the error.
    (tmp_path / "sd_unet" / "config.json").unlink()
    cfg = tmp_path / "config.json"
    import json
    cfg.write_text(json.dumps(oracle.SMALL_CONFIGS["tiny"]))
    weights = tmp_path / "sd_unet" / "diffusion_pytorch_model.safetensors"
    assert_one_line_error(run_cli("mvd_jax.convert", str(weights), "--config", str(cfg)),
                          "does not match the UNet config", "missing")


def test_mismatch_error_names_every_offending_parameter_with_both_shapes(diffusers_unets, tmp_path):
    _, folder = diffusers_unets("tiny")
    tensors = dict(read_safetensors(folder / "diffusion_pytorch_model.safetensors"))
    del tensors["conv_in.bias"]
    tensors["conv_out.weight"] = np.zeros((4, 32, 3, 5), np.float32)
    tensors["extra.weight"] = np.zeros((2,), np.float32)
    write_safetensors(tmp_path / "w.safetensors", tensors)
    with pytest.raises(CheckpointMismatchError) as e:
        load_unet(tmp_path / "w.safetensors", config=oracle.SMALL_CONFIGS["tiny"])
    msg = str(e.value)
    assert "1 missing, 1 unexpected, 1 wrong-shape" in msg.splitlines()[0]
    assert "missing conv_in.bias: expected shape [32]" in msg
    assert "unexpected extra.weight: shape [2]" in msg
    assert "wrong shape conv_out.weight: checkpoint [4, 32, 3, 5], model [4, 32, 3, 3]" in msg


def test_unknown_key_in_config_json(diffusers_unets, tmp_path):
    _, folder = diffusers_unets("tiny")
    bad = tmp_path / "unet"
    shutil.copytree(folder, bad)
    text = (bad / "config.json").read_text().replace('"in_channels"', '"in_channelz"')
    (bad / "config.json").write_text(text)
    assert_one_line_error(run_cli("mvd_jax.convert", str(bad)), "unknown UNet config key", "in_channelz")


@pytest.mark.parametrize("section", ["model", "top"])
def test_unknown_key_in_experiment_config(tmp_path, section):
    line = "c.model['layers_per_blok'] = 2" if section == "model" else "c.frame = 14"
    cfg = tmp_path / "cfg.py"
    cfg.write_text(textwrap.dedent(f"""
        import ml_collections
        from mvd_jax.models.unet_config import UNetConfig
        def get_config():
            c = ml_collections.ConfigDict()
            c.name, c.frames, c.height, c.width = "x", 2, 64, 64
            c.model = UNetConfig().to_dict()
            {line}
            return c
    """))
    key = "layers_per_blok" if section == "model" else "frame"
    assert_one_line_error(run_cli("mvd_jax.tables", "--configs", str(cfg)), "unknown", key)


@pytest.mark.parametrize("key, value", [("recon_weight", -0.5), ("adversarial_weight", -0.5), ("r1_gamma", -0.5),
                                        ("d_warmup_steps", -1)])
def test_negative_adversarial_weights_are_refused(key, value):
    import ml_collections

    from mvd_jax.models.unet_config import UNetConfig
    from mvd_jax.settings import resolve

    c = ml_collections.ConfigDict()
    c.name, c.frames, c.height, c.width = "x", 2, 64, 64
    c.model = UNetConfig().to_dict()
    c.adversarial = {key: value}
    with pytest.raises(UserError, match=f"adversarial.{key} must be ≥ 0"):
        resolve(c)


def test_pickle_checkpoints_are_refused(tmp_path):
    (tmp_path / "unet.bin").write_bytes(b"\x80\x04K\x01.")
    assert_one_line_error(run_cli("mvd_jax.convert", str(tmp_path / "unet.bin")), "only .safetensors")
    with pytest.raises(UserError, match="only .safetensors"):
        load_unet(tmp_path / "unet.bin")


def test_missing_path():
    assert_one_line_error(run_cli("mvd_jax.convert", "/nonexistent/unet"), "not found")
