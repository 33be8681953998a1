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
- products are laid out (heads, queries, head_dim) so neither product needs the scores transposed;
- its gradient (a custom VJP) runs the same loops and recomputes each block's probabilities, as flash
  attention does, instead of saving every block's (queries × keys) probabilities for the backward pass.

The arithmetic is the same as the XLA form (float32 logits and softmax, probabilities cast to v's dtype
before the second product); results agree to float32 rounding (tests/test_attention_kernel.py).

`implementation(name)` selects the form for code traced inside it: "auto" (blocked when JAX's default
backend is the CPU, XLA's otherwise), "blocked" or "xla". Compiling for a TPU from a CPU host
(mvd_jax/train_compile.py) must say "xla", since the default backend there is the CPU.
"""
from __future__ import annotations

import contextlib
import functools
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


def _probabilities(q, k, scale: float):
    """float32 softmax(scale · q kᵀ) of heads-major q (..., T, D) and k (..., S, D) → (..., T, S).

    A power-of-two scale (1/√64 = 1/8 in SVD) is applied to q, exactly and on the smaller array; any
    other scale to the float32 logits.
    """
    if math.frexp(scale)[0] == 0.5:
        logits = jnp.einsum("...td,...sd->...ts", q * jnp.asarray(scale, q.dtype), k,
                            preferred_element_type=jnp.float32)
    else:
        logits = jnp.einsum("...td,...sd->...ts", q, k, preferred_element_type=jnp.float32) * scale
    return jax.nn.softmax(logits, axis=-1)


def _attend(q, k, v, scale: float):
    """Heads-major attention: q (..., N, T, D), k/v (..., N, S, D) → (..., N, T, D)."""
    return jnp.einsum("...ts,...sd->...td", _probabilities(q, k, scale).astype(v.dtype), v)


def _attend_grad(q, k, v, do, scale: float):
    """(dq, dk, dv) of `_attend` for one block, recomputing the probabilities instead of storing them.

    With P = softmax(L), L = scale·q kᵀ, O = P v:  dv = Pᵀ dO,  dP = dO vᵀ,
    dL = P ⊙ (dP − rowsum(dP ⊙ P)),  dq = scale·dL k,  dk = scale·dLᵀ q — the chain rule of the forward,
    written out so the loop carries only q, k, v, dO (never the (T, S) probabilities of every block).
    """
    probs = _probabilities(q, k, scale)
    dv = jnp.einsum("...ts,...td->...sd", probs.astype(v.dtype), do)
    dprobs = jnp.einsum("...td,...sd->...ts", do, v, preferred_element_type=jnp.float32)
    dlogits = probs * (dprobs - jnp.sum(dprobs * probs, axis=-1, keepdims=True))
    dlogits = (dlogits * scale).astype(q.dtype)
    dq = jnp.einsum("...ts,...sd->...td", dlogits, k)
    dk = jnp.einsum("...ts,...td->...sd", dlogits, q)
    return dq, dk, dv


def _largest_divisor_at_most(n: int, bound: int) -> int:
    bound = max(1, min(n, bound))
    while n % bound:
        bound -= 1
    return bound


def _plan(q, k):
    """("chunks", batch elements per iteration) or ("rows", query rows per block) for these shapes."""
    b, t, n, _ = q.shape
    s = k.shape[1]
    per_element = n * t * s * 4
    if per_element <= SCORE_BUDGET_BYTES:
        return "chunks", _largest_divisor_at_most(b, SCORE_BUDGET_BYTES // per_element)
    return "rows", _largest_divisor_at_most(t, SCORE_BUDGET_BYTES // (s * 4))


def _heads_major(x):  # (..., L, N, D) → (..., N, L, D) and back
    return jnp.swapaxes(x, -3, -2)


def _over_chunks(fn, arrays, chunk: int):
    """fn over the batch in chunks of `chunk` elements (a loop unless one chunk is the whole batch)."""
    b = arrays[0].shape[0]
    if chunk == b:
        return fn(arrays)
    split = lambda x: x.reshape(b // chunk, chunk, *x.shape[1:])
    out = lax.map(fn, tuple(split(x) for x in arrays))
    return jax.tree.map(lambda y: y.reshape(b, *y.shape[2:]), out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _blocked(q, k, v, scale: float):
    kind, size = _plan(q, k)
    if kind == "chunks":
        # Several batch elements per iteration, all heads at once.
        body = lambda qkv: _heads_major(_attend(*(_heads_major(x) for x in qkv), scale))
        return _over_chunks(body, (q, k, v), size)

    # One batch element per iteration; inside, each head (unrolled: N is small) and block of query rows
    # (a nested loop, so long sequences do not unroll into hundreds of copies).
    t, n = q.shape[1], q.shape[2]

    def one_element(qkv):
        qe, ke, ve = qkv  # (T, N, D), (S, N, D)
        heads = []
        for h in range(n):
            qh, kh, vh = qe[:, h], ke[:, h], ve[:, h]
            if size == t:
                heads.append(_attend(qh, kh, vh, scale))
            else:
                blocks = lax.map(lambda qb: _attend(qb, kh, vh, scale), qh.reshape(t // size, size, -1))
                heads.append(blocks.reshape(t, -1))
        return jnp.stack(heads, axis=1)

    return lax.map(one_element, (q, k, v))


def _blocked_fwd(q, k, v, scale: float):
    return _blocked(q, k, v, scale), (q, k, v)


def _blocked_bwd(scale: float, residuals, do):
    """The same loops as the forward, each block's gradients from `_attend_grad`; dk and dv of one head
    accumulate (in float32) over its query blocks."""
    q, k, v = residuals
    kind, size = _plan(q, k)
    if kind == "chunks":
        def body(arrays):
            grads = _attend_grad(*(_heads_major(x) for x in arrays), scale)
            return tuple(_heads_major(g) for g in grads)
        return _over_chunks(body, (q, k, v, do), size)

    t, n = q.shape[1], q.shape[2]

    def one_element(arrays):
        qe, ke, ve, doe = arrays
        dqs, dks, dvs = [], [], []
        for h in range(n):
            qh, kh, vh, doh = qe[:, h], ke[:, h], ve[:, h], doe[:, h]
            if size == t:
                dq, dk, dv = _attend_grad(qh, kh, vh, doh, scale)
            else:
                def block(acc, qdo):
                    dq, dk, dv = _attend_grad(qdo[0], kh, vh, qdo[1], scale)
                    return (acc[0] + dk.astype(jnp.float32), acc[1] + dv.astype(jnp.float32)), dq

                zeros = jnp.zeros(kh.shape, jnp.float32)
                blocks = (qh.reshape(t // size, size, -1), doh.reshape(t // size, size, -1))
                (dk, dv), dq = lax.scan(block, (zeros, zeros), blocks)
                dq, dk, dv = dq.reshape(t, -1), dk.astype(kh.dtype), dv.astype(vh.dtype)
            dqs.append(dq), dks.append(dk), dvs.append(dv)
        return tuple(jnp.stack(g, axis=1) for g in (dqs, dks, dvs))

    return lax.map(one_element, (q, k, v, do))


_blocked.defvjp(_blocked_fwd, _blocked_bwd)
