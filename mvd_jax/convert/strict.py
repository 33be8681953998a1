"""The files side of every converter (UNet, VAE, CLIP): reading model folders, refusing pickles, and the
one atomic save all three use.

The name/layout mapping and the strict load (every missing, unexpected or wrong-shaped parameter named
with both shapes) are the models' own (models/tensors.py, re-exported here): model surgery uses them too.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from mvd_jax.convert.safetensors_io import read_safetensors, write_safetensors
from mvd_jax.errors import UserError
from mvd_jax.models.tensors import (  # noqa: F401  (re-exported: the converters' names for them)
    CheckpointMismatchError,
    abstract_module,
    expected_from_module,
    load_module,
    module_to_tensors,
)

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")


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


def resolve_config(config, cls, expected_class: str):
    """`config` as a `cls` (a config dataclass with `from_dict`): itself, a dict of diffusers' keys, or a path
    to a config.json (whose `_class_name` must be `expected_class`)."""
    if isinstance(config, cls):
        return config
    if isinstance(config, dict):
        return cls.from_dict(config)
    if isinstance(config, (str, os.PathLike)):
        return cls.from_dict(read_json_object(Path(config), expected_class))
    raise UserError(f"config must be a {cls.__name__}, a dict or a path to config.json, not {type(config).__name__}")


def save_module(model, folder, weights_name: str, config: dict, *, float16: bool = False) -> Path:
    """Writes `config` as config.json and the model's parameters (torch names and layouts) as `weights_name`,
    the folder diffusers'/transformers' from_pretrained reads; `float16`: half the bytes, under diffusers'
    fp16-variant name (x.fp16.safetensors, which from_pretrained(variant="fp16") and `folder_weights` read).
    The weights go to a temporary name first and are renamed into place, so a crash never leaves a
    half-written file under the real name."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = module_to_tensors(model)
    if float16:
        weights_name = weights_name.replace(".safetensors", ".fp16.safetensors")
        tensors = {k: v.astype(np.float16) for k, v in tensors.items()}
    tmp = folder / (weights_name + ".tmp")
    write_safetensors(tmp, tensors, metadata={"format": "pt"})
    os.replace(tmp, folder / weights_name)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder
