"""SVD's CLIP image encoder and its preprocessing vs transformers/diffusers (the PyTorch oracle).

Small random transformers `CLIPVisionModelWithProjection`s (every parameter randomised, so a mis-mapped
norm scale or bias cannot hide behind 1 or 0) are saved with save_pretrained and loaded with
`load_image_encoder`; outputs must match within 1e-5 relative L2 in float32. The preprocessing is
compared with diffusers' own functions, and the whole `_encode_image` chain with the pipeline's code.
"""
from __future__ import annotations

import json
import shutil
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import StableVideoDiffusionPipeline
from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import _resize_with_antialiasing
from diffusers.video_processor import VideoProcessor
from flax import nnx
from PIL import Image
from transformers import CLIPImageProcessor
from transformers import CLIPVisionConfig as TorchCLIPVisionConfig
from transformers import CLIPVisionModelWithProjection as TorchCLIPVisionModelWithProjection

from mvd_jax.convert.safetensors_io import read_safetensors, write_safetensors
from mvd_jax.convert.strict import CheckpointMismatchError, expected_from_module
from mvd_jax.convert.transformers_clip import (
    abstract_image_encoder,
    image_encoder_to_tensors,
    load_image_encoder,
    save_image_encoder,
)
from mvd_jax.errors import UserError
from mvd_jax.models.clip_vision import CLIPVisionConfig, preprocess_for_clip
from oracle import rel_l2

TOL = 1e-5
SMALL = dict(hidden_size=32, intermediate_size=64, projection_dim=16, num_hidden_layers=2, num_attention_heads=4)
CONFIGS = {
    "vit_gelu": dict(SMALL, image_size=224, patch_size=32, hidden_act="gelu"),
    # 72 = 4·16 + 8: the strided conv drops the 8-pixel remainder
    "odd_quick_gelu": dict(SMALL, image_size=72, patch_size=16, hidden_act="quick_gelu"),
    "tanh_gelu": dict(SMALL, num_attention_heads=2, image_size=48, patch_size=12, hidden_act="gelu_pytorch_tanh"),
}


def _random_torch_encoder(config: dict, seed: int) -> TorchCLIPVisionModelWithProjection:
    torch.manual_seed(seed)
    model = TorchCLIPVisionModelWithProjection(TorchCLIPVisionConfig(**config)).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / np.sqrt(p[0].numel()))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("class_embedding"):
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    """name → (torch model, folder written by save_pretrained), built lazily."""
    cache = {}

    def get(name):
        if name not in cache:
            model = _random_torch_encoder(CONFIGS[name], seed=len(cache))
            folder = tmp_path_factory.mktemp(f"clip_{name}")
            model.save_pretrained(folder)
            cache[name] = (model, folder)
        return cache[name]

    return get


@nnx.jit
def _jax_embeds(model, pixel_values):
    return model(pixel_values)


def _nchw(x) -> np.ndarray:
    return np.asarray(x).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_image_embeds_match_transformers(encoders, name):
    torch_model, folder = encoders(name)
    model = load_image_encoder(folder)
    s = CONFIGS[name]["image_size"]
    pixels = np.random.default_rng(0).standard_normal((2, s, s, 3)).astype(np.float32)
    with torch.no_grad():
        ref = torch_model(torch.from_numpy(_nchw(pixels))).image_embeds.numpy()
    out = np.asarray(_jax_embeds(model, jnp.asarray(pixels)))
    assert out.shape == ref.shape == (2, CONFIGS[name]["projection_dim"])
    err = rel_l2(out, ref)
    print(f"\n{name}: image_embeds rel L2 {err:.2e}")
    assert err <= TOL


def _diffusers_preprocess(x_minus1_1: torch.Tensor) -> np.ndarray:
    """The tensor steps of StableVideoDiffusionPipeline._encode_image after `image * 2.0 - 1.0`."""
    image = _resize_with_antialiasing(x_minus1_1, (224, 224))
    image = (image + 1.0) / 2.0
    return CLIPImageProcessor()(images=image, do_normalize=True, do_center_crop=False, do_resize=False,
                                do_rescale=False, return_tensors="pt").pixel_values.numpy()


@pytest.mark.parametrize("hw", [(30, 40), (97, 61), (300, 500), (576, 1024)])
def test_preprocess_matches_diffusers(hw):
    h, w = hw
    image = torch.from_numpy(np.random.default_rng(h * w).uniform(0, 1, (2, 3, h, w)).astype(np.float32))
    x = image * 2.0 - 1.0
    ref = _diffusers_preprocess(x)
    out = _nchw(jax.jit(preprocess_for_clip)(jnp.asarray(x.numpy().transpose(0, 2, 3, 1))))
    assert out.shape == ref.shape == (2, 3, 224, 224)
    err = rel_l2(out, ref)
    print(f"\npreprocess {h}x{w}: rel L2 {err:.2e}")
    assert err <= TOL


