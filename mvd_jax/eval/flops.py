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


# ---- Clockwork: FLOPs of a sampled clip under a clock schedule --------------------------------------
def split_flops(unet, *, batch: int, frames: int, height: int, width: int, cut_level: int = 1,
                adaptors=()) -> dict:
    """FLOPs (paper convention) of one UNet evaluation of `batch` clips at a latent size, split where
    Clockwork cuts it (models/unet_split.py): {"forward": the plain forward, "high_in", "low", "high_out": its
    three parts, "adaptors": [one evaluation of each of `adaptors`, models/clockwork.py]}. The modules may
    be abstract (nnx.eval_shape); every count comes from a jaxpr on ShapeDtypeStructs (nothing runs)."""
    import jax.numpy as jnp
    from flax import nnx

    from mvd_jax.models.unet_split import forward_high_in, forward_high_out, forward_low

    c = unet.config
    graphdef, state = nnx.split(unet)
    S, f32 = jax.ShapeDtypeStruct, jnp.float32
    args = (S((batch, frames, height, width, c.in_channels), f32), S((batch,), f32),
            S((batch, 1, c.context_dims[0]), f32), S((batch, c.num_added_time_ids), f32))
    model = lambda st: nnx.merge(graphdef, st)
    high_in = lambda st, *a: forward_high_in(model(st), *a, cut_level=cut_level)
    low = lambda st, s: forward_low(model(st), s)
    high_out = lambda st, s, r: forward_high_out(model(st), s, r)
    count = lambda f, *a: float(jaxpr_flops(jax.make_jaxpr(f)(*a)))

    split_state = jax.eval_shape(high_in, state, *args)
    r_out = jax.eval_shape(low, state, split_state)
    counts = {"forward": count(lambda st, *a: model(st)(*a), state, *args), "high_in": count(high_in, state, *args),
              "low": count(low, state, split_state), "high_out": count(high_out, state, split_state, r_out)}
    counts["adaptors"] = []
    for adaptor in adaptors:
        if adaptor.config.cut_level != cut_level:
            raise ValueError(f"an adaptor for cut_level {adaptor.config.cut_level} given for a count at {cut_level}")
        a_graph, a_state = nnx.split(adaptor)
        adapt = lambda st, s, r: nnx.merge(a_graph, st)(s.r_in, r, s.emb, s.context)
        counts["adaptors"].append(count(adapt, a_state, split_state, r_out))
    return counts


def clock_flops(split: dict, adaptor_flops: float, *, steps: int, clock: int) -> dict:
    """FLOPs of `steps` sampler steps under the clock schedule (diffusion/samplers.clock_schedule), from
    `split_flops`' counts: a full step runs the three parts, an adaptor step the two high-resolution parts
    around one adaptor evaluation. (The sampler's own jaxpr cannot say it: the step's lax.cond counts at its
    costlier branch.) `plain`: the same steps with the plain UNet; `saving`: 1 − total/plain."""
    from mvd_jax.diffusion.samplers import clock_schedule

    full_steps = int(clock_schedule(steps, clock).sum())
    full_step = split["high_in"] + split["low"] + split["high_out"]
    adaptor_step = split["high_in"] + adaptor_flops + split["high_out"]
    total = full_steps * full_step + (steps - full_steps) * adaptor_step
    plain = steps * split["forward"]
    return {"steps": steps, "clock": clock, "full_steps": full_steps, "full_step": full_step,
            "adaptor_step": adaptor_step, "total": total, "plain": plain, "saving": 1.0 - total / plain}


def clockwork_flops(unet, adaptor, *, batch: int, frames: int, height: int, width: int, steps: int, clock: int,
                    guidance: bool = True) -> dict:
    """`clock_flops` of sampling `batch` clips with `adaptor` (guidance: each UNet evaluation sees 2·batch
    clips, [uncond, cond], as the sampler batches them)."""
    split = split_flops(unet, batch=batch * (2 if guidance else 1), frames=frames, height=height, width=width,
                        cut_level=adaptor.config.cut_level, adaptors=[adaptor])
    return clock_flops(split, split["adaptors"][0], steps=steps, clock=clock)
