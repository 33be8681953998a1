"""Checkpoint import/export for SD-1.5's CLIP text encoder: transformers' `CLIPTextModel` ↔ NNX.

Stable Diffusion / InstructPix2Pix pipelines keep the encoder in `text_encoder/` as a transformers folder
(`config.json` + `model.safetensors`). The NNX module (models/clip_text.py) mirrors the tree of those
checkpoints, so the generic rules of models/tensors.py map every parameter:
  NNX path  text_model/encoder/layers/0/self_attn/q_proj/kernel   (in, out)
  torch     text_model.encoder.layers.0.self_attn.q_proj.weight   (out, in)
  NNX path  text_model/embeddings/token_embedding/embedding      (vocab, D)
  torch     text_model.embeddings.token_embedding.weight         (vocab, D)
Two spellings of the same checkpoint are read:
- transformers ≤ 4 (every published SD checkpoint) names the tensors `text_model.…`;
- transformers ≥ 5 saves a `CLIPTextModel` without that prefix (`embeddings.…`, `encoder.…`,
  `final_layer_norm.…`); a checkpoint in which no name starts with `text_model.` gets the prefix added.
Loading is strict otherwise. The one tolerated extra is `embeddings.position_ids` (either spelling): a
non-persistent buffer (arange(max_position_embeddings)) that older transformers wrote into checkpoints.
Only safetensors are read: a folder with just `pytorch_model.bin` is refused with the conversion hint
(a pickle can run code when loaded; see convert/strict.py). Saving writes the `text_model.` names, which
both transformers generations load.
"""
from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np

from mvd_jax import storage
from mvd_jax.convert.strict import abstract_module, folder_weights, load_module, read_json_object, save_module
from mvd_jax.convert.transformers_clip import WEIGHTS_NAME
from mvd_jax.models.clip_text import TRANSFORMERS_CLASS, CLIPTextConfig, CLIPTextModel

PREFIX = "text_model."
# Buffers (not parameters) that transformers checkpoints may carry; see the module docstring.
KNOWN_BUFFERS = (PREFIX + "embeddings.position_ids", "embeddings.position_ids")


def abstract_text_encoder(config: CLIPTextConfig) -> CLIPTextModel:
    """The encoder with ShapeDtypeStruct leaves: shapes without memory."""
    return abstract_module(CLIPTextModel, config)


def text_encoder_folder(folder) -> Path:
    """The encoder folder itself, or `text_encoder/` inside an SD / InstructPix2Pix pipeline folder."""
    folder = Path(folder)
    if not (folder / "config.json").is_file() and (folder / "text_encoder" / "config.json").is_file():
        return folder / "text_encoder"
    return folder


def _checkpoint_names(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """transformers-5 names (no `text_model.` prefix) → the prefixed names; known buffers dropped."""
    tensors = {k: v for k, v in tensors.items() if k not in KNOWN_BUFFERS}
    if tensors and not any(k.startswith(PREFIX) for k in tensors):
        tensors = {PREFIX + k: v for k, v in tensors.items()}
    return tensors


def text_encoder_from_tensors(tensors: dict[str, np.ndarray], config: CLIPTextConfig, *,
                              source: str = "<tensors>", dtype=jnp.float32) -> CLIPTextModel:
    """Builds the encoder from transformers-named, torch-layout tensors (strictly checked)."""
    return load_module(abstract_text_encoder(config), _checkpoint_names(tensors), source=source,
                       what="the CLIP text encoder config", dtype=dtype)


def read_text_encoder_config(folder) -> CLIPTextConfig:
    folder = text_encoder_folder(folder)
    return CLIPTextConfig.from_dict(read_json_object(folder / "config.json", expected_class=TRANSFORMERS_CLASS))


def load_text_encoder(folder, *, dtype=jnp.float32) -> CLIPTextModel:
    """Loads a transformers `CLIPTextModel` folder (or an SD pipeline folder's text_encoder/); a gs://
    folder is mirrored to local disk first (mvd_jax/storage.py). `dtype`: of the parameters, and so of the
    computation."""
    folder = text_encoder_folder(storage.local_mirror(folder))
    config = read_text_encoder_config(folder)
    return text_encoder_from_tensors(folder_weights(folder, WEIGHTS_NAME), config, source=str(folder), dtype=dtype)


def save_text_encoder(model: CLIPTextModel, folder) -> Path:
    """Writes `config.json` + `model.safetensors` that transformers' from_pretrained loads."""
    return save_module(model, folder, WEIGHTS_NAME, model.config.to_transformers_dict())