def test_encode_image_chain_matches_pipeline(encoders):
    """PIL images through the pipeline's own `_encode_image` vs preprocess_for_clip + our encoder."""
    torch_model, folder = encoders("vit_gelu")
    rng = np.random.default_rng(7)
    pils = [Image.fromarray(rng.integers(0, 256, (97, 150, 3), dtype=np.uint8)) for _ in range(2)]
    pipe = types.SimpleNamespace(image_encoder=torch_model, feature_extractor=CLIPImageProcessor(),
                                 video_processor=VideoProcessor(do_resize=True, vae_scale_factor=8))
    with torch.no_grad():
        ref = StableVideoDiffusionPipeline._encode_image(pipe, pils, "cpu", 1, False).numpy()[:, 0]

    images = np.stack([np.array(p).astype(np.float32) / 255.0 for p in pils]) * 2.0 - 1.0
    model = load_image_encoder(folder)
    out = np.asarray(_jax_embeds(model, preprocess_for_clip(jnp.asarray(images))))
    err = rel_l2(out, ref)
    print(f"\n_encode_image chain: rel L2 {err:.2e}")
    assert err <= TOL


# ---- strict loading ------------------------------------------------------------------------------
def _edited_copy(src, dst, edit):
    shutil.copy(src / "config.json", dst / "config.json")
    tensors = dict(read_safetensors(src / "model.safetensors"))
    edit(tensors)
    write_safetensors(dst / "model.safetensors", {k: np.asarray(v) for k, v in tensors.items()})
    return dst


@pytest.mark.parametrize("case", ["missing", "wrong_shape", "unexpected"])
def test_strict_loading_names_the_key(encoders, tmp_path, case):
    _, folder = encoders("vit_gelu")
    key = {"missing": "vision_model.encoder.layers.1.mlp.fc2.bias",
           "wrong_shape": "vision_model.embeddings.position_embedding.weight",
           "unexpected": "vision_model.encoder.layers.2.mlp.fc1.weight"}[case]

    def edit(t):
        if case == "missing":
            del t[key]
        elif case == "wrong_shape":
            t[key] = np.asarray(t[key])[:-1]
        else:
            t[key] = np.zeros((64, 32), np.float32)

    with pytest.raises(CheckpointMismatchError, match=key.replace(".", r"\.")):
        load_image_encoder(_edited_copy(folder, tmp_path, edit))


def test_position_ids_buffer_is_dropped(encoders, tmp_path):
    """Older transformers saved the non-persistent position_ids buffer; it must load (and be ignored)."""
    torch_model, folder = encoders("vit_gelu")
    n = torch_model.vision_model.embeddings.num_positions
    buf = lambda t: t.__setitem__("vision_model.embeddings.position_ids", np.arange(n, dtype=np.int64)[None])
    model = load_image_encoder(_edited_copy(folder, tmp_path, buf))
    assert "vision_model.embeddings.position_ids" not in image_encoder_to_tensors(model)


def test_config_errors(encoders, tmp_path):
    _, folder = encoders("vit_gelu")
    cfg = json.loads((folder / "config.json").read_text())
    shutil.copy(folder / "model.safetensors", tmp_path / "model.safetensors")

    for change, message in [({"architectures": ["CLIPTextModelWithProjection"]}, "CLIPTextModelWithProjection"),
                            ({"hidden_act": "swish"}, "hidden_act"),
                            ({"hidden_sise": 32}, "hidden_sise")]:
        (tmp_path / "config.json").write_text(json.dumps({**cfg, **change}))
        with pytest.raises(UserError, match=message):
            load_image_encoder(tmp_path)


def test_svd_defaults_and_config_dict():
    """SVD's default config, and its parameter names/shapes equal transformers' at full size (meta device)."""
    c = CLIPVisionConfig()
    assert (c.hidden_size, c.intermediate_size, c.projection_dim, c.num_hidden_layers, c.num_attention_heads,
            c.patch_size, c.image_size, c.hidden_act, c.layer_norm_eps) == (1280, 5120, 1024, 32, 16, 14, 224, "gelu", 1e-5)
    assert c.num_positions == 257
    assert CLIPVisionConfig.from_dict(TorchCLIPVisionConfig(**CONFIGS["vit_gelu"]).to_dict()) == \
        CLIPVisionConfig(**CONFIGS["vit_gelu"])

    with torch.device("meta"):
        svd = TorchCLIPVisionModelWithProjection(TorchCLIPVisionConfig(**{
            f: getattr(c, f) for f in ("hidden_size", "intermediate_size", "projection_dim", "num_hidden_layers",
                                       "num_attention_heads", "image_size", "patch_size", "hidden_act",
                                       "layer_norm_eps")}))
    ours = expected_from_module(abstract_image_encoder(c))
    assert ours == {k: tuple(v.shape) for k, v in svd.named_parameters()}
    assert sum(int(np.prod(s)) for s in ours.values()) == sum(p.numel() for p in svd.parameters())


# ---- export --------------------------------------------------------------------------------------
def test_save_roundtrip_through_transformers(encoders, tmp_path):
    torch_model, folder = encoders("odd_quick_gelu")
    model = load_image_encoder(folder)
    save_image_encoder(model, tmp_path / "image_encoder")  # the layout of an SVD pipeline folder
    reloaded = TorchCLIPVisionModelWithProjection.from_pretrained(tmp_path / "image_encoder").eval()
    assert reloaded.config.hidden_act == "quick_gelu" and reloaded.config.image_size == 72
    want, got = torch_model.state_dict(), reloaded.state_dict()
    assert sorted(want) == sorted(got)
    for k in want:
        assert torch.equal(want[k], got[k]), k
    saved = image_encoder_to_tensors(model)
    again = image_encoder_to_tensors(load_image_encoder(tmp_path))  # finds image_encoder/ in the pipeline folder
    assert sorted(again) == sorted(saved) and all(np.array_equal(again[k], saved[k]) for k in saved)
