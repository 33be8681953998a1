"""The CLIP text encoder that conditions Stable Diffusion 1.5 (and InstructPix2Pix, MoViE's base), in Flax NNX.

SD-1.5 keeps OpenAI's CLIP ViT-L/14 text tower in `text_encoder/` as transformers' `CLIPTextModel`; its
`last_hidden_state` (B, 77, 768) is the UNet's cross-attention context. This module is that model,
numerically equal to transformers 5.23:

    input_ids (B, L) → token_embedding + position_embedding[:L]
      → N × pre-LN transformer layers with CAUSAL self-attention (token i sees tokens ≤ i)
      → final_layer_norm → last_hidden_state (B, L, D)
    pooled output: last_hidden_state at the end-of-text token (B, D)

The encoder layers are the image encoder's (models/clip_vision.py: CLIPEncoder, CLIPAttention, CLIPMLP),
given a boolean attention mask. The module tree is the one SD checkpoints store
(`text_model.embeddings.token_embedding`, `text_model.encoder.layers[i].self_attn.q_proj`,
`text_model.final_layer_norm`, …); transformers ≥ 5 saves the same names without the `text_model.`
prefix, and convert/transformers_clip_text.py reads both.

The pooled position follows transformers' rule for the config: with the legacy `eos_token_id == 2` (SD-1.5's
config, written before transformers PR #24773) it is the argmax of input_ids (the end-of-text token has the
largest id of CLIP's vocabulary); otherwise the first position holding `eos_token_id` (0 if none does).
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax.numpy as jnp
from flax import nnx

from mvd_jax.errors import UserError
from mvd_jax.models.clip_vision import _IGNORED_KEYS as _VISION_IGNORED_KEYS
from mvd_jax.models.clip_vision import ACTIVATIONS, CLIPEncoder, Embedding
from mvd_jax.models.layers import LayerNorm

TRANSFORMERS_CLASS = "CLIPTextModel"
MODEL_TYPE = "clip_text_model"
LEGACY_EOS_TOKEN_ID = 2  # transformers: pool at argmax(input_ids) when the config says eos_token_id == 2

# Keys of a text config.json that do not change the inference function: the vision list (bookkeeping,
# dropout and init settings, generic PretrainedConfig fields) minus the token ids, which are fields here
# (eos_token_id decides the pooled position).
_IGNORED_KEYS = _VISION_IGNORED_KEYS - {"bos_token_id", "eos_token_id", "pad_token_id"}


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
    """Architecture of the text encoder. Defaults are SD-1.5's `text_encoder/config.json` (CLIP ViT-L/14)."""

    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    projection_dim: int = 768  # unused by CLIPTextModel (no projection); kept so the config round-trips
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 77
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"
    pad_token_id: int | None = 1
    bos_token_id: int | None = 0
    eos_token_id: int | None = 2

    def __post_init__(self):
        ints = ("vocab_size", "hidden_size", "intermediate_size", "projection_dim", "num_hidden_layers",
                "num_attention_heads", "max_position_embeddings")
        for name in ints:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserError(f"CLIP text config: {name} must be a positive integer, got {v!r}")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                raise UserError(f"CLIP text config: {name} must be an integer or null, got {v!r}")
        if self.eos_token_id is None:
            raise UserError("CLIP text config: eos_token_id is null; the pooled output needs the end-of-text id")
        if self.hidden_act not in ACTIVATIONS:
            raise UserError(f"CLIP text config: unsupported hidden_act {self.hidden_act!r}; "
                            f"supported: {sorted(ACTIVATIONS)}")
        if self.hidden_size % self.num_attention_heads:
            raise UserError(f"CLIP text config: hidden_size {self.hidden_size} is not a multiple of "
                            f"num_attention_heads {self.num_attention_heads}")
        if not isinstance(self.layer_norm_eps, (int, float)) or isinstance(self.layer_norm_eps, bool) \
                or self.layer_norm_eps <= 0:
            raise UserError(f"CLIP text config: layer_norm_eps must be a positive number, got {self.layer_norm_eps!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CLIPTextConfig":
        """From a transformers `CLIPTextModel` config.json (see `_IGNORED_KEYS`)."""
        model_type = d.get("model_type", MODEL_TYPE)
        if model_type != MODEL_TYPE:
            raise UserError(f"CLIP text config: model_type is {model_type!r}, expected {MODEL_TYPE!r}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in d if k not in fields and k not in _IGNORED_KEYS and not k.startswith("_"))
        if unknown:
            raise UserError(f"unknown CLIP text config key(s) {unknown}; known keys: {sorted(fields)}")
        return cls(**{k: v for k, v in d.items() if k in fields})

    def to_transformers_dict(self) -> dict[str, Any]:
        """A config.json that transformers' `CLIPTextModel.from_pretrained` reads."""
        return {"architectures": [TRANSFORMERS_CLASS], "model_type": MODEL_TYPE, **dataclasses.asdict(self)}


class CLIPTextOutput(NamedTuple):
    last_hidden_state: Any  # (B, L, D), after final_layer_norm: SD's cross-attention context
    pooler_output: Any  # (B, D): last_hidden_state at the end-of-text position


class CLIPTextEmbeddings(nnx.Module):
    """Token embedding plus learned absolute position embedding of positions 0 … L−1."""

    def __init__(self, config: CLIPTextConfig, *, rngs: nnx.Rngs):
        self.token_embedding = Embedding(config.vocab_size, config.hidden_size, rngs=rngs)
        self.position_embedding = Embedding(config.max_position_embeddings, config.hidden_size, rngs=rngs)

    def __call__(self, input_ids):
        n = input_ids.shape[1]
        positions = self.position_embedding.embedding[...]
        if n > positions.shape[0]:
            raise UserError(f"CLIP text encoder input has {n} tokens; the model takes at most {positions.shape[0]} "
                            "(max_position_embeddings)")
        return jnp.take(self.token_embedding.embedding[...], input_ids, axis=0) + positions[:n][None]


class CLIPTextTransformer(nnx.Module):
    """transformers' `text_model`: embeddings → causal encoder → final_layer_norm, and the pooled output."""

    def __init__(self, config: CLIPTextConfig, *, rngs: nnx.Rngs):
        self.eos_token_id = config.eos_token_id
        self.embeddings = CLIPTextEmbeddings(config, rngs=rngs)
        self.encoder = CLIPEncoder(config, rngs=rngs)
        self.final_layer_norm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None) -> CLIPTextOutput:
        input_ids = jnp.asarray(input_ids)
        if input_ids.ndim != 2 or not jnp.issubdtype(input_ids.dtype, jnp.integer):
            raise UserError(f"CLIP text encoder input_ids must be integers of shape (batch, tokens), got "
                            f"{input_ids.dtype}{tuple(input_ids.shape)}")
        n = input_ids.shape[1]
        mask = jnp.tril(jnp.ones((n, n), bool))[None, None]  # (1, 1, queries, keys): key ≤ query
        if attention_mask is not None:  # padding mask (B, L), 1 = a real token: keys that are 0 are hidden
            mask = mask & (jnp.asarray(attention_mask) != 0)[:, None, None, :]
        x = self.encoder(self.embeddings(input_ids), mask)
        last_hidden_state = self.final_layer_norm(x)
        if self.eos_token_id == LEGACY_EOS_TOKEN_ID:
            pooled_at = jnp.argmax(input_ids, axis=-1)
        else:
            pooled_at = jnp.argmax((input_ids == self.eos_token_id).astype(jnp.int32), axis=-1)
        pooled = jnp.take_along_axis(last_hidden_state, pooled_at[:, None, None], axis=1)[:, 0]
        return CLIPTextOutput(last_hidden_state, pooled)


class CLIPTextModel(nnx.Module):
    """input_ids (B, L) integers, L ≤ max_position_embeddings → CLIPTextOutput(last_hidden_state, pooler_output).

    `attention_mask` (B, L), optional: 1 for real tokens, 0 for padding, combined with the causal mask as
    transformers does (SD pipelines pass none: their context is the full padded 77-token sequence).
    Computes in the parameters' dtype (the embedding tables', as loaded: `load_text_encoder(dtype=...)`;
    norms take their statistics in float32).
    """

    def __init__(self, config: CLIPTextConfig | None = None, *, rngs: nnx.Rngs):
        config = config or CLIPTextConfig()
        self.config = config
        self.text_model = CLIPTextTransformer(config, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None) -> CLIPTextOutput:
        return self.text_model(input_ids, attention_mask)
