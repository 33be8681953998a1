"""MoViE's base-model components (InstructPix2Pix on SD-1.5) vs their PyTorch twins:

- the CLIP text encoder (models/clip_text.py, convert/transformers_clip_text.py) vs transformers' CLIPTextModel,
- the CLIP BPE tokenizer (data/clip_tokenizer.py) vs transformers' CLIPTokenizer on the same vocab/merges files,
- SD's image VAE (models/sd_vae.py, convert/diffusers_sd_vae.py) vs diffusers' AutoencoderKL.

Tiny random models (every parameter random, so a mis-mapped norm scale or bias cannot hide behind 1 or 0)
are saved with save_pretrained into a pipeline-shaped folder (text_encoder/, tokenizer/, vae/) and loaded
through our folder loaders; outputs must match within 1e-5 relative L2 in float32. Sizes are tiny and every
fixture is module-scoped: the whole file is meant to take seconds.
"""
from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL as TorchAutoencoderKL
from flax import nnx
from transformers import CLIPTextConfig as TorchCLIPTextConfig
from transformers import CLIPTextModel as TorchCLIPTextModel
from transformers import CLIPTokenizer as TorchCLIPTokenizer

from mvd_jax.convert.diffusers_sd_vae import load_sd_vae, save_sd_vae
from mvd_jax.convert.safetensors_io import read_safetensors, write_safetensors
from mvd_jax.convert.strict import CheckpointMismatchError, module_to_tensors
from mvd_jax.convert.transformers_clip_text import load_text_encoder, save_text_encoder
from mvd_jax.data.clip_tokenizer import CLIPTokenizer
from mvd_jax.errors import UserError
from mvd_jax.models.clip_text import CLIPTextConfig
from mvd_jax.models.sd_vae import SDVAEConfig
from movie_oracle import write_tokenizer
from oracle import randomize_parameters, rel_l2

TOL = 1e-5

PROMPTS = [
    "Turn the sky into a starry night",
    "make it SNOW!!!  add   fireworks...",
    "  a photo of 2 cats, 3 dogs & 1234 mice;  it's the cat's mat  ",
    "What's THAT?\tReplace the cat\nwith a dog\u00a0please",
    "caf\u00e9 na\u00efve \u6771\u4eac \u2460 emoji \U0001F600 ''s <|endoftext|> x",
    "a photo of the cat " * 20,  # longer than 77 tokens: truncated to bos + 75 + eos
    "",
]


@pytest.fixture(scope="module")
def pipeline_folder(tmp_path_factory):
    """A pipeline-shaped folder with tokenizer/ (SD-1.5 style files) and, from the fixtures below,
    text_encoder/ and vae/."""
    root = tmp_path_factory.mktemp("ip2p")
    _, vocab = write_tokenizer(root / "tokenizer")
    return root, vocab


# ---- tokenizer -----------------------------------------------------------------------------------
def _torch_ids(folder, prompts, **kw):
    return np.asarray(TorchCLIPTokenizer.from_pretrained(folder)(prompts, padding="max_length", truncation=True,
                                                                 return_tensors="np", **kw).input_ids)


def test_tokenizer_matches_transformers(pipeline_folder):
    root, vocab = pipeline_folder
    ours = CLIPTokenizer.from_folder(root)  # finds tokenizer/ in the pipeline folder
    ref = TorchCLIPTokenizer.from_pretrained(root / "tokenizer")
    assert ours.model_max_length == 77 and ours.pad_token_id == ours.eos_token_id == vocab["<|endoftext|>"]
    got = ours(PROMPTS)
    want = ref(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="np")
    assert got.input_ids.shape == (len(PROMPTS), 77) and got.input_ids.dtype == np.int32
    for p, g, w in zip(PROMPTS, got.input_ids, want.input_ids):
        assert g.tolist() == w.tolist(), (p, ours.tokenize(p), ref.tokenize(p))
    np.testing.assert_array_equal(got.attention_mask, want.attention_mask)
    for p in PROMPTS[:5]:
        assert ours.tokenize(p) == ref.tokenize(p)
    assert max(len(t) for t in ours.tokenize(PROMPTS[0])) > 6, "merges several levels deep were applied"
    assert got.attention_mask[5].all() and got.input_ids[5, -1] == ours.eos_token_id  # truncated to 77


