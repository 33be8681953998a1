"""Checkpoint import/export for the SVD UNet: diffusers folders/files and SGM single files ↔ NNX.

The NNX module mirrors diffusers' tree, so the mapping is mechanical:
  NNX path  down_blocks/0/resnets/0/spatial_res_block/conv1/kernel
  diffusers down_blocks.0.resnets.0.spatial_res_block.conv1.weight
with leaf renames (kernel→weight, scale→weight) and layout transposes (Linear (out,in)→(in,out);
Conv (out,in,*k)→(*k,in,out)). Loading is strict: any missing key, unexpected key or wrong shape
is an error that names every offending parameter with both shapes. Nothing is skipped or zero-filled.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mvd_jax.convert.safetensors_io import read_header, read_safetensors, write_safetensors
from mvd_jax.convert.sgm_names import SGM_PREFIX, diffusers_to_sgm
from mvd_jax.errors import UserError
from mvd_jax.models.unet import SpatioTemporalUNet
from mvd_jax.models.unet_config import UNetConfig

DIFFUSERS_CLASS = "UNetSpatioTemporalConditionModel"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
_PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")


class CheckpointMismatchError(UserError):
    """The checkpoint's parameters do not match the UNet config (missing / unexpected / wrong shape)."""


# ---- name and layout mapping ---------------------------------------------------------------------
def diffusers_key(path: tuple) -> str:
    """NNX state path → diffusers parameter name."""
    *module, leaf = (str(p) for p in path)
    leaf = {"kernel": "weight", "scale": "weight"}.get(leaf, leaf)
    return ".".join([*module, leaf])


def torch_to_jax_layout(name: str, w: np.ndarray) -> np.ndarray:
    if name.endswith(".weight") and w.ndim == 2:
        return w.T
    if name.endswith(".weight") and w.ndim >= 3:  # conv (out, in, *k) → (*k, in, out)
        return np.transpose(w, (*range(2, w.ndim), 1, 0))
    return w


def jax_to_torch_layout(name: str, w: np.ndarray) -> np.ndarray:
    if name.endswith(".weight") and w.ndim == 2:
        return w.T
    if name.endswith(".weight") and w.ndim >= 3:  # (*k, in, out) → (out, in, *k)
        n = w.ndim
        return np.transpose(w, (n - 1, n - 2, *range(n - 2)))
    return w


def torch_shape(name: str, jax_shape: tuple) -> tuple:
    return jax_to_torch_layout(name, np.empty(jax_shape, np.int8)).shape


def abstract_unet(config: UNetConfig) -> SpatioTemporalUNet:
    """The UNet with ShapeDtypeStruct leaves: shapes without memory."""
    return nnx.eval_shape(lambda: SpatioTemporalUNet(config, rngs=nnx.Rngs(0)))


def expected_parameters(config: UNetConfig) -> dict[str, tuple]:
    """diffusers name → torch-layout shape, for every parameter of the UNet built from `config`."""
    state = nnx.state(abstract_unet(config), nnx.Param)
    return {diffusers_key(path): torch_shape(diffusers_key(path), tuple(v.shape))
            for path, v in nnx.to_flat_state(state)}


# ---- config resolution ---------------------------------------------------------------------------
def resolve_config(config: Any) -> UNetConfig:
    if isinstance(config, UNetConfig):
        return config
    if isinstance(config, dict):
        return UNetConfig.from_dict(config)
    if isinstance(config, (str, os.PathLike)):
        return _read_diffusers_config(Path(config))
    raise UserError(f"config must be a UNetConfig, a dict or a path to config.json, not {type(config).__name__}")


def _read_diffusers_config(path: Path) -> UNetConfig:
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"config file {path} is not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise UserError(f"config file {path} must hold a JSON object")
    cls = d.get("_class_name")
    if cls is not None and cls != DIFFUSERS_CLASS:
        raise UserError(f"{path} describes a {cls}, not a {DIFFUSERS_CLASS} (SVD UNet)")
    return UNetConfig.from_dict(d)


# ---- reading checkpoints -------------------------------------------------------------------------
def _refuse_pickle(path: Path):
    if path.suffix in _PICKLE_SUFFIXES:
        raise UserError(f"{path}: only .safetensors checkpoints are read (pickle-based {path.suffix} files can run "
                        "code when loaded); convert it with diffusers' save_pretrained(safe_serialization=True)")


def _folder_weights(folder: Path) -> dict[str, np.ndarray]:
    """Tensors of a diffusers model folder: single file, sharded (index.json) or the fp16 variant."""
    single = folder / WEIGHTS_NAME
    index = folder / (WEIGHTS_NAME + ".index.json")
    fp16 = folder / "diffusion_pytorch_model.fp16.safetensors"
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
    pickles = [p.name for p in folder.iterdir() if p.suffix in _PICKLE_SUFFIXES]
    if pickles:
        _refuse_pickle(folder / pickles[0])
    raise UserError(f"{folder} has no {WEIGHTS_NAME} (nor a sharded index or fp16 variant)")


def _is_sgm(names) -> bool:
    return any(n.startswith(SGM_PREFIX) or n.startswith("input_blocks.") for n in names)


