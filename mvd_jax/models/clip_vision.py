"""The CLIP image encoder that conditions Stable Video Diffusion, in Flax NNX, and SVD's preprocessing for it.

SVD conditions its UNet's cross-attention on one token: the `image_embeds` of the conditioning frame
from OpenCLIP ViT-H/14, stored in SVD checkpoints as transformers' `CLIPVisionModelWithProjection`
(`image_encoder/`). This module is that model, numerically equal to transformers 5.23:

    pixels (B, S, S, 3) → patch embedding (a stride-p conv without bias) ‖ class token, + positions
      → pre_layrnorm → L × pre-LN transformer layers (attention scale head_dim^-0.5, MLP fc1-act-fc2)
      → post_layernorm(class token) → visual_projection (no bias) → image_embeds (B, projection_dim)

The module tree and attribute names are transformers' (`vision_model.embeddings.patch_embedding`,
`vision_model.pre_layrnorm` — transformers' spelling —, `vision_model.encoder.layers[i].self_attn.q_proj`,
`visual_projection`, …) so `convert/transformers_clip.py` maps checkpoints over with the generic rules
of `convert/strict.py`. Inputs are channels-last. Only what SVD uses is here: no hidden-state outputs,
no position-embedding interpolation (the input must be image_size × image_size). The encoder layers take
an optional attention mask, which the image encoder never passes: it is for the causal text encoder
(models/clip_text.py), which reuses these layers.

`preprocess_for_clip` is the exact image path of diffusers' `StableVideoDiffusionPipeline._encode_image`:
an anti-aliasing Gaussian blur and a bicubic (align_corners=True) resize to 224 × 224 of the [-1, 1]
image, then back to [0, 1] and CLIP's mean/std normalisation. Blur and resize are both linear and
separable, so each image axis becomes one (224, n) matrix built on the host from the static shape and
applied with two einsums: exact (the matrices reproduce torch's reflect padding, index clamping and
float32 coefficients) and cheap on any accelerator.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mvd_jax.errors import UserError
from mvd_jax.models.attention_kernel import AttentionForm, dot_product_attention
from mvd_jax.models.layers import LayerNorm, Linear, param

# ---- config --------------------------------------------------------------------------------------
# transformers' activation names → functions. "gelu" is the exact (erf) GELU; the two tanh names are the
# same formula 0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³))).
ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}

TRANSFORMERS_CLASS = "CLIPVisionModelWithProjection"
MODEL_TYPE = "clip_vision_model"

# Keys transformers writes into a vision config.json that do not change the inference function:
# bookkeeping, training-only settings (dropout, init scales) and the generic PretrainedConfig fields
# (generation and output flags) that transformers 4.x wrote in full. Any other unknown key is an error.
_IGNORED_KEYS = frozenset({
    "architectures", "model_type", "transformers_version", "dtype", "torch_dtype",
    "attention_dropout", "dropout", "initializer_range", "initializer_factor",
    "add_cross_attention", "bad_words_ids", "begin_suppress_tokens", "bos_token_id", "chunk_size_feed_forward",
    "cross_attention_hidden_size", "decoder_start_token_id", "diversity_penalty", "do_sample", "early_stopping",
    "encoder_no_repeat_ngram_size", "eos_token_id", "exponential_decay_length_penalty", "finetuning_task",
    "forced_bos_token_id", "forced_eos_token_id", "id2label", "is_decoder", "is_encoder_decoder", "label2id",
    "length_penalty", "max_length", "min_length", "no_repeat_ngram_size", "num_beam_groups", "num_beams",
    "num_return_sequences", "output_attentions", "output_hidden_states", "output_scores", "pad_token_id",
    "prefix", "problem_type", "pruned_heads", "remove_invalid_values", "repetition_penalty", "return_dict",
    "return_dict_in_generate", "sep_token_id", "suppress_tokens", "task_specific_params", "temperature",
    "tf_legacy_loss", "tie_encoder_decoder", "tie_word_embeddings", "tokenizer_class", "top_k", "top_p",
    "torchscript", "typical_p", "use_bfloat16",
})


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
    """Architecture of the image encoder. Defaults are SVD's: OpenCLIP ViT-H/14 at 224 px."""

    hidden_size: int = 1280
    intermediate_size: int = 5120
    projection_dim: int = 1024
    num_hidden_layers: int = 32
    num_attention_heads: int = 16
    image_size: int = 224
    patch_size: int = 14
    num_channels: int = 3
    layer_norm_eps: float = 1e-5
    hidden_act: str = "gelu"

    def __post_init__(self):
        ints = ("hidden_size", "intermediate_size", "projection_dim", "num_hidden_layers", "num_attention_heads",
                "image_size", "patch_size", "num_channels")
        for name in ints:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserError(f"CLIP vision config: {name} must be a positive integer, got {v!r}")
        if self.hidden_act not in ACTIVATIONS:
            raise UserError(f"CLIP vision config: unsupported hidden_act {self.hidden_act!r}; "
                            f"supported: {sorted(ACTIVATIONS)}")
        if self.hidden_size % self.num_attention_heads:
            raise UserError(f"CLIP vision config: hidden_size {self.hidden_size} is not a multiple of "
                            f"num_attention_heads {self.num_attention_heads}")
        if self.patch_size > self.image_size:
            raise UserError(f"CLIP vision config: patch_size {self.patch_size} exceeds image_size {self.image_size}")
        if not isinstance(self.layer_norm_eps, (int, float)) or isinstance(self.layer_norm_eps, bool) \
                or self.layer_norm_eps <= 0:
            raise UserError(f"CLIP vision config: layer_norm_eps must be a positive number, got {self.layer_norm_eps!r}")

    @property
    def num_positions(self) -> int:
        """Patch tokens plus the class token (transformers: (image_size // patch_size)² + 1)."""
        return (self.image_size // self.patch_size) ** 2 + 1

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CLIPVisionConfig":
        """From a transformers `CLIPVisionModelWithProjection` config.json (see `_IGNORED_KEYS`)."""
        model_type = d.get("model_type", MODEL_TYPE)
        if model_type != MODEL_TYPE:
            raise UserError(f"CLIP vision config: model_type is {model_type!r}, expected {MODEL_TYPE!r}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in d if k not in fields and k not in _IGNORED_KEYS and not k.startswith("_"))
        if unknown:
            raise UserError(f"unknown CLIP vision config key(s) {unknown}; known keys: {sorted(fields)}")
        return cls(**{k: v for k, v in d.items() if k in fields})

    def to_transformers_dict(self) -> dict[str, Any]:
        """A config.json that transformers' `CLIPVisionModelWithProjection.from_pretrained` reads."""
        return {"architectures": [TRANSFORMERS_CLASS], "model_type": MODEL_TYPE, **dataclasses.asdict(self)}


# ---- model ---------------------------------------------------------------------------------------
def _normal(std: float):
    return lambda key, shape, dtype: std * jax.random.normal(key, shape, dtype)


class PatchEmbedding(nnx.Module):
    """torch `Conv2d(C, D, kernel_size=p, stride=p, bias=False)` on channels-last input.

    Non-overlapping patches make the convolution a reshape and one matmul. `kernel` keeps the conv
    layout (p, p, C, D) so the checkpoint's (D, C, p, p) weight maps over with the generic conv
    transpose. Like the strided conv, a remainder of fewer than p pixels at the bottom/right is dropped.
    """

    def __init__(self, num_channels: int, hidden_size: int, patch_size: int, *, rngs: nnx.Rngs):
        self.patch_size = patch_size
        self.kernel = param(rngs, _normal(0.02), (patch_size, patch_size, num_channels, hidden_size),
                            (None, None, None, "embed"))

    def __call__(self, x):
        b, h, w, c = x.shape
        p = self.patch_size
        gh, gw = h // p, w // p
        x = x[:, :gh * p, :gw * p, :].reshape(b, gh, p, gw, p, c).transpose(0, 1, 3, 2, 4, 5)
        kernel = self.kernel[...].astype(x.dtype).reshape(p * p * c, -1)
        return jnp.matmul(x.reshape(b, gh * gw, p * p * c), kernel)  # (B, patches, D), row-major over the grid


class Embedding(nnx.Module):
    """torch `nn.Embedding`: a (num, dim) table stored under `embedding` (strict.py: → `weight`, no transpose)."""

    def __init__(self, num_embeddings: int, features: int, *, rngs: nnx.Rngs):
        self.embedding = param(rngs, _normal(0.02), (num_embeddings, features), (None, "embed"))


class CLIPVisionEmbeddings(nnx.Module):
    """Class token ‖ patch tokens, plus learned position embeddings."""

    def __init__(self, config: CLIPVisionConfig, *, rngs: nnx.Rngs):
        d = config.hidden_size
        self.image_size = config.image_size
        self.class_embedding = param(rngs, _normal(d ** -0.5), (d,), ("embed",))
        self.patch_embedding = PatchEmbedding(config.num_channels, d, config.patch_size, rngs=rngs)
        self.position_embedding = Embedding(config.num_positions, d, rngs=rngs)

    def __call__(self, pixel_values):
        b, h, w, _ = pixel_values.shape
        if (h, w) != (self.image_size, self.image_size):
            raise UserError(f"CLIP image encoder input is {h}×{w}; the model takes {self.image_size}×{self.image_size} "
                            "(use preprocess_for_clip)")
        patches = self.patch_embedding(pixel_values)
        cls = jnp.broadcast_to(self.class_embedding[...].astype(patches.dtype), (b, 1, patches.shape[-1]))
        tokens = jnp.concatenate([cls, patches], axis=1)
        return tokens + self.position_embedding.embedding[...].astype(tokens.dtype)[None]


class CLIPAttention(nnx.Module):
    """Multi-head self-attention with biased q/k/v/out projections, softmax scale head_dim^-0.5.

    `mask`: None (every token attends to every token, in the attention form the layer is set to), or a
    boolean array broadcastable to (B, heads, queries, keys), True where a query may attend to a key (the
    text encoder's causal mask). A masked call takes XLA's form, jax.nn.dot_product_attention: the text
    encoder's sequences are short (77 tokens), and the other forms have no mask.
    """

    def __init__(self, config: CLIPVisionConfig, *, rngs: nnx.Rngs):
        d = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = d // self.num_heads
        self.scale = self.head_dim ** -0.5
        self.k_proj = Linear(d, d, axes=("embed", "heads"), rngs=rngs)
        self.v_proj = Linear(d, d, axes=("embed", "heads"), rngs=rngs)
        self.q_proj = Linear(d, d, axes=("embed", "heads"), rngs=rngs)
        self.out_proj = Linear(d, d, axes=("heads", "embed"), rngs=rngs)
        self.attention_form = AttentionForm()  # static (attention_kernel.set_form)

    def __call__(self, x, mask=None):
        b, n, _ = x.shape
        split = lambda t: t.reshape(b, n, self.num_heads, self.head_dim)
        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        if mask is None:
            out = dot_product_attention(q, k, v, self.scale, self.attention_form)
        else:
            out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=self.scale)
        return self.out_proj(out.reshape(b, n, -1))


class CLIPMLP(nnx.Module):
    def __init__(self, config: CLIPVisionConfig, *, rngs: nnx.Rngs):
        self.activation = config.hidden_act
        self.fc1 = Linear(config.hidden_size, config.intermediate_size, axes=("embed", "mlp"), rngs=rngs)
        self.fc2 = Linear(config.intermediate_size, config.hidden_size, axes=("mlp", "embed"), rngs=rngs)

    def __call__(self, x):
        return self.fc2(ACTIVATIONS[self.activation](self.fc1(x)))


class CLIPEncoderLayer(nnx.Module):
    """Pre-LN transformer layer: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, config: CLIPVisionConfig, *, rngs: nnx.Rngs):
        d, eps = config.hidden_size, config.layer_norm_eps
        self.self_attn = CLIPAttention(config, rngs=rngs)
        self.layer_norm1 = LayerNorm(d, eps=eps, rngs=rngs)
        self.mlp = CLIPMLP(config, rngs=rngs)
        self.layer_norm2 = LayerNorm(d, eps=eps, rngs=rngs)

    def __call__(self, x, mask=None):
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nnx.Module):
    def __init__(self, config: CLIPVisionConfig, *, rngs: nnx.Rngs):
        self.layers = nnx.List([CLIPEncoderLayer(config, rngs=rngs) for _ in range(config.num_hidden_layers)])

    def __call__(self, x, mask=None):
        """`mask`: see CLIPAttention (None for the image encoder)."""
        for layer in self.layers:
            x = layer(x, mask)
        return x


class CLIPVisionTransformer(nnx.Module):
    """transformers' `vision_model`: returns the pooled output post_layernorm(last_hidden_state[:, 0])."""

    def __init__(self, config: CLIPVisionConfig, *, rngs: nnx.Rngs):
        d, eps = config.hidden_size, config.layer_norm_eps
        self.embeddings = CLIPVisionEmbeddings(config, rngs=rngs)
        self.pre_layrnorm = LayerNorm(d, eps=eps, rngs=rngs)  # sic: transformers' parameter name
        self.encoder = CLIPEncoder(config, rngs=rngs)
        self.post_layernorm = LayerNorm(d, eps=eps, rngs=rngs)

    def __call__(self, pixel_values):
        last_hidden_state = self.encoder(self.pre_layrnorm(self.embeddings(pixel_values)))
        return self.post_layernorm(last_hidden_state[:, 0])


class CLIPVisionModelWithProjection(nnx.Module):
    """pixel_values (B, image_size, image_size, C), already normalised → image_embeds (B, projection_dim).

    Computes in the input's dtype (parameters are cast to it; norms take their statistics in float32).
    """

    def __init__(self, config: CLIPVisionConfig | None = None, *, rngs: nnx.Rngs):
        config = config or CLIPVisionConfig()
        self.config = config
        self.vision_model = CLIPVisionTransformer(config, rngs=rngs)
        self.visual_projection = Linear(config.hidden_size, config.projection_dim, use_bias=False,
                                        axes=("embed", None), rngs=rngs)

    def __call__(self, pixel_values):
        return self.visual_projection(self.vision_model(pixel_values))


# ---- SVD's preprocessing -------------------------------------------------------------------------
# CLIPImageProcessor's defaults (OpenAI CLIP's statistics), applied in float32 as transformers does.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_SIZE = 224  # diffusers' _encode_image resizes to 224 × 224 whatever the encoder config says


def _gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    """diffusers' `_gaussian`, in float32 like the torch code (sigma rounded to float32 first)."""
    s = np.float32(sigma)
    x = np.arange(size, dtype=np.float32) - np.float32(size // 2)
    if size % 2 == 0:
        x = x + np.float32(0.5)
    g = np.exp(-(x * x) / (np.float32(2.0) * s * s))
    return g / g.sum()


def _blur_matrix(n: int, size: int, sigma: float) -> np.ndarray:
    """(n, n) float64 matrix of diffusers' 1-d `_filter2d` pass: reflect padding (front (k-1)//2, rear the
    rest, as `_compute_padding`), then cross-correlation with the Gaussian."""
    front = (size - 1) // 2
    if max(front, size - 1 - front) >= n:
        raise UserError(f"image side of {n} pixels is too small for the anti-aliasing blur "
                        f"(torch's reflect padding of {size - 1 - front} needs more pixels)")
    kernel = _gaussian_kernel(size, sigma).astype(np.float64)
    src = np.arange(n)[:, None] - front + np.arange(size)[None, :]  # (n, size) source positions
    src = np.where(src < 0, -src, src)
    src = np.where(src >= n, 2 * (n - 1) - src, src)
    m = np.zeros((n, n), np.float64)
    np.add.at(m, (np.repeat(np.arange(n), size), src.ravel()), np.tile(kernel, n))
    return m


def _bicubic_matrix(n: int, out: int) -> np.ndarray:
    """(out, n) float64 matrix of torch's bicubic interpolation with align_corners=True.

    Mirrors ATen's CPU kernel in float32: source index scale·i with scale = (n-1)/(out-1), Keys'
    cubic convolution with A = -0.75 on the 4 neighbours floor(src)-1 … floor(src)+2, indices clamped
    to the border (so clamped taps add up on the edge pixel).
    """
    a = np.float32(-0.75)
    scale = np.float32(n - 1) / np.float32(out - 1) if out > 1 else np.float32(0.0)
    src = scale * np.arange(out, dtype=np.float32)
    idx = np.minimum(np.floor(src).astype(np.int64), n - 1)
    t = np.clip(src - idx.astype(np.float32), np.float32(0), np.float32(1))
    conv1 = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1  # |x| ≤ 1
    conv2 = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a  # 1 < |x| < 2
    one = np.float32(1.0)
    weights = np.stack([conv2(t + one), conv1(t), conv1(one - t), conv2((one - t) + one)], axis=1)
    cols = np.clip(idx[:, None] - 1 + np.arange(4)[None, :], 0, n - 1)
    m = np.zeros((out, n), np.float64)
    np.add.at(m, (np.repeat(np.arange(out), 4), cols.ravel()), weights.astype(np.float64).ravel())
    return m


@functools.lru_cache(maxsize=32)
def resize_matrix(n: int, out: int) -> np.ndarray:
    """(out, n) float32 matrix of diffusers' `_resize_with_antialiasing` along one axis: the Gaussian blur
    (σ = max((n/out − 1)/2, 0.001), kernel size int(max(4σ, 3)) made odd) followed by the bicubic resize."""
    sigma = max((n / out - 1.0) / 2.0, 0.001)
    size = int(max(2.0 * 2 * sigma, 3))
    if size % 2 == 0:
        size += 1
    return (_bicubic_matrix(n, out) @ _blur_matrix(n, size, sigma)).astype(np.float32)


def preprocess_for_clip(images, size: int = CLIP_SIZE):
    """SVD's CLIP input from images in [-1, 1]: (B, H, W, 3) → (B, size, size, 3) float32.

    The arithmetic of diffusers' `_encode_image` for a non-tensor image (which it first maps to
    x·2 − 1): `_resize_with_antialiasing(x, (224, 224))`, then (y + 1)/2, then CLIPImageProcessor's
    (y − mean)/std in float32. Shapes are static, so this traces under jit.
    """
    x = jnp.asarray(images, jnp.float32)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise UserError(f"preprocess_for_clip expects RGB images (B, H, W, 3) in [-1, 1], got shape {tuple(x.shape)}")
    _, h, w, _ = x.shape
    ry, rx = jnp.asarray(resize_matrix(h, size)), jnp.asarray(resize_matrix(w, size))
    hi = jax.lax.Precision.HIGHEST  # the default TPU matmul precision would round the pixels to bf16
    y = jnp.einsum("oh,bhwc->bowc", ry, x, precision=hi)
    y = jnp.einsum("pw,bowc->bopc", rx, y, precision=hi)
    y = (y + 1.0) / 2.0
    mean, std = jnp.asarray(CLIP_MEAN, jnp.float32), jnp.asarray(CLIP_STD, jnp.float32)
    return (y - mean) / std
