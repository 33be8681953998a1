"""A model's parameters as a flat dict in PyTorch names and layouts, strictly checked both ways.

Every NNX module here mirrors a PyTorch module (diffusers' UNet and VAE, transformers' CLIP), so its
parameters map over mechanically:
  NNX path  down_blocks/0/resnets/0/conv1/kernel   ↔   PyTorch name  down_blocks.0.resnets.0.conv1.weight
with leaf renames (kernel→weight, scale→weight) and layout transposes (Linear (out,in)→(in,out);
Conv (out,in,*k)→(*k,in,out)). Filling a module is strict: any missing key, unexpected key or wrong
shape is an error that names every offending parameter with both shapes. Nothing is skipped or
zero-filled (except parameters a caller declares fresh, which get the caller's documented initial value).

This lives with the models, not the converters, because model surgery (funnels, low-rank factors,
pruning) edits the same flat dict and rebuilds the model from it; the converters (mvd_jax/convert/)
add only the files: reading checkpoints and writing folders.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mvd_jax.errors import UserError


class CheckpointMismatchError(UserError):
    """The tensors do not match the model (missing / unexpected / wrong shape)."""


# ---- name and layout mapping ---------------------------------------------------------------------
# NNX leaf names that PyTorch calls `weight`. Only `kernel`s change layout; norm scales and embedding
# tables (`embedding`, (num, dim) in both frameworks) do not.
_TORCH_LEAF = {"kernel": "weight", "scale": "weight", "embedding": "weight"}


def diffusers_key(path: tuple) -> str:
    """NNX state path → PyTorch (diffusers/transformers) parameter name."""
    *module, leaf = (str(p) for p in path)
    return ".".join([*module, _TORCH_LEAF.get(leaf, leaf)])


def torch_to_jax_layout(leaf: str, w: np.ndarray) -> np.ndarray:
    """Linear (out, in) → (in, out); conv (out, in, *k) → (*k, in, out); everything else unchanged."""
    if leaf != "kernel":
        return w
    return w.T if w.ndim == 2 else np.transpose(w, (*range(2, w.ndim), 1, 0))


def jax_to_torch_layout(leaf: str, w: np.ndarray) -> np.ndarray:
    if leaf != "kernel":
        return w
    n = w.ndim
    return w.T if n == 2 else np.transpose(w, (n - 1, n - 2, *range(n - 2)))


def torch_shape(path: tuple, jax_shape: tuple) -> tuple:
    return jax_to_torch_layout(str(path[-1]), np.empty(jax_shape, np.int8)).shape


# ---- strict filling ------------------------------------------------------------------------------
def abstract_module(cls, config):
    """`cls(config)` with ShapeDtypeStruct leaves: the parameter tree's shapes without memory."""
    return nnx.eval_shape(lambda: cls(config, rngs=nnx.Rngs(0)))


def expected_from_module(abstract) -> dict[str, tuple]:
    """PyTorch name → torch-layout shape of every nnx.Param of a module (abstract or concrete)."""
    return {diffusers_key(path): torch_shape(path, tuple(v.shape))
            for path, v in nnx.to_flat_state(nnx.state(abstract, nnx.Param))}


def check_tensors(tensors: dict, expected: dict[str, tuple], source: str, what: str,
                  fresh_prefixes: tuple[str, ...] = ()) -> None:
    """Raises CheckpointMismatchError naming every missing/unexpected/wrong-shaped parameter.

    `what` names the model in the message ("the UNet config"); parameters under `fresh_prefixes` may
    be absent (the caller initialises them).
    """
    missing = sorted(k for k in expected if k not in tensors and not k.startswith(fresh_prefixes))
    unexpected = sorted(k for k in tensors if k not in expected)
    wrong = sorted(k for k in expected if k in tensors and tuple(tensors[k].shape) != tuple(expected[k]))
    if not (missing or unexpected or wrong):
        return
    lines = [f"missing {k}: expected shape {list(expected[k])}" for k in missing]
    lines += [f"unexpected {k.removeprefix('<sgm>')}: shape {list(tensors[k].shape)}" for k in unexpected]
    lines += [f"wrong shape {k}: checkpoint {list(tensors[k].shape)}, model {list(expected[k])}" for k in wrong]
    summary = (f"checkpoint {source} does not match {what}: {len(missing)} missing, "
               f"{len(unexpected)} unexpected, {len(wrong)} wrong-shape parameters; first: {lines[0]}")
    raise CheckpointMismatchError("\n".join([summary, *lines]))


def module_from_tensors(abstract, tensors: dict, *, dtype=jnp.float32,
                        fresh_value: Callable[[str, tuple], np.ndarray] | None = None):
    """Fills an abstract module (from nnx.eval_shape) with torch-named, torch-layout tensors.

    Call check_tensors first (load_module does both). Absent names are taken from `fresh_value(name, torch_shape)`.
    """
    graphdef, state = nnx.split(abstract)
    pure = nnx.to_pure_dict(state)
    for path, var in nnx.to_flat_state(nnx.state(abstract, nnx.Param)):
        name = diffusers_key(path)
        raw = tensors[name] if name in tensors else fresh_value(name, torch_shape(path, tuple(var.shape)))
        value = jnp.asarray(torch_to_jax_layout(str(path[-1]), np.asarray(raw, dtype=np.float32)), dtype)
        node = pure
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = value
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)


def load_module(abstract, tensors: dict, *, source: str, what: str, dtype=jnp.float32,
                fresh_prefixes: tuple[str, ...] = (), fresh_value=None):
    """The strict load every model shares: check every name and shape against `abstract` (from
    abstract_module), then fill it. `what` names the model in the error ("the VAE config")."""
    check_tensors(tensors, expected_from_module(abstract), source, what, fresh_prefixes)
    return module_from_tensors(abstract, tensors, dtype=dtype, fresh_value=fresh_value)


def module_to_tensors(model) -> dict[str, np.ndarray]:
    """torch-named, torch-layout float32 NumPy arrays of every parameter."""
    out = {}
    for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        name = diffusers_key(path)
        out[name] = np.ascontiguousarray(jax_to_torch_layout(str(path[-1]), np.asarray(jax.device_get(v[...]), np.float32)))
    return out
