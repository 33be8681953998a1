"""softmax(q kᵀ · scale) v for (batch, tokens, heads, head_dim) arrays, in the form each platform wants.

Which form runs is an `AttentionForm`: a frozen (hashable) value that every attention layer of the models
holds as a static attribute (`attention_form`), set with `set_form(model, form)`. Static attributes are
part of an NNX module's graph definition, so a jitted function of the model — `nnx.jit`, or `jax.jit`
over `nnx.split`'s graphdef as the trainer does — is traced again when the form changes: the choice is
never read from global state at trace time, where JAX's trace caches cannot see it.

Forms (`AttentionForm.implementation`):
- "xla": `jax.nn.dot_product_attention`'s XLA form: the whole (batch, heads, queries, keys) float32 score
  tensor, batched products. What TFLite export traces (no control flow on the phone) and the fallback of
  the accelerator forms.
- "blocked": the CPU form below, which keeps the scores small (loops over batch chunks or row blocks).
- "pallas_tpu": the Pallas TPU flash-attention kernel (`jax.experimental.pallas.ops.tpu.flash_attention`:
  online softmax over key blocks in VMEM; its backward recomputes the probabilities), run per shard under
  `jax.shard_map` over the mesh axes that split the batch (Mosaic kernels are not partitioned by XLA).
  Applies where both sequences are long (≥ 128 tokens: SVD's spatial self-attention, 2048/512/128 tokens
  at 512×256, 9216/2304/576 at 1024×576); lengths that are not a multiple of 128 are padded with masked
  (segment-id) tokens when that wastes ≤ 25 % per axis (576 → 640), else XLA's form is used. Short
  sequences — the temporal attention over 14 or 7 frames, the 1-token cross-attention — stay on XLA's
  form: their scores are small, and the kernel's tiles are 128 tokens wide. The kernel has no second
  derivative, so code that differentiates attention twice (the discriminator's R1 penalty) asks for XLA.
- "cudnn": cuDNN's fused attention (`jax.nn.dot_product_attention(..., implementation="cudnn")`) where it
  applies — bf16/fp16, head width ≤ 128, more than one key (cuDNN refuses the 1-token cross-attention in
  the backward pass: "Unsupported sequence length Q 2048, KV 1") — XLA's form otherwise; float32 stays
  on XLA.
- "auto": by the target platform (`AttentionForm.platform`, default: JAX's default backend when traced):
  cpu → blocked, tpu → pallas_tpu, gpu → cudnn, each with the fallbacks above.
`choose(form, q, k)` is the per-call decision; `recording()` collects the decisions of a trace (the
compile reports list the form of every distinct attention shape).

The CPU form. `jax.nn.dot_product_attention` runs the softmax over the whole score tensor in
memory-bound passes and transposes it for the second product; at SVD's top level (14 frames × 5 heads ×
2048² scores = 1.1 GiB) that is ~7× slower on this repo's 2-core CPU than PyTorch's fused kernel
(bench/README.md "Attention"). The "blocked" form:
- processes the batch in chunks by `lax.map` (a loop), so each chunk's scores stay within a few MiB
  (in cache) instead of being written out and read back;
- when one batch element's scores are already larger than that (long spatial sequences), the loop body
  takes the heads one by one and loops over blocks of query rows; each block's softmax is exact because a
  row's softmax only needs its own keys;
- lays products out (heads, queries, head_dim) so neither product needs the scores transposed;
- has a gradient (a custom VJP) that runs the same loops and recomputes each block's probabilities, as
  flash attention does, instead of saving every block's (queries × keys) probabilities.
The arithmetic is the same as the XLA form (float32 logits and softmax, probabilities cast to v's dtype
before the second product); results agree to float32 rounding (tests/test_attention_kernel.py).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

IMPLEMENTATIONS = ("auto", "blocked", "xla", "pallas_tpu", "cudnn")
_AUTO = {"cpu": "blocked", "tpu": "pallas_tpu", "gpu": "cudnn", "cuda": "cudnn"}

# Scores per loop iteration of the blocked form, in bytes of float32: small enough to stay in a core's
# L2/L3 share, large enough that the per-iteration overhead of the loop (tens of µs) is amortised.
# Measured on the bench shapes (bench/README.md); 1–16 MiB differ by < 30 %.
SCORE_BUDGET_BYTES = 4 << 20

# The TPU kernel: tiles are multiples of 128 tokens (the lane width); shorter sequences stay on XLA, and
# padding to the tile may waste at most this fraction per axis.
TPU_TILE = 128
TPU_MAX_PADDING = 0.25
# Block sizes tried from large to small: 512-token blocks keep the MXU busy with (512 × 64) · (64 × 512)
# products and the per-block VMEM small ((512 + 2·512) × 64 bf16 + a 512² float32 tile ≈ 1.2 MiB); a
# sequence that 512 does not divide takes 256 or 128 (SVD: 2048 → 512, 9216 → 512, 2304 → 256, 576 → 128
# after padding to 640). Chosen for the SVD shapes, not tuned on hardware (no TPU here).
TPU_BLOCKS = (512, 256, 128)


# name scope of the score and weighted-sum matmuls (q kᵀ, p v) of every attention: tables that follow profilers
# which do not see inside fused attention (DeepSpeed's, as MoViE counts) leave this scope out
ATTENTION_CORE_SCOPE = "attention_core"


@dataclasses.dataclass(frozen=True)
class AttentionForm:
    """How attention is computed; a static attribute of every attention layer (see the module docstring).

    mesh, batch_axes, head_axis: where the arrays live, for the Pallas kernel's `shard_map` — the batch
    dimension split over `batch_axes` (those of the mesh's axes that exist), heads over `head_axis` when it
    divides them. Without a mesh the kernel runs on the whole array (one device, or the abstract mesh of
    an enclosing `jax.sharding.use_mesh`).
    """

    implementation: str = "auto"
    platform: str | None = None  # target of "auto": cpu | gpu | tpu; None: JAX's default backend
    mesh: jax.sharding.Mesh | None = None
    batch_axes: tuple[str, ...] = ("data", "fsdp")
    head_axis: str | None = "tensor"

    def __post_init__(self):
        if self.implementation not in IMPLEMENTATIONS:
            raise ValueError(f"attention implementation must be one of {IMPLEMENTATIONS}, got "
                             f"{self.implementation!r}")

    def replace(self, **changes) -> "AttentionForm":
        return dataclasses.replace(self, **changes)

    def for_second_derivatives(self) -> "AttentionForm":
        """This form with the kernels that have no second derivative (the Pallas TPU kernel, cuDNN: their
        backward passes are custom calls) replaced by XLA's form — for attention that is differentiated
        twice, like the discriminator's under its R1 penalty."""
        impl = self.implementation
        if impl == "auto":
            impl = _AUTO.get(self.platform or jax.default_backend(), "xla")
        return self.replace(implementation="xla" if impl in ("pallas_tpu", "cudnn") else impl)


XLA = AttentionForm("xla")


def set_form(model, form: AttentionForm):
    """Sets `form` on every attention layer inside `model` (in place) and returns `model`."""
    if not isinstance(form, AttentionForm):
        raise TypeError(f"expected an AttentionForm, got {form!r}")
    from flax import nnx

    for _, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Module) and hasattr(node, "attention_form"):
            node.attention_form = form
    return model