def test_tokenizer_variants_match_transformers(tmp_path):
    # SD 2's pad token "!", which is also a plain symbol of the vocabulary
    folder, _ = write_tokenizer(tmp_path / "pad_bang", pad_token="!")
    ours = CLIPTokenizer.from_folder(folder)
    assert ours.pad_token_id == 0
    np.testing.assert_array_equal(ours(PROMPTS).input_ids, _torch_ids(folder, PROMPTS, max_length=77))
    # no config files (CLIP's default special tokens) and a vocabulary without "z": z becomes the unknown token
    folder, _ = write_tokenizer(tmp_path / "bare", drop_symbols=("z",), configs=False)
    ours = CLIPTokenizer.from_folder(folder)
    prompts = ["a pizza at the zoo", "Zzz, fizz!"] + PROMPTS[:3]
    np.testing.assert_array_equal(ours(prompts, max_length=24).input_ids, _torch_ids(folder, prompts, max_length=24))
    assert ours.unk_token_id in ours.encode("zoo")
    # a folder saved by transformers 5: tokenizer.json (+ tokenizer_config.json), no vocab.json / merges.txt
    TorchCLIPTokenizer.from_pretrained(folder).save_pretrained(tmp_path / "saved")
    assert not (tmp_path / "saved" / "vocab.json").exists()
    ours = CLIPTokenizer.from_folder(tmp_path / "saved")
    np.testing.assert_array_equal(ours(prompts, max_length=24).input_ids, _torch_ids(folder, prompts, max_length=24))


def test_tokenizer_missing_files(tmp_path, pipeline_folder):
    root, _ = pipeline_folder
    with pytest.raises(UserError, match="vocab.json"):
        CLIPTokenizer.from_folder(tmp_path)
    shutil.copy(root / "tokenizer" / "vocab.json", tmp_path / "vocab.json")
    with pytest.raises(UserError, match="merges.txt"):
        CLIPTokenizer.from_folder(tmp_path)
    (tmp_path / "merges.txt").write_text("#version: 0.2\nq qq\n")
    with pytest.raises(UserError, match="not in the vocabulary"):
        CLIPTokenizer.from_folder(tmp_path)


# ---- text encoder --------------------------------------------------------------------------------
TEXT_SMALL = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                  max_position_embeddings=77, projection_dim=16)


def _torch_text_encoder(config: dict, seed: int) -> TorchCLIPTextModel:
    torch.manual_seed(seed)
    model = TorchCLIPTextModel(TorchCLIPTextConfig(**config)).eval()
    return randomize_parameters(model, seed + 1)


@pytest.fixture(scope="module")
def text_encoders(pipeline_folder, tmp_path_factory):
    """SD-1.5 style (legacy eos_token_id 2, quick_gelu, vocab = the tokenizer's) saved into the pipeline
    folder's text_encoder/, and a modern one (pooling at the first eos_token_id, exact gelu)."""
    root, vocab = pipeline_folder
    sd = _torch_text_encoder(dict(TEXT_SMALL, vocab_size=len(vocab), hidden_act="quick_gelu", bos_token_id=0,
                                  eos_token_id=2, pad_token_id=1), seed=0)
    sd.save_pretrained(root / "text_encoder")
    modern = _torch_text_encoder(dict(TEXT_SMALL, vocab_size=97, max_position_embeddings=20, hidden_act="gelu",
                                      bos_token_id=95, eos_token_id=7, pad_token_id=96), seed=3)
    folder = tmp_path_factory.mktemp("modern_text_encoder")
    modern.save_pretrained(folder)
    return {"sd": (sd, root), "modern": (modern, folder)}


def _torch_text(model, ids, mask=None):
    with torch.no_grad():
        out = model(torch.from_numpy(np.asarray(ids, np.int64)),
                    attention_mask=None if mask is None else torch.from_numpy(np.asarray(mask, np.int64)))
    return out.last_hidden_state.numpy(), out.pooler_output.numpy()


@nnx.jit
def _jax_text(model, ids, mask):
    return model(ids, mask)


def _check_text(model, torch_model, ids, mask=None, what=""):
    got = _jax_text(model, jnp.asarray(ids), None if mask is None else jnp.asarray(mask))
    want = _torch_text(torch_model, ids, mask)
    errs = [rel_l2(np.asarray(g), w) for g, w in zip(got, want)]
    print(f"\ntext encoder {what}: last_hidden_state rel L2 {errs[0]:.2e}, pooled {errs[1]:.2e}")
    assert got.last_hidden_state.shape == want[0].shape and got.pooler_output.shape == want[1].shape
    assert max(errs) <= TOL
    return got


def test_text_encoder_sd_chain_matches_transformers(text_encoders):
    """Prompts → our tokenizer → our encoder (both from the pipeline folder) vs transformers' pair; legacy
    pooling (argmax of the ids: the first <|endoftext|>), 77 tokens and a shorter sequence."""
    torch_model, root = text_encoders["sd"]
    model = load_text_encoder(root)  # finds text_encoder/ in the pipeline folder
    assert model.config.eos_token_id == 2 and model.config.hidden_act == "quick_gelu"
    ids = CLIPTokenizer.from_folder(root)(PROMPTS[:4]).input_ids
    np.testing.assert_array_equal(ids, _torch_ids(root / "tokenizer", PROMPTS[:4], max_length=77))
    _check_text(model, torch_model, ids, what="SD chain 4x77")


