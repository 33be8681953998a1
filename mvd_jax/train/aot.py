"""Compile the real train step for a set of devices without running it (ahead of time).

The step is the trainer's own (`trainer.build_programs`: same loss, optimizer, shardings, donation,
remat); only its inputs are abstract — `jax.ShapeDtypeStruct`s carrying the shardings the trainer would
give the arrays — so nothing is allocated and no weights are needed. The devices can be this host's
(CPU, `--xla_force_host_platform_device_count` to simulate a mesh) or a TPU topology described on a
CPU host by libtpu (`jax.experimental.topologies`), which is how a user learns whether a config fits a
pod before renting it.

Reported: the compiler's per-device memory plan (train/compile_report.py), XLA's per-device FLOPs, and
the step's FLOPs counted from its jaxpr in the paper's convention (2·MACs of every conv and matmul,
global over the batch) — the figure to trust where XLA's count is off (DESIGN.md: windowed FSDP
einsums on TPU).
"""
from __future__ import annotations

import dataclasses
import math
import re
import resource
import time

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax.sharding import Mesh

from mvd_jax.errors import UserError
from mvd_jax.models import attention_kernel
from mvd_jax.train import sharding as shd
from mvd_jax.train.compile_report import compiled_report
from mvd_jax.settings import latent_geometry, resolve, unet_config


def abstract_batch(cfg, unet_cfg, batch_size: int, mesh) -> dict:
    """The global batch the step sees (encoded latents, as from the latent cache), abstract and sharded."""
    factor, channels = latent_geometry(cfg)
    if cfg.height % factor or cfg.width % factor:
        raise UserError(f"height/width {cfg.height}×{cfg.width} must be multiples of the autoencoder's factor {factor}")
    h, w = cfg.height // factor, cfg.width // factor
    f32 = jnp.float32
    shapes = {"latents": (batch_size, cfg.frames, h, w, channels), "cond_latent": (batch_size, h, w, channels),
              "image_embeds": (batch_size, 1, unet_cfg.context_dims[0]),
              "added_time_ids": (batch_size, unet_cfg.num_added_time_ids)}
    return {k: jax.ShapeDtypeStruct(s, f32, sharding=shd.batch_sharding(mesh, len(s))) for k, s in shapes.items()}


def _with(abstract: dict, shardings: dict):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def tpu_topology_devices(topology_name: str, *, chip_config_name: str, chips_per_host_bounds=(2, 2, 1),
                         num_slices: int = 1) -> list:
    """The devices of a TPU topology (e.g. 'v5e:4x4', 'v5:2x2x2') described by libtpu on THIS host, which
    needs no TPU: they can be compiled for, not run on. `chip_config_name` is 'default' for v5e/v6e and
    'megacore' for v4/v5p. Raises UserError when libtpu is not installed."""
    import os

    from jax.experimental import topologies

    # libtpu takes /tmp/libtpu_lockfile so that two processes never drive the same chips; describing a
    # topology drives none (the backend stays CPU), so concurrent compiles on one host are safe.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        desc = topologies.get_topology_desc(
            platform="tpu", topology_name=topology_name, chip_config_name=chip_config_name,
            chips_per_host_bounds=tuple(chips_per_host_bounds), num_slices=num_slices,
            wrap=(False,) * len(tuple(chips_per_host_bounds)))
    except Exception as e:  # no libtpu: "Unknown backend tpu" / plugin not found; bad names: XlaRuntimeError
        import importlib.util

        if importlib.util.find_spec("libtpu") is None:
            raise UserError("compiling for a TPU topology needs libtpu on this host: pip install libtpu==0.0.42.1 "
                            "(the release paired with jax 0.10.2)") from e
        raise UserError(f"libtpu could not describe TPU topology {topology_name!r} ×{num_slices}: "
                        f"{str(e).splitlines()[0]}") from e
    return list(desc.devices)


