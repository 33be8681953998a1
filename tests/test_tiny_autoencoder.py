"""The tiny autoencoder (models/tiny_autoencoder.py): per frame it equals diffusers' AutoencoderTiny (TAESD) on
a small random config loaded through convert/diffusers_tiny_autoencoder.py; its temporal mixing equals a
NumPy float64 reference of the formula and starts as the identity; folders round-trip; bad configs and
inputs are refused clearly."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import oracle
from mvd_jax.errors import UserError
from mvd_jax.models.tiny_autoencoder import TinyAutoencoder, TinyAutoencoderConfig

# TAESD's layout shrunk: 3 stages (factor 4), narrow, one block where TAESD has three
SMALL = dict(encoder_block_out_channels=(16, 16, 16), decoder_block_out_channels=(24, 24, 24),
             num_encoder_blocks=(1, 2, 1), num_decoder_blocks=(2, 1, 1), latent_channels=4)


def nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from diffusers import AutoencoderTiny

    from mvd_jax.convert.diffusers_tiny_autoencoder import load_tiny_autoencoder

    torch.manual_seed(0)
    torch_model = oracle.randomize_parameters(AutoencoderTiny(**SMALL).eval(), 1)
    folder = tmp_path_factory.mktemp("taesd")
    torch_model.save_pretrained(folder)
    return torch_model, load_tiny_autoencoder(folder), folder


def test_per_frame_model_equals_diffusers_autoencoder_tiny(pair):
    torch_model, model, _ = pair
    assert model.config.downsampling_factor == 4 and not model.config.temporal_mixing
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (3, 24, 40, 3)).astype(np.float32)  # batch 3, non-square
    latents = rng.standard_normal((5, 6, 10, 4)).astype(np.float32) * 2.0  # beyond the tanh clamp's knee
    with torch.no_grad():
        want_z = torch_model.encode(nchw(images)).latents.numpy()
        want_x = torch_model.decode(nchw(latents)).sample.numpy()
    z = np.asarray(jax.jit(model.encode_mode)(jnp.asarray(images))).transpose(0, 3, 1, 2)
    x = np.asarray(jax.jit(model.decode, static_argnums=1)(jnp.asarray(latents), 5)).transpose(0, 3, 1, 2)
    assert oracle.rel_l2(z, want_z) <= 1e-5
    assert oracle.rel_l2(x, want_x) <= 1e-5


def test_temporal_mixing_formula_and_identity_start(pair):
    _, per_frame, _ = pair
    cfg = dataclasses.replace(per_frame.config, temporal_mixing=True)
    model = TinyAutoencoder(cfg, rngs=nnx.Rngs(3))
    assert len(model.decoder.time_mixers) == 2  # after each stage but the full-resolution one
    rng = np.random.default_rng(1)
    z = jnp.asarray(rng.standard_normal((6, 6, 10, 4)), jnp.float32)  # 2 clips of 3 frames
    # zero-initialised: the decoder starts as the per-frame one (same weights elsewhere)
    from mvd_jax.models.tensors import module_to_tensors, module_from_tensors

    tensors = {k: v for k, v in module_to_tensors(model).items() if "time_mixers" not in k}
    plain = module_from_tensors(nnx.eval_shape(lambda: TinyAutoencoder(
        per_frame.config, rngs=nnx.Rngs(0))), tensors)
    np.testing.assert_array_equal(np.asarray(model.decode(z, 3)), np.asarray(plain.decode(z, 3)))

    mixer = model.decoder.time_mixers[0]
    kernel = rng.standard_normal(mixer.conv.kernel.shape).astype(np.float32) * 0.3
    bias = rng.standard_normal(mixer.conv.bias.shape).astype(np.float32)
    mixer.conv.kernel[...], mixer.conv.bias[...] = jnp.asarray(kernel), jnp.asarray(bias)
    x = rng.standard_normal((6, 5, 7, 24)).astype(np.float32)
    clips = x.reshape(2, 3, 5, 7, 24).astype(np.float64)
    padded = np.pad(clips, ((0, 0), (1, 1), (0, 0), (0, 0), (0, 0)))  # zeros beyond the clip's ends
    k = kernel[:, 0].astype(np.float64)  # (3 taps, in, out)
    want = clips + bias + sum(np.einsum("btyxc,cd->btyxd", padded[:, j:j + 3], k[j]) for j in range(3))
    got = np.asarray(mixer(jnp.asarray(x), 3)).reshape(want.shape)
    assert oracle.rel_l2(got, want) <= 1e-6


def test_folder_round_trip_and_refusals(pair, tmp_path):
    from mvd_jax.convert.diffusers_tiny_autoencoder import load_tiny_autoencoder, save_tiny_autoencoder
    from mvd_jax.convert.strict import read_json_object

    _, model, folder = pair
    mixed = TinyAutoencoder(dataclasses.replace(model.config, temporal_mixing=True),
                            rngs=nnx.Rngs(5))
    save_tiny_autoencoder(mixed, tmp_path / "m")
    back = load_tiny_autoencoder(tmp_path / "m")
    z = jnp.asarray(np.random.default_rng(2).standard_normal((4, 3, 5, 4)), jnp.float32)
    np.testing.assert_array_equal(np.asarray(back.decode(z, 2)), np.asarray(mixed.decode(z, 2)))
    assert read_json_object(tmp_path / "m" / "config.json")["temporal_mixing"] is True

    with pytest.raises(UserError, match="only 'nearest'"):
        TinyAutoencoderConfig.from_dict({**SMALL, "upsample_fn": "bilinear"})
    with pytest.raises(UserError, match="must all be equal"):
        TinyAutoencoderConfig(decoder_block_out_channels=(64, 32, 32, 32))
    with pytest.raises(UserError, match="unknown AutoencoderTiny config keys: wobble"):
        TinyAutoencoderConfig.from_dict({"wobble": 1})
    with pytest.raises(UserError, match="takes 4-channel latents, got 3"):
        model.decode(jnp.zeros((2, 3, 5, 3)), 2)
    with pytest.raises(UserError, match="not a multiple of the tiny autoencoder's factor 4"):
        model.encode_mode(jnp.zeros((1, 10, 12, 3)))
    config = json.loads((folder / "config.json").read_text())
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps({**config, "latent_channels": 8}))
    for f in folder.glob("*.safetensors"):
        (tmp_path / "bad" / f.name).write_bytes(f.read_bytes())
    with pytest.raises(UserError, match="does not match the tiny autoencoder config"):
        load_tiny_autoencoder(tmp_path / "bad")