def test_text_encoder_modern_eos_and_padding_mask(text_encoders):
    """Pooling at the first eos_token_id (not the argmax), exact gelu, 11 tokens, and transformers' padding
    mask combined with the causal one (an all-ones mask first, so both calls share one compiled program)."""
    torch_model, folder = text_encoders["modern"]
    model = load_text_encoder(folder)
    rng = np.random.default_rng(2)
    ids = rng.integers(8, 95, (3, 11))
    ids[0, 4], ids[1, 9], ids[2, 0] = 7, 7, 7  # eos at different places; id 96 (pad) > 7, so argmax would differ
    ids[0, 5:] = 96
    ids[1, 3] = 7  # a second eos earlier: the first one is pooled
    mask = np.ones_like(ids)
    got = _check_text(model, torch_model, ids, mask, what="modern eos 3x11")
    np.testing.assert_allclose(np.asarray(got.pooler_output[1]), np.asarray(got.last_hidden_state[1, 3]))
    mask[0, 5:], mask[1, 8:] = 0, 0  # right padding
    _check_text(model, torch_model, ids, mask, what="padding mask 3x11")
    with pytest.raises(UserError, match="at most 20"):
        model(jnp.zeros((1, 21), jnp.int32))


def _edited_copy(src, dst, edit_tensors=None, edit_config=None):
    dst.mkdir(parents=True, exist_ok=True)
    name = "model.safetensors" if (src / "model.safetensors").is_file() else "diffusion_pytorch_model.safetensors"
    cfg = json.loads((src / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps(edit_config(cfg) if edit_config else cfg))
    tensors = dict(read_safetensors(src / name))
    if edit_tensors:
        edit_tensors(tensors)
    write_safetensors(dst / name, tensors)
    return dst


def test_text_encoder_checkpoint_spellings_and_errors(text_encoders, tmp_path):
    torch_model, folder = text_encoders["modern"]
    reference = module_to_tensors(load_text_encoder(folder))
    # transformers-4 spelling (SD's files): text_model.* names and the position_ids buffer
    def v4(t):
        for k in list(t):
            t["text_model." + k] = t.pop(k)
        t["text_model.embeddings.position_ids"] = np.arange(20, dtype=np.int64)[None]

    old = module_to_tensors(load_text_encoder(_edited_copy(folder, tmp_path / "v4", v4)))
    assert sorted(old) == sorted(reference) and all(np.array_equal(old[k], reference[k]) for k in old)
    # strict: a missing and an unexpected tensor are named
    missing = "encoder.layers.1.mlp.fc2.bias"
    with pytest.raises(CheckpointMismatchError, match=r"missing text_model\.encoder\.layers\.1\.mlp\.fc2\.bias"):
        load_text_encoder(_edited_copy(folder, tmp_path / "missing", lambda t: t.pop(missing)))
    with pytest.raises(CheckpointMismatchError, match=r"unexpected text_model\.text_projection\.weight"):
        load_text_encoder(_edited_copy(folder, tmp_path / "extra", lambda t: t.__setitem__(
            "text_projection.weight", np.zeros((16, 32), np.float32))))
    # config errors
    with pytest.raises(UserError, match="hidden_sise"):
        load_text_encoder(_edited_copy(folder, tmp_path / "key", edit_config=lambda c: {**c, "hidden_sise": 3}))
    with pytest.raises(UserError, match="CLIPVisionModel"):
        load_text_encoder(_edited_copy(folder, tmp_path / "arch", edit_config=lambda c: {
            **c, "architectures": ["CLIPVisionModel"]}))
    # missing files: no config, and a pickle-only folder
    with pytest.raises(UserError, match="config file not found"):
        load_text_encoder(tmp_path / "nowhere")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(folder / "config.json", pickled / "config.json")
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x02")
    with pytest.raises(UserError, match="pytorch_model.bin: only .safetensors"):
        load_text_encoder(pickled)


def test_text_encoder_save_roundtrip_and_sd_defaults(text_encoders, tmp_path):
    torch_model, folder = text_encoders["modern"]
    save_text_encoder(load_text_encoder(folder), tmp_path / "text_encoder")
    back = TorchCLIPTextModel.from_pretrained(tmp_path / "text_encoder").eval()
    want, got = torch_model.state_dict(), back.state_dict()
    assert sorted(want) == sorted(got) and all(torch.equal(want[k], got[k]) for k in want)
    assert back.config.eos_token_id == 7 and back.config.hidden_act == "gelu"
    c = CLIPTextConfig()  # SD-1.5's text_encoder/config.json
    assert (c.vocab_size, c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.max_position_embeddings,
            c.hidden_act, c.eos_token_id) == (49408, 768, 12, 12, 77, "quick_gelu", 2)


# ---- SD VAE --------------------------------------------------------------------------------------
VAE_SMALL = dict(block_out_channels=(32, 64), layers_per_block=1, latent_channels=4, norm_num_groups=32,
                 down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)


@pytest.fixture(scope="module")
def sd_vae(pipeline_folder):
    root, _ = pipeline_folder
    torch.manual_seed(5)
    torch_vae = randomize_parameters(TorchAutoencoderKL(**VAE_SMALL).eval(), 6)
    torch_vae.save_pretrained(root / "vae")
    return torch_vae, load_sd_vae(root), root  # finds vae/ in the pipeline folder


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def test_sd_vae_encoder_matches_diffusers(sd_vae):
    torch_vae, vae, _ = sd_vae
    images = np.random.default_rng(0).uniform(-1, 1, (2, 22, 34, 3)).astype(np.float32)  # non-square, odd half
    with torch.no_grad():
        dist = torch_vae.encode(_nchw(images)).latent_dist
    mean, logvar = jax.jit(vae.encode_moments)(jnp.asarray(images))
    errs = [rel_l2(np.asarray(mean).transpose(0, 3, 1, 2), dist.mean.numpy()),
            rel_l2(np.asarray(logvar).transpose(0, 3, 1, 2), dist.logvar.numpy())]
    print(f"\nSD VAE encoder: mean rel L2 {errs[0]:.2e}, logvar {errs[1]:.2e}")
    assert mean.shape == (2, 11, 17, 4) and max(errs) <= TOL


def test_sd_vae_decoder_matches_diffusers(sd_vae):
    torch_vae, vae, _ = sd_vae
    z = np.random.default_rng(1).standard_normal((3, 9, 13, 4)).astype(np.float32)  # odd latent sizes
    with torch.no_grad():
        want = torch_vae.decode(_nchw(z)).sample.numpy()
    got = np.asarray(jax.jit(vae.decode)(jnp.asarray(z))).transpose(0, 3, 1, 2)
    err = rel_l2(got, want)
    print(f"\nSD VAE decoder: rel L2 {err:.2e}")
    assert got.shape == want.shape == (3, 3, 18, 26) and err <= TOL


def test_sd_vae_strict_loading_and_config(sd_vae, tmp_path):
    torch_vae, vae, root = sd_vae
    folder = root / "vae"
    key = "decoder.up_blocks.1.resnets.1.conv2.bias"
    with pytest.raises(CheckpointMismatchError, match=r"missing decoder\.up_blocks\.1\.resnets\.1\.conv2\.bias"):
        load_sd_vae(_edited_copy(folder, tmp_path / "missing", lambda t: t.pop(key)))
    with pytest.raises(UserError, match="norm_num_groups"):
        load_sd_vae(_edited_copy(folder, tmp_path / "groups", edit_config=lambda c: {**c, "norm_num_groups": 16}))
    with pytest.raises(UserError, match="use_post_quant_conv"):
        load_sd_vae(_edited_copy(folder, tmp_path / "pqc", edit_config=lambda c: {**c, "use_post_quant_conv": False}))
    with pytest.raises(UserError, match="unknown AutoencoderKL config keys: latent_channel"):
        load_sd_vae(_edited_copy(folder, tmp_path / "key", edit_config=lambda c: {**c, "latent_channel": 4}))
    with pytest.raises(UserError, match="AutoencoderKLTemporalDecoder, not a AutoencoderKL"):
        load_sd_vae(_edited_copy(folder, tmp_path / "cls", edit_config=lambda c: {
            **c, "_class_name": "AutoencoderKLTemporalDecoder"}))
    # the save round trip through diffusers, and SD-1.5's defaults
    save_sd_vae(vae, tmp_path / "saved")
    back = TorchAutoencoderKL.from_pretrained(tmp_path / "saved").eval()
    want, got = torch_vae.state_dict(), back.state_dict()
    assert sorted(want) == sorted(got) and all(torch.equal(want[k], got[k]) for k in want)
    assert back.config.scaling_factor == 0.18215 and vae.config == SDVAEConfig(**VAE_SMALL, sample_size=32)
    c = SDVAEConfig()
    assert (c.block_out_channels, c.layers_per_block, c.latent_channels, c.scaling_factor, c.downsampling_factor) == \
        ((128, 256, 512, 512), 2, 4, 0.18215, 8)