def read_unet_checkpoint(path, config=None) -> tuple[dict[str, np.ndarray], UNetConfig, str]:
    """Reads any supported UNet checkpoint into diffusers names and torch layouts.

    Returns (tensors, config, kind) where kind is "diffusers" or "sgm".
    `path`: a diffusers `unet/` folder (or a pipeline folder holding one), a diffusers-named
    .safetensors file (config from `config` or a config.json beside it), or an SGM single file
    (config from `config`, default: SVD's).
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    if path.is_dir():
        if not (path / "config.json").is_file() and (path / "unet" / "config.json").is_file():
            path = path / "unet"
        cfg = resolve_config(config) if config is not None else _read_diffusers_config(path / "config.json")
        return _folder_weights(path), cfg, "diffusers"

    _refuse_pickle(path)
    if path.suffix != ".safetensors":
        raise UserError(f"{path}: expected a .safetensors file or a diffusers folder")
    header, _, _ = read_header(path)
    if _is_sgm(header):
        cfg = resolve_config(config) if config is not None else UNetConfig()
        tensors = read_safetensors(path)
        if any(n.startswith(SGM_PREFIX) for n in tensors):  # a full SGM model: keep only the UNet
            tensors = {n[len(SGM_PREFIX):]: t for n, t in tensors.items() if n.startswith(SGM_PREFIX)}
        sgm_to_diffusers = {diffusers_to_sgm(k, cfg): k for k in expected_parameters(cfg)}
        renamed = {sgm_to_diffusers.get(n, f"<sgm>{n}"): t for n, t in tensors.items()}
        return renamed, cfg, "sgm"

    if config is None:
        beside = path.parent / "config.json"
        if not beside.is_file():
            raise UserError(f"{path} is a diffusers-named file without a config: pass config= or put config.json beside it")
        config = beside
    return read_safetensors(path), resolve_config(config), "diffusers"


# Parameters that MobileVD adds to an SVD UNet and that start from a fixed value rather than from the
# checkpoint: the temporal-gate importances (gates.py). A checkpoint may carry them (a run being
# resumed) or not (an SVD checkpoint entering the gate-learning stage).
_FRESH_PREFIXES = ("temporal_gates.",)


def _fresh_value(name: str, shape: tuple) -> np.ndarray:
    if name == "temporal_gates.logits":
        return np.zeros(shape, np.float32)  # all blocks equally important
    if name == "temporal_gates.scales":
        return np.ones(shape, np.float32)  # L1 baseline: every block fully on
    raise KeyError(name)


def check_parameters(tensors: dict[str, np.ndarray], config: UNetConfig, source: str) -> None:
    """Raises CheckpointMismatchError naming every missing/unexpected/wrong-shaped parameter."""
    expected = expected_parameters(config)
    missing = sorted(k for k in expected if k not in tensors and not k.startswith(_FRESH_PREFIXES))
    unexpected = sorted(k for k in tensors if k not in expected)
    wrong = sorted(k for k in expected if k in tensors and tuple(tensors[k].shape) != tuple(expected[k]))
    if not (missing or unexpected or wrong):
        return
    lines = [f"missing {k}: expected shape {list(expected[k])}" for k in missing]
    lines += [f"unexpected {k.removeprefix('<sgm>')}: shape {list(tensors[k].shape)}" for k in unexpected]
    lines += [f"wrong shape {k}: checkpoint {list(tensors[k].shape)}, model {list(expected[k])}" for k in wrong]
    summary = (f"checkpoint {source} does not match the UNet config: {len(missing)} missing, "
               f"{len(unexpected)} unexpected, {len(wrong)} wrong-shape parameters; first: {lines[0]}")
    raise CheckpointMismatchError("\n".join([summary, *lines]))


# ---- public API ----------------------------------------------------------------------------------
def unet_from_tensors(tensors: dict[str, np.ndarray], config: UNetConfig, *, source: str = "<tensors>",
                      dtype=jnp.float32) -> SpatioTemporalUNet:
    """Builds the UNet from diffusers-named, torch-layout tensors (strictly checked)."""
    check_parameters(tensors, config, source)
    abstract = abstract_unet(config)
    graphdef, state = nnx.split(abstract)
    pure = nnx.to_pure_dict(state)
    for path, var in nnx.to_flat_state(nnx.state(abstract, nnx.Param)):
        name = diffusers_key(path)
        raw = tensors[name] if name in tensors else _fresh_value(name, tuple(var.shape))
        value = jnp.asarray(torch_to_jax_layout(name, np.asarray(raw, dtype=np.float32)), dtype)
        node = pure
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = value
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)


def load_unet(path, config=None, *, dtype=jnp.float32) -> SpatioTemporalUNet:
    """Loads SVD UNet weights from a diffusers folder/file or an SGM single file (see read_unet_checkpoint)."""
    tensors, cfg, _ = read_unet_checkpoint(path, config)
    return unet_from_tensors(tensors, cfg, source=str(path), dtype=dtype)


def unet_to_tensors(model: SpatioTemporalUNet) -> dict[str, np.ndarray]:
    """diffusers-named, torch-layout float32 NumPy arrays of every parameter."""
    out = {}
    for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        name = diffusers_key(path)
        out[name] = np.ascontiguousarray(jax_to_torch_layout(name, np.asarray(jax.device_get(v[...]), np.float32)))
    return out


def save_unet_diffusers(model: SpatioTemporalUNet, out_dir) -> Path:
    """Writes `config.json` + `diffusion_pytorch_model.safetensors` that diffusers' from_pretrained loads."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {"_class_name": DIFFUSERS_CLASS, **model.config.to_diffusers_dict()}
    tmp = out_dir / (WEIGHTS_NAME + ".tmp")
    write_safetensors(tmp, unet_to_tensors(model), metadata={"format": "pt"})
    os.replace(tmp, out_dir / WEIGHTS_NAME)  # never leave a half-written weights file under the real name
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out_dir
