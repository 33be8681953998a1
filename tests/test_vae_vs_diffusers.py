"""SVD's temporal VAE (models/vae.py) equals diffusers' AutoencoderKLTemporalDecoder on small random
configs loaded through convert/diffusers_vae.py: encoder moments, mode, decoder (with and without
chunking), plus strict loading and the save round trip."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import oracle

CONFIGS = {
    # SVD's structure shrunk: 4 levels, 2 layers per block (mid attention used).
    "svd_like": dict(block_out_channels=(32, 32, 64, 64), layers_per_block=2, latent_channels=4,
                     down_block_types=("DownEncoderBlock2D",) * 4),
    # 2 levels, 1 layer per block: the mid block's attention is built but skipped, as in diffusers.
    "one_layer": dict(block_out_channels=(32, 64), layers_per_block=1, latent_channels=3,
                      down_block_types=("DownEncoderBlock2D",) * 2, scaling_factor=0.5),
}


def random_vae(config: dict, seed: int):
    from diffusers import AutoencoderKLTemporalDecoder

    torch.manual_seed(seed)
    # every parameter random: a mis-mapped one cannot hide behind a 0, 1 or 0.5
    return oracle.randomize_parameters(AutoencoderKLTemporalDecoder(**config).eval(), seed + 1)


@pytest.fixture(scope="module", params=list(CONFIGS))
def vae_pair(request, tmp_path_factory):
    from mvd_jax.convert.diffusers_vae import load_vae

    torch_vae = random_vae(CONFIGS[request.param], seed=len(request.param))
    folder = tmp_path_factory.mktemp(f"vae_{request.param}")
    torch_vae.save_pretrained(folder)
    return torch_vae, load_vae(folder), folder


def nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def test_encoder_equals_diffusers(vae_pair):
    torch_vae, vae, _ = vae_pair
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (3, 40, 24, 3)).astype(np.float32)  # batch 3, non-square
    with torch.no_grad():
        dist = torch_vae.encode(nchw(images)).latent_dist
    mean, logvar = jax.jit(vae.encode_moments)(jnp.asarray(images))
    assert oracle.rel_l2(np.asarray(mean).transpose(0, 3, 1, 2), dist.mean.numpy()) <= 1e-5
    assert oracle.rel_l2(np.asarray(logvar).transpose(0, 3, 1, 2), dist.logvar.numpy()) <= 1e-5
    mode = np.asarray(vae.encode_mode(jnp.asarray(images))).transpose(0, 3, 1, 2)
    assert oracle.rel_l2(mode, dist.mode().numpy()) <= 1e-5


@pytest.mark.parametrize("clips,frames", [(1, 5), (2, 3)])
def test_decoder_equals_diffusers(vae_pair, clips, frames):
    torch_vae, vae, _ = vae_pair
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    rng = np.random.default_rng(clips * 10 + frames)
    z = rng.standard_normal((clips * frames, 24 // f, 40 // f, vae.config.latent_channels)).astype(np.float32)
    with torch.no_grad():
        expected = torch_vae.decode(nchw(z), num_frames=frames).sample.numpy()
    got = np.asarray(jax.jit(vae.decode, static_argnums=1)(jnp.asarray(z), frames)).transpose(0, 3, 1, 2)
    assert got.shape == expected.shape
    assert oracle.rel_l2(got, expected) <= 1e-5


def test_decode_chunked_equals_pipeline_decoding(vae_pair):
    """The pipeline's decode_latents: chunks of 2 of 5 frames, each its own clip, scaled latents."""
    from diffusers import StableVideoDiffusionPipeline

    from mvd_jax.models.vae import decode_chunked

    torch_vae, vae, _ = vae_pair
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    rng = np.random.default_rng(7)
    latents = rng.standard_normal((1, 5, vae.config.latent_channels, 16 // f, 24 // f)).astype(np.float32)
    fake_pipe = type("P", (), {"vae": torch_vae})()
    with torch.no_grad():
        expected = StableVideoDiffusionPipeline.decode_latents(fake_pipe, torch.from_numpy(latents), 5, 2).numpy()
    z = jnp.asarray(latents[0].transpose(0, 2, 3, 1)) / vae.config.scaling_factor
    got = decode_chunked(jax.jit(vae.decode, static_argnums=1), z, 2)  # (T, H, W, 3)
    got = np.asarray(got).transpose(3, 0, 1, 2)[None]  # diffusers returns (B, C, T, H, W)
    assert oracle.rel_l2(got, expected) <= 1e-5
    # chunking changes the result (the temporal layers see fewer frames) — the test can tell them apart
    whole = np.asarray(decode_chunked(vae.decode, z, None)).transpose(3, 0, 1, 2)[None]
    assert oracle.rel_l2(whole, expected) > 1e-3


def test_strict_loading_names_every_mismatch(vae_pair, tmp_path):
    from mvd_jax.convert import CheckpointMismatchError
    from mvd_jax.convert.diffusers_vae import read_vae_config, vae_from_tensors
    from mvd_jax.convert.safetensors_io import read_safetensors

    _, _, folder = vae_pair
    tensors = read_safetensors(folder / "diffusion_pytorch_model.safetensors")
    config = read_vae_config(folder)
    broken = dict(tensors)
    del broken["decoder.time_conv_out.weight"]
    broken["decoder.conv_in.bias"] = np.zeros(3, np.float32)
    broken["encoder.extra.weight"] = np.zeros(2, np.float32)
    with pytest.raises(CheckpointMismatchError) as e:
        vae_from_tensors(broken, config, source="x")
    msg = str(e.value)
    assert "missing decoder.time_conv_out.weight" in msg
    assert "wrong shape decoder.conv_in.bias" in msg
    assert "unexpected encoder.extra.weight" in msg


def test_config_errors(tmp_path):
    from mvd_jax.convert.diffusers_vae import load_vae
    from mvd_jax.errors import UserError

    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(UserError, match="not a AutoencoderKLTemporalDecoder"):
        load_vae(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLTemporalDecoder", "wobble": 1}))
    with pytest.raises(UserError, match="wobble"):
        load_vae(tmp_path)
    with pytest.raises(UserError, match="not found"):
        load_vae(tmp_path / "nope")


def test_save_round_trip(vae_pair, tmp_path):
    from diffusers import AutoencoderKLTemporalDecoder

    from mvd_jax.convert.diffusers_vae import save_vae_diffusers

    torch_vae, vae, _ = vae_pair
    save_vae_diffusers(vae, tmp_path / "vae")
    back = AutoencoderKLTemporalDecoder.from_pretrained(tmp_path / "vae").eval()
    assert list(back.config.block_out_channels) == list(torch_vae.config.block_out_channels)
    theirs = dict(torch_vae.state_dict())
    for name, value in back.state_dict().items():
        assert torch.equal(value, theirs[name]), name
