"""softmax(q kᵀ · scale) v for (batch, tokens, heads, head_dim) arrays, with a CPU form that keeps the scores small.

`jax.nn.dot_product_attention` (XLA implementation) forms the whole (batch, heads, queries, keys) float32
score tensor, runs the softmax over it in memory-bound passes and transposes it for the second product.
At SVD's top level (14 frames × 5 heads × 2048² scores = 1.1 GiB) that is ~7× slower on this repo's 2-core
CPU than PyTorch's fused kernel (bench/README.md "Attention"). On accelerators XLA fuses attention
well, and TPU training should keep its one big batched product; on CPU the "blocked" form below wins:

- the batch is processed in chunks by `lax.map` (a loop), so each chunk's scores stay within a few MiB
  (in cache) instead of being written out and read back;
- when one batch element's scores are already larger than that (long spatial sequences), the loop body
  takes the heads one by one and loops over blocks of query rows; each block's softmax is exact because a
  row's softmax only needs its own keys;
- products are laid out (heads, queries, head_dim) so neither product needs the scores transposed.

The arithmetic is the same as the XLA form (float32 logits and softmax, probabilities cast to v's dtype
before the second product); results agree to float32 rounding (tests/test_attention_kernel.py).

`implementation(name)` selects the form for code traced inside it: "auto" (blocked when JAX's default
backend is the CPU, XLA's otherwise), "blocked" or "xla". Compiling for a TPU from a CPU host
(mvd_jax/train_compile.py) must say "xla", since the default backend there is the CPU.
"""
from __future__ import annotations

import contextlib
import math

import jax
import jax.numpy as jnp
from jax import lax

IMPLEMENTATIONS = ("auto", "blocked", "xla")
_implementation = "auto"

# Scores per loop iteration, in bytes of float32: small enough to stay in a core's L2/L3 share, large
# enough that the per-iteration overhead of the loop (tens of µs) is amortised. Measured on the bench
# shapes (bench/README.md); 1–16 MiB differ by < 30 %.
SCORE_BUDGET_BYTES = 4 << 20


@contextlib.contextmanager
def implementation(name: str):
    """Use attention form `name` for everything traced inside the `with` block."""
    global _implementation
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation must be one of {IMPLEMENTATIONS}, got {name!r}")
    previous, _implementation = _implementation, name
    try:
        yield
    finally:
        _implementation = previous


def current_implementation() -> str:
    if _implementation == "auto":
        return "blocked" if jax.default_backend() == "cpu" else "xla"
    return _implementation


def dot_product_attention(q, k, v, scale: float):
    """softmax(q kᵀ · scale) v; q (B, T, N, D), k and v (B, S, N, D) → (B, T, N, D)."""
    if q.ndim != 4 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"attention shapes must be q (B, T, N, D), k = v (B, S, N, D); got {q.shape}, {k.shape}, "
                         f"{v.shape}")
    if current_implementation() == "xla":
        return jax.nn.dot_product_attention(q, k, v, scale=scale)
    return _blocked(q, k, v, scale)


def _scale_queries(q, scale: float) -> bool:
    """Scaling q instead of the logits is exact when the scale is a power of two (1/√64 = 1/8 in SVD)."""
    return math.frexp(scale)[0] == 0.5


def _attend(q, k, v, scale: float):
    """Heads-major attention: q (..., N, T, D), k/v (..., N, S, D) → (..., N, T, D)."""
    exact_q_scale = _scale_queries(q, scale)
    if exact_q_scale:
        q = q * jnp.asarray(scale, q.dtype)
    logits = jnp.einsum("...td,...sd->...ts", q, k, preferred_element_type=jnp.float32)
    if not exact_q_scale:
        logits = logits * scale
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("...ts,...sd->...td", probs, v)


def _largest_divisor_at_most(n: int, bound: int) -> int:
    bound = max(1, min(n, bound))
    while n % bound:
        bound -= 1
    return bound


def _blocked(q, k, v, scale: float):
    b, t, n, _ = q.shape
    s = k.shape[1]
    per_element = n * t * s * 4
    if per_element <= SCORE_BUDGET_BYTES:
        # Several batch elements per iteration, all heads at once.
        chunk = _largest_divisor_at_most(b, SCORE_BUDGET_BYTES // per_element)
        heads_major = lambda x: jnp.swapaxes(x, -3, -2)  # (..., L, N, D) → (..., N, L, D)
        body = lambda qkv: heads_major(_attend(*(heads_major(x) for x in qkv), scale))
        if chunk == b:
            return body((q, k, v))
        split = lambda x: x.reshape(b // chunk, chunk, *x.shape[1:])
        return lax.map(body, (split(q), split(k), split(v))).reshape(q.shape)

    # One batch element per iteration; inside, each head (unrolled: N is small) and block of query rows
    # (a nested loop, so long sequences do not unroll into hundreds of copies).
    rows = _largest_divisor_at_most(t, SCORE_BUDGET_BYTES // (s * 4))

    def one_element(qkv):
        qe, ke, ve = qkv  # (T, N, D), (S, N, D)
        heads = []
        for h in range(n):
            kh, vh = ke[:, h], ve[:, h]
            qh = qe[:, h]
            if rows == t:
                heads.append(_attend(qh, kh, vh, scale))
            else:
                blocks = lax.map(lambda qb: _attend(qb, kh, vh, scale), qh.reshape(t // rows, rows, -1))
                heads.append(blocks.reshape(t, -1))
        return jnp.stack(heads, axis=1)

    return lax.map(one_element, (q, k, v))
