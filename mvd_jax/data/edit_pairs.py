"""Instruction-edit training pairs made offline from any video frames (MoViE's demo data; issue 24 part 5):
a frame, an instruction, and the frame edited as the instruction says, by a fixed pixel operation.

InstructPix2Pix learns from (input image, instruction, edited image) triplets — the real recipe uses the
InstructPix2Pix dataset (≈ 450 K triplets generated with GPT-3 + Prompt-to-Prompt, `timbrooks/
instructpix2pix-clip-filtered`). Offline, the same three parts come from the bundled real clips and the
programmatic edits below: colour, brightness, tone, blur and geometry, each an exact function of the pixels,
so a small UNet can learn them and a distilled student can be compared with its teacher on edits whose right
answer is known.

Everything here is jnp and jit-friendly: `apply_edits(images, which)` edits a batch with one edit index per
image (all edits computed, one selected: they are a few elementwise operations). The instructions are
tokenised once on the host (`instruction_ids`) and embedded by the text encoder inside the compiled step.
The demo text encoder is a small random CLIP text model on a byte-level vocabulary (`byte_tokenizer`: every
character a token, CLIP's special tokens around them), enough to tell the instructions apart.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from mvd_jax.data.clip_tokenizer import CLIPTokenizer, byte_to_unicode


def _to01(x):
    return (x + 1.0) / 2.0


def _from01(p):
    return jnp.clip(p, 0.0, 1.0) * 2.0 - 1.0


def _gray(p):
    y = p @ jnp.asarray([0.299, 0.587, 0.114], p.dtype)
    return jnp.repeat(y[..., None], 3, axis=-1)


def _box_blur(p, radius: int = 2):
    """Mean over a (2r+1)² window, edges repeated: separable, one axis at a time."""
    n = 2 * radius + 1
    for axis in (1, 2):
        pad = [(0, 0)] * p.ndim
        pad[axis] = (radius, radius)
        q = jnp.pad(p, pad, mode="edge")
        size = p.shape[axis]
        p = sum(jnp.take(q, jnp.arange(i, i + size), axis=axis) for i in range(n)) / n
    return p


# (instruction, edit of images in [0, 1] of shape (N, H, W, 3))
EDITS = (
    ("make it brighter", lambda p: 0.4 + 0.6 * p),
    ("make it darker", lambda p: 0.5 * p),
    ("make it black and white", _gray),
    ("invert the colors", lambda p: 1.0 - p),
    ("make it red", lambda p: p * jnp.asarray([0.7, 0.4, 0.4]) + jnp.asarray([0.3, 0.0, 0.0])),
    ("make it blue", lambda p: p * jnp.asarray([0.4, 0.4, 0.7]) + jnp.asarray([0.0, 0.0, 0.3])),
    ("blur it", _box_blur),
    ("flip it upside down", lambda p: p[:, ::-1]),
)
INSTRUCTIONS = tuple(text for text, _ in EDITS)


def apply_edits(images, which):
    """images (N, H, W, 3) in [−1, 1], which (N,) int edit indices → the edited images, (N, H, W, 3) in [−1, 1]."""
    p = _to01(images.astype(jnp.float32))
    edited = jnp.stack([fn(p) for _, fn in EDITS])  # (E, N, H, W, 3)
    chosen = jnp.take_along_axis(edited, jnp.asarray(which, jnp.int32)[None, :, None, None, None], axis=0)[0]
    return _from01(chosen).astype(images.dtype)


def byte_tokenizer(max_length: int = 32) -> CLIPTokenizer:
    """CLIP's tokenizer on a vocabulary of single characters (no merges): the 256 byte symbols, the same with
    the end-of-word mark, then <|startoftext|> and <|endoftext|> (the largest id, as in CLIP)."""
    symbols = sorted(byte_to_unicode(), key=ord)
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer({t: i for i, t in enumerate(tokens)}, [], model_max_length=max_length,
                         source="<byte vocabulary>")


def instruction_ids(tokenizer: CLIPTokenizer, instructions=INSTRUCTIONS) -> np.ndarray:
    """(E + 1, L) int32 token ids: one row per instruction, then the empty prompt (the unconditional text)."""
    return np.asarray(tokenizer([*instructions, ""]).input_ids, np.int32)
