"""The one-step UNet as a chain of graphs: for a UNet too large to convert as one graph on the exporting
host (TensorFlow's converter needs ≈ 23 bytes per parameter, ≈ 24 GB for MobileVD's 1.01 B; export/README.md),
the phone runs N `.tflite` files in a row, each a run of consecutive blocks of the same forward:

    part 1       noise, cond_latent, image_embeds, added_time_ids → emb, hidden_1, skip_0 … (the ones it made)
    part k       hidden_{k−1}, emb, the skips its up blocks read, image_embeds (if it has cross-attention)
                 → hidden_k and the skips it made that later parts read
    part N       … and noise → x0

The cuts fall between the UNet's steps (SpatioTemporalUNet.step_names: down_blocks.i, mid_block,
up_blocks.i; begin joins the first part, finish the last) so that the parts' largest parameter count is
as small as N contiguous runs allow (`plan_parts`). The forward is the very one `SpatioTemporalUNet.__call__`
runs (begin → step … → finish), so the composed parts equal the single graph's function;
tests/test_export.py holds the JAX parts equal and the TFLite chain equal to the one-graph export.

Tensor names are global across the chain: each is made by one part and read, by name, by later ones
(`UNetChain.wiring`). A tensor is passed only to the parts that read it — a skip made by part 1 and read by
part 4 skips parts 2 and 3 — so no part has an output that is merely one of its inputs. Everything
crossing a cut is float32 NHWC with the frames folded into the batch, (B·T_level, h, w, C); `emb` is (B, Ct).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from mvd_jax.diffusion import edm
from mvd_jax.errors import UserError
from mvd_jax.export.functions import (ExportFunction, Input, _split, dotted_name, one_step_constants,
                                      one_step_inputs, one_step_output, unet_step)

# The largest graph the exporter converts in one piece by default: the converter's process peaks near 0.6 GB +
# 23 bytes per parameter (bench/export_memory.py, export/README.md), ≈ 10 GB here, so an export fits a 16 GB
# host beside the exporting process; a larger UNet becomes a chain.
MAX_GRAPH_PARAMS = 400_000_000
BEGIN_PARAMS = ("conv_in", "time_embedding", "add_embedding", "guidance_embedding")  # the forward's `begin`
FINISH_PARAMS = ("conv_norm_out", "conv_out")  # its `finish`


def step_params(unet) -> dict[str, int]:
    """Parameters per step of the forward (begin's and finish's counted with the first and last step)."""
    from flax import nnx

    counts = dict.fromkeys(unet.step_names, 0)
    first, last = unet.step_names[0], unet.step_names[-1]
    for path, leaf in jax.tree_util.tree_flatten_with_path(nnx.state(unet, nnx.Param))[0]:
        name = ".".join(dotted_name(path).split(".")[:2])
        top = name.split(".")[0]
        step = name if name in counts else top if top in counts else first if top in BEGIN_PARAMS else \
            last if top in FINISH_PARAMS else None
        if step is None:
            raise AssertionError(f"parameter {name} belongs to no step of the forward")
        counts[step] += int(np.prod(leaf.shape))
    return counts


def plan_parts(counts: dict[str, int], parts: int) -> list[tuple[str, ...]]:
    """The steps (in order) cut into `parts` contiguous runs with the smallest possible largest parameter
    count (the converter's memory follows a graph's parameters). Exact: a binary search over that largest
    count, each candidate checked greedily."""
    names, sizes = list(counts), list(counts.values())
    if not 1 <= parts <= len(names):
        raise UserError(f"the UNet has {len(names)} blocks; it can be cut into 1 to {len(names)} parts, not {parts}")

    def runs(limit):
        out, current, total = [], [], 0
        for name, n in zip(names, sizes):
            if current and total + n > limit:
                out.append(tuple(current))
                current, total = [], 0
            current.append(name)
            total += n
        return out + [tuple(current)]

    lo, hi = max(sizes), sum(sizes)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if len(runs(mid)) <= parts else (mid + 1, hi)
    best = runs(lo)
    # the greedy cut may use fewer runs than asked for: split the largest runs further (never raises the max)
    while len(best) < parts:
        i = max((j for j in range(len(best)) if len(best[j]) > 1), key=lambda j: sum(counts[s] for s in best[j]))
        run = best[i]
        cut = min(range(1, len(run)), key=lambda c: max(sum(counts[s] for s in run[:c]),
                                                         sum(counts[s] for s in run[c:])))
        best[i:i + 1] = [run[:cut], run[cut:]]
    return best


def parts_for(counts: dict[str, int], max_part_params: int) -> int:
    """The fewest parts whose largest stays within `max_part_params` (1 when the whole UNet does). A block
    larger than that (SVD's up_blocks.1: 490 M) is a part of its own, and the limit rises to it."""
    max_part_params = max(max_part_params, *counts.values())
    for parts in range(1, len(counts) + 1):
        if max(sum(counts[s] for s in run) for run in plan_parts(counts, parts)) <= max_part_params:
            return parts
    return len(counts)


@dataclasses.dataclass
class UNetChain:
    """The UNet step as parts. `full` is the single-graph function (the reference the chain is verified
    against), `parts` the links in order, `wiring` {tensor name: (maker, [readers])} with maker −1 for the
    step's own inputs."""

    full: ExportFunction
    parts: list[ExportFunction]
    steps: list[tuple[str, ...]]
    wiring: dict[str, tuple[int, list[int]]]

    def run_jax(self, inputs: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Every part's outputs (JAX), each part fed by name from the step's inputs and earlier outputs."""
        tensors, outputs = dict(inputs), []
        for part in self.parts:
            out = part.reference({i.name: tensors[i.name] for i in part.inputs})
            tensors.update(out)
            outputs.append(out)
        return outputs


def unet_step_chain(unet, *, parts: int, frames: int, latent_height: int, latent_width: int, batch: int = 1,
                    sigma_max: float = edm.SIGMA_MAX) -> UNetChain:
    """`functions.unet_step` of a UNet in inference form, cut into `parts` graphs (`plan_parts`)."""
    full = unet_step(unet, frames=frames, latent_height=latent_height, latent_width=latent_width, batch=batch,
                     sigma_max=sigma_max)
    steps = plan_parts(step_params(unet), parts)
    k = one_step_constants(sigma_max)
    step_inputs = {i.name: i for i in full.inputs}

    # The state after begin and after every step, abstractly: the shapes crossing each cut and the skip stack's
    # depth (down blocks only push, up blocks only pop: skip j is the j-th pushed, at stack position j).
    rebuild_all, params_all = _split(unet)

    def trajectory(params, noise, cond_latent, image_embeds, added_time_ids):
        model = rebuild_all(params)
        state = model.begin(*one_step_inputs(k, noise, cond_latent, image_embeds, added_time_ids))
        states = [state]
        for name in model.step_names:
            state = model.step(name, state)
            states.append(state)
        return states

    abstract = jax.eval_shape(trajectory, [jax.ShapeDtypeStruct(p.shape, p.dtype) for p in params_all],
                              *[jax.ShapeDtypeStruct(i.shape, i.dtype) for i in full.inputs])
    del params_all
    depth = [len(s.skips) for s in abstract]  # after begin, after step 1, …
    skip_shapes = {}
    for s in abstract:
        for j, skip in enumerate(s.skips):
            skip_shapes[j] = skip.shape
    emb_shape, x_shapes = abstract[0].emb.shape, [s.x.shape for s in abstract]

    functions, wiring = [], {name: (-1, []) for name in step_inputs}
    position = 0  # steps done before the current part
    for p, run in enumerate(steps):
        first, last = p == 0, p == len(steps) - 1
        start, end = position, position + len(run)  # the part runs steps start … end−1
        d_start = 0 if first else depth[start]  # skip stack depth when the part starts (before begin for part 1)
        d_end = depth[end]
        d_min = min([d_start, *depth[start + 1:end + 1]]) if not first else 0
        read_skips = list(range(d_min, d_start))  # pushed before, popped here
        made_skips = list(range(d_start, d_end))  # pushed here, alive after
        keep_prefixes = tuple(run) + (BEGIN_PARAMS if first else ()) + (FINISH_PARAMS if last else ())

        candidates = []  # (name, shape, doc)
        if first:
            candidates += [(i.name, i.shape, i.doc) for i in full.inputs]
        else:
            candidates += [(f"hidden_{p}", x_shapes[start], f"the activation after part {p}"),
                           ("emb", emb_shape, "time + added-time-ids embedding (part 1's output)")]
            candidates += [(f"skip_{j}", skip_shapes[j], "a skip connection, as a down block made it")
                           for j in read_skips]
            candidates += [("image_embeds", step_inputs["image_embeds"].shape, step_inputs["image_embeds"].doc)]
            if last:
                candidates += [("noise", step_inputs["noise"].shape, step_inputs["noise"].doc)]
        out_names = (["x0"] if last else [f"hidden_{p + 1}"]) + [f"skip_{j}" for j in made_skips] + \
            (["emb"] if first and not last else [])

        fn, rebuild_params = _part_fn(unet, keep_prefixes, run, first=first, last=last, k=k, frames=frames,
                                      read_skips=read_skips, d_start=d_start, skip_shapes=skip_shapes,
                                      in_names=[c[0] for c in candidates], out_names=out_names)
        used, returned = _used_inputs(fn, rebuild_params, [c[1] for c in candidates])
        if returned != sorted(out_names):  # (the trace also stands for ExportFunction.check)
            raise AssertionError(f"part {p + 1} returns {returned}, declared {sorted(out_names)}")
        inputs = tuple(Input(n, tuple(shape), doc) for (n, shape, doc), u in zip(candidates, used) if u)
        if first and len(inputs) != len(full.inputs):
            raise AssertionError("the first part must read every input of the step")
        call = _with_inputs(fn, [c[0] for c in candidates], [i.name for i in inputs],
                            {n: shape for n, shape, _ in candidates})
        # outputs in JAX's order of a dict's keys (sorted), which is the order the function returns them in
        f = ExportFunction(f"unet_step_part{p + 1}of{len(steps)}", call, rebuild_params, inputs, tuple(sorted(out_names)),
                           sampler=None)
        for i in inputs:
            wiring[i.name][1].append(p)
        for o in out_names:
            wiring[o] = (p, [])
        functions.append(f)
        position = end

    chain = UNetChain(full, functions, steps, wiring)
    for p, f in enumerate(functions):
        # random inputs of a link: the JAX chain's intermediates on the step's random inputs (int8 calibration)
        f.sampler = (lambda p: lambda rng: _link_inputs(chain, p, full.sampler(rng)))(p)
    return chain


def _link_inputs(chain: UNetChain, p: int, step_inputs: dict) -> dict:
    tensors = dict(step_inputs)
    for part in chain.parts[:p]:
        tensors.update(part.reference({i.name: tensors[i.name] for i in part.inputs}))
    return {i.name: tensors[i.name] for i in chain.parts[p].inputs}


def _part_fn(unet, keep_prefixes, run, *, first, last, k, frames, read_skips, d_start, skip_shapes, in_names,
             out_names):
    """(fn(params, *candidate inputs) → {output: array} for the steps `run`, its parameters). The function must
    not hold its parameters itself: ExportFunction.release_params has to be able to let them go."""
    rebuild, params = _split(unet, keep=lambda path: path.startswith(tuple(p + "." for p in keep_prefixes)))
    from mvd_jax.models.unet import ForwardState

    def fn(params, *args):
        model = rebuild(params)
        x_in = dict(zip(in_names, args))
        if first:
            state = model.begin(*one_step_inputs(k, x_in["noise"], x_in["cond_latent"], x_in["image_embeds"],
                                                 x_in["added_time_ids"]))
        else:
            emb = x_in["emb"]
            b = emb.shape[0]
            # skips below the ones this part reads: only their shapes matter (an up block upsamples to the
            # size of the next skip), so placeholders stand in for them
            skips = tuple(x_in[f"skip_{j}"] if j in read_skips else jax.ShapeDtypeStruct(skip_shapes[j], jnp.float32)
                          for j in range(d_start))
            state = ForwardState(x_in[next(n for n in in_names if n.startswith("hidden_"))], skips, emb,
                                 x_in["image_embeds"][:, None, :], jnp.zeros((b, frames), jnp.float32), None)
        for name in run:
            state = model.step(name, state)
        out = {}
        for name in out_names:
            if name == "x0":
                out[name] = one_step_output(k, x_in["noise"], model.finish(state))
            elif name.startswith("hidden_"):
                out[name] = state.x
            elif name == "emb":
                out[name] = state.emb
            else:
                out[name] = state.skips[int(name.split("_")[1])]
        return out

    return fn, params


def _used_inputs(fn, params, shapes) -> tuple[list[bool], list[str]]:
    """(which of fn's non-parameter arguments its traced program needs, the names of its outputs): JAX's
    dead-code elimination on the jaxpr (an input that only feeds computations whose results are dropped
    counts as unused)."""
    from jax._src.interpreters import partial_eval as pe  # dce_jaxpr: no public name in jax 0.10

    closed, out = jax.make_jaxpr(fn, return_shape=True)(
        [jax.ShapeDtypeStruct(p.shape, p.dtype) for p in params], *[jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes])
    _, used = pe.dce_jaxpr(closed.jaxpr, [True] * len(closed.jaxpr.outvars))
    return list(used[len(params):]), list(out)


def _with_inputs(fn, all_names, used_names, shapes):
    """fn(params, *all candidates) as a function of the used inputs only (unused ones are never read)."""
    def call(params, *args):
        given = dict(zip(used_names, args))
        return fn(params, *[given[n] if n in given else jnp.zeros(shapes[n], jnp.float32) for n in all_names])

    return call