def forms_in(model) -> set:
    """The distinct forms held by the attention layers of `model`."""
    from flax import nnx

    return {node.attention_form for _, node in nnx.iter_graph(model)
            if isinstance(node, nnx.Module) and hasattr(node, "attention_form")}


def form_for_mesh(implementation: str, mesh, **kwargs) -> AttentionForm:
    """The form for a step that runs on `mesh` (whose devices name the target platform — a TPU topology
    described on a CPU host included)."""
    platform = next(iter(mesh.devices.flat)).platform
    return AttentionForm(implementation, platform=platform, mesh=mesh, **kwargs)


def batch_split(x, form: AttentionForm):
    """`x` with its first (batch-like) dimension split over the form's batch axes of its mesh, when they divide
    it; unchanged without a mesh. The attention layers pin their inputs and outputs so: with FSDP the
    parameters are split over the same 'fsdp' axis as the batch, and XLA's sharding propagation left free
    chose to keep every device's activations for the WHOLE global batch (all-gathered) rather than gather
    the weights — measured: a micro step's temporaries per device grew 170 → 411 MB from 4 to 16 devices at
    one clip each, and SVD 1024×576 on v5e:8x8 planned 91 GiB per chip."""
    mesh = form.mesh
    axes = () if mesh is None else _batch_axes_dividing(mesh, form.batch_axes, x.shape[0])
    if not axes:
        return x
    from jax.sharding import NamedSharding, PartitionSpec as P

    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(axes, *([None] * (x.ndim - 1)))))


