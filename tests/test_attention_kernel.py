"""The CPU attention form (models/attention_kernel.py) against a float64 NumPy softmax attention, on shapes
that take each of its three paths (whole batch at once, batch chunks in a loop, per element with head and
query-row blocks), plus gradients, bfloat16 and the implementation switch."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mvd_jax.models import attention_kernel as ak


def reference(q, k, v, scale):
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    logits = np.einsum("btnd,bsnd->bnts", q, k) * scale
    logits -= logits.max(-1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bnts,bsnd->btnd", p, v)


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def inputs(b, t, s, n, d, seed, dtype=np.float32, spread=3.0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((b, t, n, d)) * spread  # peaked softmaxes: a wrong max or row split shows
    k = rng.standard_normal((b, s, n, d))
    v = rng.standard_normal((b, s, n, d))
    return tuple(jnp.asarray(x.astype(dtype)) for x in (q, k, v))


def traced_loops(fn, *args) -> int:
    return str(jax.make_jaxpr(fn)(*args)).count("scan[")


# budget (bytes of float32 scores per loop iteration) chosen so each case takes the named path
PATHS = [
    ("whole batch", 1 << 30, (3, 7, 5, 2, 8)),
    ("batch chunks", 2 * 7 * 5 * 4 * 2, (6, 7, 5, 2, 8)),           # two elements per iteration, 3 iterations
    ("element, row blocks", 5 * 4 * 3, (2, 12, 5, 3, 8)),            # 3 query rows per block, heads unrolled
    ("element, one block", 12 * 5 * 4, (2, 12, 5, 3, 8)),
    ("cross-attention, 1 key", 1 << 30, (2, 9, 1, 2, 16)),
]


@pytest.mark.parametrize("name,budget,shape", PATHS, ids=[p[0] for p in PATHS])
@pytest.mark.parametrize("scale_kind", ["power of two", "1/sqrt(40)"])
def test_blocked_equals_float64_reference(monkeypatch, name, budget, shape, scale_kind):
    monkeypatch.setattr(ak, "SCORE_BUDGET_BYTES", budget)
    b, t, s, n, d = shape
    scale = 1 / 8 if scale_kind == "power of two" else 40 ** -0.5  # q scaled exactly vs logits scaled
    q, k, v = inputs(b, t, s, n, d, seed=hash((name, scale_kind)) % 1000)
    with ak.implementation("blocked"):
        fn = jax.jit(lambda q, k, v: ak.dot_product_attention(q, k, v, scale))
        out = fn(q, k, v)
        loops = traced_loops(lambda q, k, v: ak.dot_product_attention(q, k, v, scale), q, k, v)
    assert out.shape == (b, t, n, d)
    assert rel(out, reference(q, k, v, scale)) < 2e-6
    # the path taken is the one named (a budget change that silently takes another path fails here)
    assert loops == {"whole batch": 0, "batch chunks": 1, "element, row blocks": 1 + n,
                     "element, one block": 1, "cross-attention, 1 key": 0}[name]


@pytest.mark.parametrize("name,budget,shape", PATHS, ids=[p[0] for p in PATHS])
def test_gradients_equal_autodiff_of_xla_form(monkeypatch, name, budget, shape):
    """The recomputing custom VJP against JAX's autodiff of the XLA form, on every path."""
    monkeypatch.setattr(ak, "SCORE_BUDGET_BYTES", budget)
    b, t, s, n, d = shape
    q, k, v = inputs(b, t, s, n, d, seed=len(name), spread=1.5)
    w = jnp.asarray(np.random.default_rng(6).standard_normal((b, t, n, d)).astype(np.float32))

    def loss(impl, scale):
        def f(q, k, v):
            with ak.implementation(impl):
                return jnp.sum(ak.dot_product_attention(q, k, v, scale) * w)
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))

    for scale in (0.125, 0.3):  # q scaled, logits scaled
        (lb, gb), (lx, gx) = loss("blocked", scale)(q, k, v), loss("xla", scale)(q, k, v)
        assert abs(float(lb - lx)) <= 1e-5 * abs(float(lx))
        for a, ref in zip(gb, gx):
            assert a.shape == ref.shape
            if np.any(ref):
                assert rel(a, ref) < 1e-5
            else:  # dq with a single key: the softmax is constant
                assert np.max(np.abs(a)) < 1e-6


def test_backward_stores_no_probabilities(monkeypatch):
    """The reason for the custom VJP: the gradient program's temporaries stay far below the size of all
    blocks' probabilities, which plain autodiff of the loop keeps for the backward pass."""
    monkeypatch.setattr(ak, "SCORE_BUDGET_BYTES", 64 << 10)
    q, k, v = inputs(4, 512, 512, 2, 16, seed=9, spread=1.0)
    probs_bytes = 4 * 2 * 512 * 512 * 4  # B·N·T·S float32

    def temp_bytes(vjp):
        def f(q, k, v):
            with ak.implementation("blocked"):
                return jnp.sum(ak.dot_product_attention(q, k, v, 0.25) if vjp else ak._blocked.fun(q, k, v, 0.25))
        return jax.jit(jax.grad(f, argnums=(0, 1, 2))).lower(q, k, v).compile().memory_analysis().temp_size_in_bytes

    assert temp_bytes(vjp=False) > probs_bytes  # autodiff of the loops saves every block's probabilities
    assert temp_bytes(vjp=True) < probs_bytes / 4


def test_bfloat16_keeps_float32_softmax():
    q, k, v = inputs(2, 16, 16, 2, 64, seed=7, dtype=jnp.bfloat16, spread=1.0)
    with ak.implementation("blocked"):
        out = jax.jit(lambda q, k, v: ak.dot_product_attention(q, k, v, 0.125))(q, k, v)
    xla = jax.nn.dot_product_attention(q, k, v, scale=0.125)
    assert out.dtype == jnp.bfloat16
    ref = reference(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), 0.125)
    # both forms round the probabilities and the product to bfloat16 (≈ 2⁻⁸ relative): same error size
    assert rel(out, ref) < 1e-2 and rel(out, ref) < 1.5 * rel(xla, ref) + 1e-3


def test_implementation_switch_and_errors():
    q, k, v = inputs(2, 8, 8, 1, 4, seed=8)
    with ak.implementation("xla"):
        assert ak.current_implementation() == "xla"
        assert traced_loops(lambda q, k, v: ak.dot_product_attention(q, k, v, 0.5), q, k, v) == 0
        with ak.implementation("blocked"):
            assert ak.current_implementation() == "blocked"
        assert ak.current_implementation() == "xla"  # restored on exit
    assert ak.current_implementation() == ("blocked" if jax.default_backend() == "cpu" else "xla")
    with pytest.raises(ValueError, match="one of"):
        with ak.implementation("flash"):
            pass
    with pytest.raises(ValueError, match="attention shapes"):
        ak.dot_product_attention(q, k[:, :, :, :2], v, 0.5)
