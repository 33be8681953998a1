"""The attention forms of models/attention_kernel.py against a float64 NumPy softmax attention (forward and
gradients): the CPU form on shapes that take each of its three paths (whole batch at once, batch chunks in a
loop, per element with head and query-row blocks), the Pallas TPU kernel in Pallas' TPU interpret mode
(padded, multi-block and sharded), XLA's form; plus bfloat16, the per-platform choice, and the form as a
static part of a model's graph (a trace under one form is never reused under another)."""
import functools

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


def reference_grads(q, k, v, w, scale):
    """float64 (dq, dk, dv) of sum(attention(q, k, v) · w): dV = Pᵀ W, dP = W Vᵀ, dL = P ⊙ (dP − rowsum(dP ⊙ P)),
    dq = scale·dL k, dk = scale·dLᵀ q."""
    q, k, v, w = (np.asarray(x, np.float64) for x in (q, k, v, w))
    logits = np.einsum("btnd,bsnd->bnts", q, k) * scale
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    dv = np.einsum("bnts,btnd->bsnd", p, w)
    dp = np.einsum("btnd,bsnd->bnts", w, v)
    dl = p * (dp - np.sum(dp * p, axis=-1, keepdims=True))
    return (scale * np.einsum("bnts,bsnd->btnd", dl, k), scale * np.einsum("bnts,btnd->bsnd", dl, q), dv)


BLOCKED, XLA = ak.AttentionForm("blocked"), ak.AttentionForm("xla")


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
    fn = lambda q, k, v: ak.dot_product_attention(q, k, v, scale, BLOCKED)  # noqa: E731
    out = jax.jit(fn)(q, k, v)
    loops = traced_loops(fn, q, k, v)
    assert out.shape == (b, t, n, d)
    assert rel(out, reference(q, k, v, scale)) < 2e-6
    assert rel(ak.dot_product_attention(q, k, v, scale, XLA), reference(q, k, v, scale)) < 2e-6
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

    def loss(form, scale):
        f = lambda q, k, v: jnp.sum(ak.dot_product_attention(q, k, v, scale, form) * w)  # noqa: E731
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))

    for scale in (0.125, 0.3):  # q scaled, logits scaled
        (lb, gb), (lx, gx) = loss(BLOCKED, scale)(q, k, v), loss(XLA, scale)(q, k, v)
        assert abs(float(lb - lx)) <= 1e-5 * abs(float(lx))
        for a, ref, ref64 in zip(gb, gx, reference_grads(q, k, v, w, scale)):
            assert a.shape == ref.shape
            if np.any(ref):
                assert rel(a, ref) < 1e-5 and rel(a, ref64) < 1e-5 and rel(ref, ref64) < 1e-5
            else:  # dq with a single key: the softmax is constant
                assert np.max(np.abs(a)) < 1e-6


@pytest.mark.parametrize("name,budget,shape", PATHS[1:3], ids=[p[0] for p in PATHS[1:3]])
def test_blocked_form_keeps_float64(monkeypatch, name, budget, shape):
    """float64 inputs are computed in float64 on the looped paths, forward and backward (the softmax and the
    dk/dv accumulators follow the inputs' precision above float32): the float64 identity checks of the whole
    UNet (cross-attention collapse, gates vs pruning) would otherwise stop at float32 rounding."""
    monkeypatch.setattr(ak, "SCORE_BUDGET_BYTES", budget)
    b, t, s, n, d = shape
    with jax.enable_x64(True):
        q, k, v = inputs(b, t, s, n, d, seed=11, dtype=np.float64)
        w = jnp.asarray(np.random.default_rng(12).standard_normal((b, t, n, d)))
        f = lambda q, k, v: jnp.sum(ak.dot_product_attention(q, k, v, 0.3, BLOCKED) * w)  # noqa: E731
        out = ak.dot_product_attention(q, k, v, 0.3, BLOCKED)
        grads = jax.grad(f, argnums=(0, 1, 2))(q, k, v)
        assert out.dtype == jnp.float64 and rel(out, reference(q, k, v, 0.3)) < 1e-12
        for g, ref in zip(grads, reference_grads(q, k, v, w, 0.3)):
            assert g.dtype == jnp.float64 and rel(g, ref) < 1e-12


