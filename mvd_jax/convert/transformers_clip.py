"""Checkpoint import/export for SVD's CLIP image encoder: transformers' `CLIPVisionModelWithProjection` ↔ NNX.

SVD pipelines keep the encoder in `image_encoder/` as a transformers folder (`config.json` +
`model.safetensors`). The NNX module (models/clip_vision.py) mirrors transformers' tree, so the
generic rules of models/tensors.py map every parameter:
  NNX path  vision_model/encoder/layers/0/self_attn/q_proj/kernel   (in, out)
  torch     vision_model.encoder.layers.0.self_attn.q_proj.weight   (out, in)
  NNX path  vision_model/embeddings/patch_embedding/kernel          (p, p, 3, D)
  torch     vision_model.embeddings.patch_embedding.weight          (D, 3, p, p)
Loading is strict. The one tolerated extra is `vision_model.embeddings.position_ids`: a non-persistent
buffer (arange(num_positions)) that older transformers versions wrote into checkpoints; it holds no
learned value, so it is dropped before the check. Anything else unexpected is an error.
"""
from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np

from mvd_jax import storage
from mvd_jax.convert.strict import (
    abstract_module,
    folder_weights,
    load_module,
    module_to_tensors,
    read_json_object,
    save_module,
)
from mvd_jax.models.clip_vision import TRANSFORMERS_CLASS, CLIPVisionConfig, CLIPVisionModelWithProjection

WEIGHTS_NAME = "model.safetensors"
# Buffers (not parameters) that transformers checkpoints may carry; see the module docstring.
KNOWN_BUFFERS = ("vision_model.embeddings.position_ids",)


def abstract_image_encoder(config: CLIPVisionConfig) -> CLIPVisionModelWithProjection:
    """The encoder with ShapeDtypeStruct leaves: shapes without memory."""
    return abstract_module(CLIPVisionModelWithProjection, config)


def _resolve_folder(folder: Path) -> Path:
    """The encoder folder itself, or `image_encoder/` inside an SVD pipeline folder."""
    if not (folder / "config.json").is_file() and (folder / "image_encoder" / "config.json").is_file():
        return folder / "image_encoder"
    return folder


def image_encoder_from_tensors(tensors: dict[str, np.ndarray], config: CLIPVisionConfig, *,
                               source: str = "<tensors>", dtype=jnp.float32) -> CLIPVisionModelWithProjection:
    """Builds the encoder from transformers-named, torch-layout tensors (strictly checked)."""
    tensors = {k: v for k, v in tensors.items() if k not in KNOWN_BUFFERS}
    return load_module(abstract_image_encoder(config), tensors, source=source,
                       what="the CLIP image encoder config", dtype=dtype)


def load_image_encoder(folder, *, dtype=jnp.float32) -> CLIPVisionModelWithProjection:
    """Loads a transformers `CLIPVisionModelWithProjection` folder (or an SVD pipeline folder's image_encoder/)."""
    folder = _resolve_folder(Path(storage.local_mirror(folder)))  # gs:// folders are mirrored locally
    config = CLIPVisionConfig.from_dict(read_json_object(folder / "config.json", expected_class=TRANSFORMERS_CLASS))
    return image_encoder_from_tensors(folder_weights(folder, WEIGHTS_NAME), config, source=str(folder), dtype=dtype)


def image_encoder_to_tensors(model: CLIPVisionModelWithProjection) -> dict[str, np.ndarray]:
    """transformers-named, torch-layout float32 NumPy arrays of every parameter."""
    return module_to_tensors(model)


def save_image_encoder(model: CLIPVisionModelWithProjection, folder) -> Path:
    """Writes `config.json` + `model.safetensors` that transformers' from_pretrained loads."""
    return save_module(model, folder, WEIGHTS_NAME, model.config.to_transformers_dict())