def _batch_axes_dividing(mesh, batch_axes: tuple[str, ...], n: int) -> tuple[str, ...]:
    """Those of `batch_axes` that the mesh has (size > 1), when together they divide a batch of `n`; else ()."""
    axes = tuple(a for a in batch_axes if a in mesh.shape and mesh.shape[a] > 1)
    return axes if n % math.prod(mesh.shape[a] for a in axes) == 0 else ()


# ---- the per-call decision -------------------------------------------------------------------------
def _padded(n: int) -> int:
    return -(-n // TPU_TILE) * TPU_TILE


def pallas_tpu_applies(q, k) -> bool:
    t, s = q.shape[1], k.shape[1]
    if min(t, s) < TPU_TILE or any(_padded(n) > (1 + TPU_MAX_PADDING) * n for n in (t, s)):
        return False
    d = q.shape[-1]
    return d <= TPU_TILE or d % TPU_TILE == 0  # the kernel's requirement on the head width


def cudnn_applies(q, k) -> bool:
    return q.dtype in (jnp.bfloat16, jnp.float16) and q.shape[-1] <= 128 and k.shape[1] > 1


def choose(form: AttentionForm, q, k) -> str:
    """The form that runs for these arrays: "blocked", "xla", "pallas_tpu" or "cudnn"."""
    impl = form.implementation
    if impl == "auto":
        impl = _AUTO.get(form.platform or jax.default_backend(), "xla")
    if impl == "pallas_tpu" and not pallas_tpu_applies(q, k):
        return "xla"
    if impl == "cudnn" and not cudnn_applies(q, k):
        return "xla"
    return impl


_records = None  # the list of an active `recording()`: (q shape, k shape, dtype, form) per traced call


@contextlib.contextmanager
def recording():
    """Collects the attention calls traced inside the block: a list of dicts (q, k shapes, dtype, form,
    count), one per distinct call. For reports only — the choice itself never depends on it."""
    global _records
    previous, _records = _records, []
    out = []
    try:
        yield out
    finally:
        counts = {}
        for entry in _records:
            counts[entry] = counts.get(entry, 0) + 1
        out.extend({"q": list(q), "k": list(k), "dtype": dtype, "form": form, "count": n}
                   for (q, k, dtype, form), n in counts.items())
        _records = previous


def dot_product_attention(q, k, v, scale: float, form: AttentionForm = AttentionForm()):
    """softmax(q kᵀ · scale) v; q (B, T, N, D), k and v (B, S, N, D) → (B, T, N, D)."""
    if q.ndim != 4 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"attention shapes must be q (B, T, N, D), k = v (B, S, N, D); got {q.shape}, {k.shape}, "
                         f"{v.shape}")
    chosen = choose(form, q, k)
    if _records is not None:
        _records.append((tuple(q.shape), tuple(k.shape), str(q.dtype), chosen))
    with jax.named_scope(ATTENTION_CORE_SCOPE):  # eval/flops can count (or leave out) q kᵀ and p v
        return _attention(q, k, v, scale, form, chosen)


def _attention(q, k, v, scale: float, form: AttentionForm, chosen: str):
    if chosen == "xla":
        return jax.nn.dot_product_attention(q, k, v, scale=scale)
    if chosen == "cudnn":
        return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation="cudnn")
    if chosen == "pallas_tpu":
        return pallas_tpu_attention(q, k, v, scale, form)
    return _blocked(q, k, v, scale)


# ---- TPU: the Pallas flash-attention kernel, per shard ----------------------------------------------
def _block(n: int) -> int:
    return next(b for b in TPU_BLOCKS if n % b == 0)