def test_backward_stores_no_probabilities(monkeypatch):
    """The reason for the custom VJP: the gradient program's temporaries stay far below the size of all
    blocks' probabilities, which plain autodiff of the loop keeps for the backward pass."""
    monkeypatch.setattr(ak, "SCORE_BUDGET_BYTES", 64 << 10)
    q, k, v = inputs(4, 512, 512, 2, 16, seed=9, spread=1.0)
    probs_bytes = 4 * 2 * 512 * 512 * 4  # B·N·T·S float32

    def temp_bytes(vjp):
        def f(q, k, v):
            return jnp.sum(ak.dot_product_attention(q, k, v, 0.25, BLOCKED) if vjp else ak._blocked.fun(q, k, v, 0.25))
        return jax.jit(jax.grad(f, argnums=(0, 1, 2))).lower(q, k, v).compile().memory_analysis().temp_size_in_bytes

    assert temp_bytes(vjp=False) > probs_bytes  # autodiff of the loops saves every block's probabilities
    assert temp_bytes(vjp=True) < probs_bytes / 4


def test_bfloat16_keeps_float32_softmax():
    q, k, v = inputs(2, 16, 16, 2, 64, seed=7, dtype=jnp.bfloat16, spread=1.0)
    out = jax.jit(lambda q, k, v: ak.dot_product_attention(q, k, v, 0.125, BLOCKED))(q, k, v)
    xla = jax.nn.dot_product_attention(q, k, v, scale=0.125)
    assert out.dtype == jnp.bfloat16
    ref = reference(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), 0.125)
    # both forms round the probabilities and the product to bfloat16 (≈ 2⁻⁸ relative): same error size
    assert rel(out, ref) < 1e-2 and rel(out, ref) < 1.5 * rel(xla, ref) + 1e-3


# ---- the Pallas TPU kernel, run by Pallas' TPU interpreter on this CPU --------------------------------------
# (q tokens, k tokens, heads, head width): padded to 128-token tiles with masked keys (200 → 256, 300 → 384 in
# three 128-blocks: the online softmax across key blocks), a cross-attention with T ≠ S, an exact tile.
KERNEL_SHAPES = [(200, 200, 3, 32), (130, 300, 2, 16), (128, 128, 1, 64)]


def _interpret(fn):
    from jax.experimental.pallas import tpu as pltpu

    @functools.wraps(fn)
    def run(*args):
        with pltpu.force_tpu_interpret_mode():
            return fn(*args)
    return run


@pytest.mark.parametrize("t,s,n,d", KERNEL_SHAPES, ids=[f"q{t}_k{s}_h{n}_d{d}" for t, s, n, d in KERNEL_SHAPES])
def test_pallas_tpu_kernel_equals_float64_reference(t, s, n, d):
    """Forward and gradients of the kernel path (layout, padding and masking, block sizes, its own
    recomputing backward) against float64, batch 2, with a non-power-of-two scale."""
    q, k, v = inputs(2, t, s, n, d, seed=t + s, spread=1.5)
    w = jnp.asarray(np.random.default_rng(t).standard_normal((2, t, n, d)).astype(np.float32))
    scale = 0.7 / np.sqrt(d)
    f = lambda q, k, v: ak.pallas_tpu_attention(q, k, v, scale)  # noqa: E731
    out, vjp = _interpret(lambda q, k, v: jax.vjp(f, q, k, v))(q, k, v)
    grads = _interpret(vjp)(w)
    assert out.shape == (2, t, n, d)
    assert rel(out, reference(q, k, v, scale)) < 2e-6
    for g, ref in zip(grads, reference_grads(q, k, v, w, scale)):
        assert g.shape == ref.shape and rel(g, ref) < 2e-5