def device_mesh(sizes: dict, devices, num_slices: int = 1) -> Mesh:
    """The config's ('data', 'fsdp', 'tensor') mesh laid out on `devices` the way the interconnect wants:
    `mesh_utils.create_device_mesh` for one slice (TPU devices in physical order, axes may split physical
    ones), and for several slices `create_hybrid_device_mesh` with the slices along 'data' — only
    data-parallel gradients cross the slower data-centre network; FSDP and tensor groups stay in a slice."""
    from jax.experimental import mesh_utils

    devices = list(devices)
    shape = shd.mesh_shape(dict(sizes), len(devices))
    if num_slices > 1:
        if shape[0] % num_slices:
            raise UserError(f"with {num_slices} slices mesh.data must be a multiple of {num_slices} (the slices "
                            f"split the data axis; fsdp and tensor stay inside a slice), got mesh "
                            f"{dict(zip(shd.MESH_AXES, shape))}")
        ici = (shape[0] // num_slices, *shape[1:])
        array = mesh_utils.create_hybrid_device_mesh(ici, (num_slices, 1, 1), devices,
                                                     allow_split_physical_axes=True)
    else:
        array = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    return Mesh(array, shd.MESH_AXES)


def compile_train_step(config, devices=None, *, mesh: Mesh | None = None, compile: bool = True) -> dict:
    """Lowers and compiles the diffusion train step of `config` on `devices` (default: this host's), or on
    a ready `mesh` (e.g. `device_mesh(...)` over a TPU topology).

    Returns a report: per-device memory/FLOPs from the compiler, the jaxpr FLOPs of the whole step,
    parameter counts, mesh, batch and the seconds lowering and compiling took. When the TPU compiler
    refuses because the plan exceeds the chip's HBM, the report has instead what it said
    (`oom_used_bytes`, `oom_capacity_bytes`, `compile_error`) and the arguments' bytes per device
    computed from the shardings. compile=False skips lowering and compiling (an SVD-size step takes tens
    of minutes and >20 GB of host RAM to compile for TPU): the report then holds the arguments' bytes per
    device from the shardings and the jaxpr FLOPs only (`planned_only`: True).
    """
    from mvd_jax.eval.flops import jaxpr_flops
    from mvd_jax.train.model_state import build_unet
    from mvd_jax.train.trainer import make_programs

    from mvd_jax.settings import edits_images

    cfg = resolve(config)
    t = cfg.train
    if edits_images(cfg) or t.phase == "guidance_distill":
        raise UserError(f"train_compile sizes the video UNet's phases; train.phase {t.phase!r} "
                        f"({'the image-editing UNet' if edits_images(cfg) else 'a student and its teacher'}) is not "
                        "supported by it yet")
    if mesh is None:
        devices = list(jax.devices() if devices is None else devices)
        mesh = shd.make_mesh(dict(cfg.mesh), devices)
    devices = list(mesh.devices.flat)
    shd.check_batch(t.batch_size, mesh, len({d.process_index for d in devices}))  # the hosts the devices sit on
    if (t.batch_size // t.grad_accum) % shd.data_parallel_size(mesh):
        raise UserError(f"the micro-batch {t.batch_size // t.grad_accum} (batch_size / grad_accum) is not divisible "
                        f"by the data-parallel mesh size {shd.data_parallel_size(mesh)}")
    unet_cfg = dataclasses.replace(unet_config(cfg), num_frames=cfg.frames)
    _, channels = latent_geometry(cfg)
    if unet_cfg.in_channels != 2 * channels or unet_cfg.out_channels != channels:
        raise UserError(f"the UNet takes {unet_cfg.in_channels} channels in and {unet_cfg.out_channels} out; the "
                        f"autoencoder gives {channels}-channel latents (in = 2·{channels}, out = {channels})")
    # the phase's own programs (diffusion or adversarial), as the trainer builds them
    unet_abstract = nnx.eval_shape(lambda: build_unet(unet_cfg, 0))
    programs = make_programs(cfg, unet_abstract, mesh, None)
    state = _with(jax.eval_shape(programs.init_state, programs.abstract_trainable), programs.state_shardings)
    frozen = _with(programs.abstract_frozen, programs.frozen_shardings)
    batch = abstract_batch(cfg, unet_cfg, t.batch_size, mesh)

    argument_bytes = float(sum(_bytes_per_device(a) for a in jax.tree.leaves((state, frozen, batch))))
    # The attention form is the target's: make_programs builds it from the mesh's devices (a TPU topology's
    # devices say "tpu" although this host's backend is the CPU); recorded per shape for the report.
    t0 = time.perf_counter()
    if not compile:
        with attention_kernel.recording() as forms:
            jax.make_jaxpr(programs.train_step)(state, frozen, batch)
        compiler, t1 = {"argument_bytes": argument_bytes, "planned_only": True}, time.perf_counter()
    else:
        with attention_kernel.recording() as forms:
            lowered = programs.train_step.lower(state, frozen, batch)
        t1 = time.perf_counter()
        try:
            compiler = compiled_report(lowered.compile(programs.compiler_options))
        except Exception as e:  # the TPU compiler refuses a plan larger than the chip's HBM
            oom = parse_hbm_oom(str(e))
            if oom is None:
                raise
            compiler = {"argument_bytes": argument_bytes, "oom_used_bytes": oom[0], "oom_capacity_bytes": oom[1],
                        "compile_error": str(e).strip().splitlines()[0][:500]}
        del lowered
    t2 = time.perf_counter()
    # The paper's convention counts attention's QKᵀ and A·V, which the Pallas kernel (or a cuDNN call) hides
    # from the jaxpr counter inside its custom call: count the same step traced with XLA's form (same math).
    counting = ml_collections.ConfigDict(cfg.to_dict())
    counting.train.attention = "xla"
    counted = make_programs(counting, unet_abstract, mesh, None)
    step_flops = jaxpr_flops(jax.make_jaxpr(counted.train_step)(state, frozen, batch).jaxpr)
    count = lambda tree: int(sum(x.size for x in jax.tree.leaves(tree)))  # noqa: E731
    return {
        **compiler,
        "jaxpr_flops_per_step": float(step_flops),
        "devices": len(devices),
        "device_kind": devices[0].device_kind,
        "mesh": {a: int(n) for a, n in mesh.shape.items()},
        "batch_size": int(t.batch_size), "grad_accum": int(t.grad_accum),
        "frames": int(cfg.frames), "height": int(cfg.height), "width": int(cfg.width),
        "remat": bool(t.remat), "dtype": t.dtype, "tpu_collective_matmul": bool(t.tpu_collective_matmul),
        "compiler_options": programs.compiler_options, "trainable": t.trainable,
        "phase": t.phase, "attention": forms,
        "trainable_params": count(programs.abstract_trainable), "frozen_params": count(programs.abstract_frozen),
        "lower_s": t1 - t0, "compile_s": t2 - t1,
        # what the compile cost this host: the process's peak resident memory so far (Linux reports KiB)
        "host_peak_rss_bytes": float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024),
    }


# The TPU compiler's two ways of refusing a plan beyond the chip's HBM (libtpu 0.0.42): after memory-space
# assignment ("Ran out of memory in memory space hbm. Used 20.5G of 15.75G hbm") and, earlier, when the
# temporaries alone are too large ("the total memory required for HLO temporaries (22.46G) exceeds
# available HBM (15.75G)")
_OOM = (re.compile(r"Used ([\d.]+)([KMGT]?) of ([\d.]+)([KMGT]?) hbm", re.IGNORECASE),
        re.compile(r"required for HLO temporaries \(([\d.]+)([KMGT]?)\) exceeds available HBM \(([\d.]+)([KMGT]?)\)",
                   re.IGNORECASE))
_UNIT = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}


def parse_hbm_oom(message: str):
    """(used, usable) bytes per chip from the TPU compiler's out-of-HBM errors (see _OOM; for the second
    form "used" is the temporaries alone), or None for any other message."""
    m = next((m for m in (p.search(message) for p in _OOM) if m), None)
    if not m:
        return None
    return float(m.group(1)) * _UNIT[m.group(2).upper()], float(m.group(3)) * _UNIT[m.group(4).upper()]


def _bytes_per_device(a: jax.ShapeDtypeStruct) -> float:
    """Bytes of one device's shard of a sharded abstract array."""
    return float(math.prod(a.sharding.shard_shape(a.shape))) * a.dtype.itemsize
