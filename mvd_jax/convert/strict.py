"""Strict, generic checkpoint ↔ NNX mapping shared by every converter (UNet, VAE, CLIP, …).

A module whose NNX tree mirrors a PyTorch module's maps over mechanically:
  NNX path  down_blocks/0/resnets/0/conv1/kernel   ↔   PyTorch name  down_blocks.0.resnets.0.conv1.weight
with leaf renames (kernel→weight, scale→weight) and layout transposes (Linear (out,in)→(in,out);
Conv (out,in,*k)→(*k,in,out)). Loading is strict: any missing key, unexpected key or wrong shape is an
error that names every offending parameter with both shapes. Nothing is skipped or zero-filled
(except parameters a caller declares fresh, which get the caller's documented initial value).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mvd_jax.convert.safetensors_io import read_safetensors
from mvd_jax.errors import UserError

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")


class CheckpointMismatchError(UserError):
    """The checkpoint's parameters do not match the model (missing / unexpected / wrong shape)."""


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


# ---- strict loading ------------------------------------------------------------------------------
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

    Call check_tensors first. Absent names are taken from `fresh_value(name, torch_shape)`.
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


def module_to_tensors(model) -> dict[str, np.ndarray]:
    """torch-named, torch-layout float32 NumPy arrays of every parameter."""
    out = {}
    for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        name = diffusers_key(path)
        out[name] = np.ascontiguousarray(jax_to_torch_layout(str(path[-1]), np.asarray(jax.device_get(v[...]), np.float32)))
    return out


# ---- files ---------------------------------------------------------------------------------------
def refuse_pickle(path: Path):
    if path.suffix in PICKLE_SUFFIXES:
        raise UserError(f"{path}: only .safetensors checkpoints are read (pickle-based {path.suffix} files can run "
                        "code when loaded); convert it with diffusers' save_pretrained(safe_serialization=True)")


def folder_weights(folder: Path, weights_name: str) -> dict[str, np.ndarray]:
    """Tensors of a diffusers/transformers model folder: `weights_name` (e.g. diffusion_pytorch_model.safetensors
    or model.safetensors), its sharded index, or (diffusers) the fp16 variant."""
    single = folder / weights_name
    index = folder / (weights_name + ".index.json")
    fp16 = folder / weights_name.replace(".safetensors", ".fp16.safetensors")
    if single.is_file():
        return read_safetensors(single)
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{index} is not a valid sharded-checkpoint index (no weight_map)") from None
        tensors = {}
        for shard in sorted(set(weight_map.values())):
            tensors.update(read_safetensors(folder / shard))
        return tensors
    if fp16.is_file():
        return read_safetensors(fp16)
    if not folder.is_dir():
        raise UserError(f"model folder not found: {folder}")
    pickles = [p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if pickles:
        refuse_pickle(folder / pickles[0])
    raise UserError(f"{folder} has no {weights_name} (nor a sharded index or fp16 variant)")


def read_json_object(path: Path, expected_class: str | None = None) -> dict:
    """A JSON config file as a dict; with expected_class, its `_class_name` / `architectures` must match."""
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"config file {path} is not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise UserError(f"config file {path} must hold a JSON object")
    if expected_class is not None:
        found = d.get("_class_name") or (d.get("architectures") or [None])[0]
        if found is not None and found != expected_class:
            raise UserError(f"{path} describes a {found}, not a {expected_class}")
    return d
