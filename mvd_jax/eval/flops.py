"""FLOPs of a JAX function, in the paper's convention and in XLA's.

Paper convention (MobileVD's TFLOPs, PyTorch's FlopCounterMode, DeepSpeed's profiler for matmuls):
2 FLOPs per multiply-add of every dense matmul and convolution, attention's QKᵀ and A·V included,
counted over the full (padded) window. We count it from the jaxpr, recursing into nested jaxprs
(jit, custom_jvp/vjp, remat, cond branches at their max, scan/while bodies × trip count when known).
No compilation and no weights are needed: the function is traced on ShapeDtypeStructs.

XLA's `cost_analysis()` is reported beside it. It also counts elementwise ops, but counts a conv only
over taps that hit the unpadded input, so at small feature maps it reads lower (see DESIGN.md).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import jax
from jax.extend import core as jex_core


def _dot_general_flops(eqn) -> int:
    lhs, rhs = (v.aval for v in eqn.invars)
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    batch = math.prod(lhs.shape[d] for d in lb)
    contract = math.prod(lhs.shape[d] for d in lc)
    lhs_free = math.prod(s for d, s in enumerate(lhs.shape) if d not in lc and d not in lb)
    rhs_free = math.prod(s for d, s in enumerate(rhs.shape) if d not in rc and d not in rb)
    return 2 * batch * contract * lhs_free * rhs_free


def _conv_flops(eqn) -> int:
    out = eqn.outvars[0].aval
    kernel = eqn.invars[1].aval
    dn = eqn.params["dimension_numbers"]
    out_features = kernel.shape[dn.rhs_spec[0]]  # rhs_spec = (out feature dim, in feature dim, *spatial)
    # Each output element costs (in_features/groups · kernel taps) multiply-adds = kernel.size / out_features.
    return 2 * math.prod(out.shape) * (math.prod(kernel.shape) // out_features)


def _sub_jaxprs(eqn):
    for v in eqn.params.values():
        for x in (v if isinstance(v, (list, tuple)) else (v,)):
            if isinstance(x, jex_core.ClosedJaxpr):
                yield x.jaxpr
            elif isinstance(x, jex_core.Jaxpr):
                yield x


def jaxpr_flops(jaxpr, scope: str | None = None, _inside: bool = False) -> int:
    """Dense matmul + conv FLOPs (2 per MAC) of a (Closed)Jaxpr, recursively.

    scope: count only equations under `jax.named_scope(scope)` (e.g. one temporal block).
    """
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0
    for eqn in jaxpr.eqns:
        inside = _inside or scope is None or scope in str(eqn.source_info.name_stack).split("/")
        sub = lambda j: jaxpr_flops(j, scope, inside)
        name = eqn.primitive.name
        if name == "dot_general":
            total += _dot_general_flops(eqn) if inside else 0
        elif name == "conv_general_dilated":
            total += _conv_flops(eqn) if inside else 0
        elif name == "cond":
            total += max(sub(b) for b in eqn.params["branches"])
        elif name == "scan":
            total += eqn.params["length"] * sub(eqn.params["jaxpr"])
        elif name == "while":
            # Trip count is data-dependent; count one body iteration (callers needing more use scan).
            total += sub(eqn.params["body_jaxpr"]) + sub(eqn.params["cond_jaxpr"])
        else:
            total += sum(sub(j) for j in _sub_jaxprs(eqn))
    return total


def count_flops(fn: Callable, *args: Any) -> dict[str, float]:
    """{'flops': paper-convention count, 'xla_flops': XLA cost analysis} of fn(*args).

    args may be ShapeDtypeStructs (nothing is allocated, nothing is compiled).
    """
    paper = jaxpr_flops(jax.make_jaxpr(fn)(*args))
    cost = jax.jit(fn).lower(*args).cost_analysis()
    if isinstance(cost, (list, tuple)):  # older JAX returned one dict per device
        cost = cost[0]
    return {"flops": float(paper), "xla_flops": float(cost.get("flops", float("nan")))}


def temporal_block_flops(config, frames: int, height: int, width: int) -> dict[str, float]:
    """FLOPs (paper convention) of each temporal block of one UNet forward at a latent size, from one trace;
    the cost order behind models/gates.py's SVD_BLOCKS_BY_COST."""
    import jax.numpy as jnp
    from flax import nnx

    from mvd_jax.models.gates import temporal_block_names
    from mvd_jax.models.resnet import temporal_block_scope
    from mvd_jax.models.unet_tensors import abstract_unet

    graphdef, state = nnx.split(abstract_unet(config))
    f32 = jnp.float32
    args = (jax.ShapeDtypeStruct((1, frames, height, width, config.in_channels), f32),
            jax.ShapeDtypeStruct((1,), f32), jax.ShapeDtypeStruct((1, 1, config.context_dims[0]), f32),
            jax.ShapeDtypeStruct((1, config.num_added_time_ids), f32))
    jaxpr = jax.make_jaxpr(lambda st, *a: nnx.merge(graphdef, st)(*a))(state, *args)
    names = temporal_block_names(config)
    return {n: float(jaxpr_flops(jaxpr, temporal_block_scope(i))) for i, n in enumerate(names)
            if n not in config.pruned_temporal_blocks}
