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
import time

import jax
import jax.numpy as jnp
from flax import nnx

from mvd_jax.config import unet_config
from mvd_jax.errors import UserError
from mvd_jax.train import sharding as shd
from mvd_jax.train.compile_report import compiled_report
from mvd_jax.train.config import latent_geometry, resolve


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


def compile_train_step(config, devices=None) -> dict:
    """Lowers and compiles the diffusion train step of `config` on `devices` (default: this host's).

    Returns a report: per-device memory/FLOPs from the compiler, the jaxpr FLOPs of the whole step,
    parameter counts, mesh, batch and the seconds lowering and compiling took.
    """
    from mvd_jax.eval.flops import jaxpr_flops
    from mvd_jax.train.model_state import build_unet, make_optimizer
    from mvd_jax.train.trainer import build_programs

    cfg = resolve(config)
    t = cfg.train
    devices = list(jax.devices() if devices is None else devices)
    mesh = shd.make_mesh(dict(cfg.mesh), devices)
    shd.check_batch(t.batch_size, mesh, 1)
    unet_cfg = dataclasses.replace(unet_config(cfg), num_frames=cfg.frames)
    _, channels = latent_geometry(cfg)
    if unet_cfg.in_channels != 2 * channels or unet_cfg.out_channels != channels:
        raise UserError(f"the UNet takes {unet_cfg.in_channels} channels in and {unet_cfg.out_channels} out; the "
                        f"autoencoder gives {channels}-channel latents (in = 2·{channels}, out = {channels})")
    tx, schedule = make_optimizer(cfg.optimizer)
    programs = build_programs(cfg, nnx.eval_shape(lambda: build_unet(unet_cfg, 0)), mesh, None, tx, schedule)
    shapes = programs.codec.shapes()
    trainable = {k: shapes[k] for k in programs.train_keys}
    state = _with(jax.eval_shape(programs.init_state, trainable), programs.state_shardings)
    frozen = _with({k: shapes[k] for k in programs.frozen_keys}, programs.frozen_shardings)
    batch = abstract_batch(cfg, unet_cfg, t.batch_size, mesh)

    t0 = time.perf_counter()
    lowered = programs.train_step.lower(state, frozen, batch)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    step_flops = jaxpr_flops(jax.make_jaxpr(programs.train_step)(state, frozen, batch).jaxpr)
    count = lambda keys: int(sum(shapes[k].size for k in keys))  # noqa: E731
    return {
        **compiled_report(compiled),
        "jaxpr_flops_per_step": float(step_flops),
        "devices": len(devices),
        "device_kind": devices[0].device_kind,
        "mesh": {a: int(n) for a, n in mesh.shape.items()},
        "batch_size": int(t.batch_size),
        "frames": int(cfg.frames), "height": int(cfg.height), "width": int(cfg.width),
        "remat": bool(t.remat), "dtype": t.dtype, "trainable": t.trainable,
        "trainable_params": count(programs.train_keys), "frozen_params": count(programs.frozen_keys),
        "lower_s": t1 - t0, "compile_s": t2 - t1,
    }
