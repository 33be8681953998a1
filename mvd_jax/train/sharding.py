"""The device mesh and where every array lives on it.

Mesh axes ('data', 'fsdp', 'tensor'); sizes from the config, one of them may be −1 (= the devices
left over). Batches are split over ('data', 'fsdp'). Parameters carry logical axis names (models/
layers.py: embed, mlp, heads, conv_in, conv_out, norm); the config's rules map each name to a mesh
axis (or none). A parameter dimension whose size the mesh axis does not divide stays replicated
(e.g. a 3-channel conv_in on a 4-way FSDP axis): sharding is a placement choice, never an error.
"""
from __future__ import annotations

import math

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mvd_jax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# FSDP shards the input side of every weight; tensor parallelism the output/hidden side.
DEFAULT_RULES = (
    ("embed", "fsdp"), ("conv_in", "fsdp"),
    ("mlp", "tensor"), ("heads", "tensor"), ("conv_out", "tensor"),
    ("norm", None),
)


def mesh_shape(sizes: dict, num_devices: int) -> tuple[int, ...]:
    """Resolves −1 and checks that the mesh uses exactly the devices there are."""
    unknown = sorted(set(sizes) - set(MESH_AXES))
    if unknown:
        raise UserError(f"unknown mesh axes {unknown}; the mesh axes are {MESH_AXES}")
    shape = [int(sizes.get(a, 1)) for a in MESH_AXES]
    free = [i for i, s in enumerate(shape) if s == -1]
    if len(free) > 1 or any(s == 0 or s < -1 for s in shape):
        raise UserError(f"mesh sizes must be positive with at most one −1, got {dict(zip(MESH_AXES, shape))}")
    known = math.prod(s for s in shape if s != -1)
    if free:
        if num_devices % known:
            raise UserError(f"mesh {dict(zip(MESH_AXES, shape))} does not divide the {num_devices} devices")
        shape[free[0]] = num_devices // known
    if math.prod(shape) != num_devices:
        raise UserError(f"mesh {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} devices, "
                        f"there are {num_devices}")
    return tuple(shape)


def make_mesh(sizes: dict, devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(sizes, len(devices))
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


# The model batch (encoded latents): its arrays and their ranks; every phase's step takes this structure.
MODEL_BATCH_RANKS = {"latents": 5, "cond_latent": 4, "image_embeds": 3, "added_time_ids": 2}


def model_batch_shardings(mesh: Mesh) -> dict:
    """Each model-batch array split over the batch axes."""
    return {k: batch_sharding(mesh, n) for k, n in MODEL_BATCH_RANKS.items()}


def param_shardings(codec, keys, mesh: Mesh, rules=DEFAULT_RULES, prefix: str = "") -> dict:
    """NamedShardings of a ParamCodec's flat parameters `keys` (from their logical axes), keyed prefix + key."""
    rules = dict(rules)
    logical, shapes = codec.logical_axes(), codec.shapes()
    return {prefix + k: NamedSharding(mesh, _spec(shapes[k].shape, logical[k], mesh, rules)) for k in keys}


def data_parallel_size(mesh: Mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


def check_batch(global_batch: int, mesh: Mesh, process_count: int) -> int:
    """The per-host batch; errors when the batch does not split over the data axes or the hosts."""
    dp = data_parallel_size(mesh)
    if global_batch % dp:
        raise UserError(f"batch size {global_batch} is not divisible by the data-parallel mesh size {dp} "
                        f"(data {mesh.shape['data']} × fsdp {mesh.shape['fsdp']})")
    if global_batch % process_count:
        raise UserError(f"batch size {global_batch} is not divisible by the {process_count} processes")
    return global_batch // process_count


def _spec(shape, logical, mesh: Mesh, rules: dict) -> P:
    if logical is None:
        return P()
    axes, used = [], set()
    for size, name in zip(shape, logical):
        axis = rules.get(name)
        if axis is None or axis in used or size % mesh.shape[axis]:
            axes.append(None)
        else:
            axes.append(axis)
            used.add(axis)
    return P(*axes)


def state_shardings(state, mesh: Mesh, rules=DEFAULT_RULES):
    """NamedShardings for an nnx.State (abstract or concrete), from each Variable's logical axes."""
    rules = dict(rules)

    def one(v):
        logical = v.get_metadata().get("out_sharding") if isinstance(v, nnx.Variable) else None
        shape = v.shape if hasattr(v, "shape") else np.shape(v[...])
        return NamedSharding(mesh, _spec(shape, logical, mesh, rules))

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def global_batch(local: dict, mesh: Mesh) -> dict:
    """Per-host NumPy arrays → global jax.Arrays split over the batch axes (hosts' blocks side by side)."""
    return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(v)), np.asarray(v))
            for k, v in local.items()}


# XLA:TPU's windowed einsum ("collective matmul") splits an FSDP all-gather or reduce-scatter into a loop of
# collective-permutes overlapped with slices of the matmul. Its buffers grow with the FSDP width (TPU
# compiles from this host, fast compile, one clip per chip): the micro UNet's step at 256×512 planned 1.50 GiB
# of temporaries per chip on v5e:2x2 and 2.62 on v5e:2x4 with it, 1.39 and 1.40 without; SVD 1024×576 on
# v5e:2x4 40.2 GiB per chip with it, 14.23 without (the state halves from 4 chips, the temporaries 10.00 →
# 11.36 GiB). On four chips it is a wash (without / with: SVD 512×256 9.58 / 9.80 GiB, SVD 1024×576 15.72 /
# 15.81, MobileVD 6.66 / 6.65, MobileVD-HD 13.96 / 13.11, adversarial 12.10 / 12.65). Off by default
# (train.tpu_collective_matmul=False): the memory per chip then falls as the slice grows, as FSDP promises,
# instead of rising; the all-gathers stay asynchronous and XLA's scheduler still overlaps them with other
# layers' compute. Turn it on where a 4-chip plan has room and the overlap is wanted.
_NO_COLLECTIVE_MATMUL = {"xla_tpu_enable_windowed_einsum_for_all_gather": False,
                         "xla_tpu_enable_windowed_einsum_for_reduce_scatter": False}


def step_compiler_options(mesh: Mesh, collective_matmul: bool) -> dict:
    """XLA options for a train step compiled for `mesh`'s devices: TPU targets without collective matmul
    unless asked (see above); other platforms have no such option and get none."""
    platform = next(iter(mesh.devices.flat)).platform
    return {} if platform != "tpu" or collective_matmul else dict(_NO_COLLECTIVE_MATMUL)