def test_pallas_tpu_kernel_under_shard_map_on_a_mesh():
    """The kernel inside `shard_map` on a mesh (the trainer's axes; the batch over data × fsdp, heads over
    tensor): the same numbers, and the program holds the shard_map."""
    from jax.sharding import Mesh

    mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
    form = ak.form_for_mesh("pallas_tpu", mesh)
    q, k, v = inputs(2, 256, 256, 2, 32, seed=3, spread=1.5)
    fn = jax.jit(lambda q, k, v: ak.dot_product_attention(q, k, v, 0.125, form))
    assert "shard_map" in str(jax.make_jaxpr(fn)(q, k, v))
    with ak.recording() as forms:
        out = _interpret(fn)(q, k, v)
    assert [f["form"] for f in forms] == ["pallas_tpu"]
    assert rel(out, reference(q, k, v, 0.125)) < 2e-6


def test_choice_per_platform_shape_and_dtype():
    shape = lambda t, s, d=64, dtype=jnp.bfloat16: (jax.ShapeDtypeStruct((2, t, 5, d), dtype),  # noqa: E731
                                                      jax.ShapeDtypeStruct((2, s, 5, d), dtype))
    tpu, gpu, cpu = (ak.AttentionForm("auto", platform=p) for p in ("tpu", "gpu", "cpu"))
    # TPU: the kernel for SVD's spatial self-attention (576 → 640 padded), XLA for the temporal attention over
    # 14 frames, the 1-token cross-attention and a length that padding would inflate by > 25 % (CLIP's 257)
    for t in (2048, 9216, 2304, 576, 128):
        assert ak.choose(tpu, *shape(t, t)) == "pallas_tpu", t
    assert ak.choose(tpu, *shape(14, 14)) == ak.choose(tpu, *shape(2048, 1)) == "xla"
    assert ak.choose(tpu, *shape(257, 257)) == "xla" and ak.choose(tpu, *shape(2048, 2048, d=160)) == "xla"
    # GPU: cuDNN for bf16/fp16 with more than one key and head width ≤ 128; XLA for float32, 1 key, d > 128
    assert ak.choose(gpu, *shape(2048, 2048)) == ak.choose(gpu, *shape(14, 14, dtype=jnp.float16)) == "cudnn"
    assert ak.choose(gpu, *shape(2048, 2048, dtype=jnp.float32)) == "xla"
    assert ak.choose(gpu, *shape(2048, 1)) == "xla" and ak.choose(gpu, *shape(64, 64, d=256)) == "xla"
    # CPU: the blocked loops; forced forms are taken as given ("pallas_tpu"/"cudnn" with their fallbacks)
    assert ak.choose(cpu, *shape(2048, 2048)) == "blocked"
    assert ak.choose(XLA.replace(platform="tpu"), *shape(2048, 2048)) == "xla"
    assert ak.choose(ak.AttentionForm("cudnn"), *shape(2048, 1)) == "xla"
    # attention differentiated twice (the discriminator's R1) never gets a kernel without second derivatives
    assert tpu.for_second_derivatives().implementation == gpu.for_second_derivatives().implementation == "xla"
    assert cpu.for_second_derivatives().implementation == "blocked"


def test_form_is_part_of_the_traced_model():
    """A jitted function of a model is traced again when its attention form changes: the trace made under
    the blocked form is not reused under XLA's (the form is static in the model's graph definition)."""
    from flax import nnx

    from mvd_jax.models.attention import Attention

    model = Attention(16, heads=2, dim_head=8, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 24, 16)).astype(np.float32))
    fn = nnx.jit(lambda m, x: m(x))
    outs = {}
    for name in ("blocked", "xla", "blocked"):
        ak.set_form(model, ak.AttentionForm(name))
        assert ak.forms_in(model) == {ak.AttentionForm(name)}
        with ak.recording() as forms:
            outs.setdefault(name, []).append(fn(model, x))
        # traced anew for a form not seen before (a reused trace records nothing), from the cache otherwise
        assert [f["form"] for f in forms] == ([name] if len(outs[name]) == 1 else [])
    assert rel(outs["xla"][0], outs["blocked"][0]) < 1e-6
    with pytest.raises(TypeError):
        ak.set_form(model, "xla")


def test_errors():
    q, k, v = inputs(2, 8, 8, 1, 4, seed=8)
    with pytest.raises(ValueError, match="one of"):
        ak.AttentionForm("flash")
    with pytest.raises(ValueError, match="attention shapes"):
        ak.dot_product_attention(q, k[:, :, :, :2], v, 0.5)