def _flash(q, k, v, scale: float):
    """The kernel on one shard: (B, T, N, D) arrays → heads-major (B, N, T, D), sequences padded to the
    tile with masked tokens, and back."""
    from jax.experimental.pallas.ops.tpu import flash_attention as fa

    b, t, _, _ = q.shape
    s = k.shape[1]
    tp, sp = _padded(t), _padded(s)
    heads_major = lambda x, n: jnp.pad(jnp.swapaxes(x, 1, 2), ((0, 0), (0, 0), (0, n - x.shape[1]), (0, 0)))
    qh, kh, vh = heads_major(q, tp), heads_major(k, sp), heads_major(v, sp)
    segments = None
    if (tp, sp) != (t, s):  # real tokens are segment 0, padding 1: real queries never see padded keys
        ids = lambda n, n_pad: jnp.broadcast_to((jnp.arange(n_pad) >= n).astype(jnp.int32), (b, n_pad))
        segments = fa.SegmentIds(q=ids(t, tp), kv=ids(s, sp))
    bq, bk = _block(tp), _block(sp)
    blocks = fa.BlockSizes(block_q=bq, block_k_major=bk, block_k=bk, block_b=1,
                           block_q_major_dkv=bq, block_k_major_dkv=bk, block_k_dkv=bk, block_q_dkv=bq,
                           block_k_major_dq=bk, block_k_dq=bk, block_q_dq=bq)
    out = fa.flash_attention(qh, kh, vh, segment_ids=segments, sm_scale=float(scale), block_sizes=blocks)
    return jnp.swapaxes(out[:, :, :t], 1, 2)


def pallas_tpu_attention(q, k, v, scale: float, form: AttentionForm = AttentionForm("pallas_tpu")):
    """The Pallas TPU kernel under `shard_map`: each device runs it on its block of the batch (and of the
    heads, when `form.head_axis` divides them). Without a mesh (in the form or the context) it runs on the
    whole arrays. Runs on a CPU only inside `jax.experimental.pallas.tpu.force_tpu_interpret_mode()`."""
    from jax.sharding import PartitionSpec as P

    mesh = form.mesh
    if mesh is None:
        abstract = jax.sharding.get_abstract_mesh()
        mesh = None if abstract.empty else abstract
    if mesh is None:
        return _flash(q, k, v, scale)
    # () when the batch does not split evenly: every device runs the whole of it
    batch_axes = _batch_axes_dividing(mesh, form.batch_axes, q.shape[0])
    head_axis = form.head_axis if form.head_axis in mesh.shape and mesh.shape[form.head_axis] > 1 else None
    if head_axis and q.shape[2] % mesh.shape[head_axis]:
        head_axis = None
    spec = P(batch_axes or None, None, head_axis, None)
    # check_vma=False: the kernel's custom call carries no varying-axes annotation for the checker
    return jax.shard_map(functools.partial(_flash, scale=scale), mesh=mesh, in_specs=(spec, spec, spec),
                         out_specs=spec, check_vma=False)(q, k, v)


# ---- CPU: the blocked form ----------------------------------------------------------------------------
def _accumulation_dtype(x):
    """float32 for bf16/fp16/float32 inputs; float64 stays float64 (a float32 softmax would cap a float64
    check of the whole UNet at float32 rounding, ~1e-7)."""
    return jnp.promote_types(x.dtype, jnp.float32)


def _probabilities(q, k, scale: float):
    """float32 (float64 for float64 inputs) softmax(scale · q kᵀ) of heads-major q (..., T, D) and
    k (..., S, D) → (..., T, S).

    A power-of-two scale (1/√64 = 1/8 in SVD) is applied to q, exactly and on the smaller array; any
    other scale to the float32 logits.
    """
    acc = _accumulation_dtype(q)
    if math.frexp(scale)[0] == 0.5:
        logits = jnp.einsum("...td,...sd->...ts", q * jnp.asarray(scale, q.dtype), k, preferred_element_type=acc)
    else:
        logits = jnp.einsum("...td,...sd->...ts", q, k, preferred_element_type=acc) * scale
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
    dprobs = jnp.einsum("...td,...sd->...ts", do, v, preferred_element_type=_accumulation_dtype(do))
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
    accumulate (in float32, float64 for float64) over its query blocks."""
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
                    return (acc[0] + dk.astype(acc[0].dtype), acc[1] + dv.astype(acc[1].dtype)), dq

                zeros = jnp.zeros(kh.shape, _accumulation_dtype(kh))
                blocks = (qh.reshape(t // size, size, -1), doh.reshape(t // size, size, -1))
                (dk, dv), dq = lax.scan(block, (zeros, zeros), blocks)
                dq, dk, dv = dq.reshape(t, -1), dk.astype(kh.dtype), dv.astype(vh.dtype)
            dqs.append(dq), dks.append(dk), dvs.append(dv)
        return tuple(jnp.stack(g, axis=1) for g in (dqs, dks, dvs))

    return lax.map(one_element, (q, k, v, do))


_blocked.defvjp(_blocked_fwd, _blocked_bwd)
