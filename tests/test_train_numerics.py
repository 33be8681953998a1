"""The train step's numerical switches: rematerialisation changes memory, not numbers; bfloat16
activations keep float32 master weights and stay close to the float32 step."""
import dataclasses
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from mvd_jax.settings import latent_geometry, load_config, resolve, unet_config
from mvd_jax.train import sharding as shd
from mvd_jax.train.model_state import ParamCodec, build_unet, make_optimizer
from mvd_jax.train.trainer import build_programs

ROOT = Path(__file__).resolve().parents[1]


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


@pytest.fixture(scope="module")
def setup():
    cfg = resolve(load_config(str(ROOT / "configs" / "demo.py") + ":micro"))
    cfg.train.cond_dropout = 0.0
    # Adam's first update g/(|g| + ε) ≈ ±lr turns last-bit gradient differences into whole steps on
    # near-zero entries; ε = 1e-3 keeps the update linear in the gradient (as in test_train.py)
    cfg.optimizer.eps = 1e-3
    unet_cfg = dataclasses.replace(unet_config(cfg), num_frames=cfg.frames)
    factor, channels = latent_geometry(cfg)
    b, h, w = 2, cfg.height // factor, cfg.width // factor
    rng = np.random.default_rng(0)
    batch = {"latents": rng.standard_normal((b, cfg.frames, h, w, channels)).astype(np.float32),
             "cond_latent": rng.standard_normal((b, h, w, channels)).astype(np.float32),
             "image_embeds": rng.standard_normal((b, 1, unet_cfg.context_dims[0])).astype(np.float32),
             "added_time_ids": np.asarray([[6.0, 127.0, 0.02], [24.0, 30.0, 0.1]], np.float32)}
    unet = build_unet(unet_cfg, 0)
    params = {k: np.asarray(v) for k, v in ParamCodec(unet).to_dict(unet).items()}
    return cfg, unet_cfg, batch, params


def one_step(setup, **train):
    cfg, unet_cfg, batch, params = setup
    cfg = resolve(cfg)
    cfg.train.update(train)
    mesh = shd.make_mesh(dict(cfg.mesh))
    tx, schedule = make_optimizer(cfg.optimizer)
    programs = build_programs(cfg, nnx.eval_shape(lambda: build_unet(unet_cfg, 0)), mesh, None, tx, schedule)
    state = programs.init_state(jax.device_put(params))  # fresh arrays: the step donates its state
    batch = shd.global_batch(batch, mesh)
    state, metrics = programs.train_step(state, {}, batch)  # step 1: warm-up lr 0, Adam moments start
    state, _ = programs.train_step(state, {}, batch)  # step 2 moves the weights
    return jax.device_get(state["params"]), {k: float(v) for k, v in metrics.items()}


def test_remat_gives_the_same_step(setup):
    plain_params, plain = one_step(setup, remat=False)
    remat_params, remat = one_step(setup, remat=True)
    assert abs(remat["loss"] - plain["loss"]) <= 1e-6 * abs(plain["loss"])
    assert abs(remat["grad_norm"] - plain["grad_norm"]) <= 1e-5 * plain["grad_norm"]
    assert max(rel(remat_params[k], plain_params[k]) for k in plain_params) <= 1e-5


def test_bfloat16_activations_keep_float32_weights(setup):
    f32_params, f32 = one_step(setup, dtype="float32")
    bf16_params, bf16 = one_step(setup, dtype="bfloat16")
    assert all(v.dtype == np.float32 for v in bf16_params.values())
    assert np.isfinite(bf16["loss"]) and np.isfinite(bf16["grad_norm"])
    # bf16 keeps 8 bits of mantissa: the loss agrees to a few per mille, the update direction closely
    assert abs(bf16["loss"] - f32["loss"]) <= 2e-2 * f32["loss"], (bf16["loss"], f32["loss"])
    assert abs(bf16["grad_norm"] - f32["grad_norm"]) <= 0.1 * f32["grad_norm"]
    _, _, _, init = setup
    step_f32 = np.concatenate([(f32_params[k] - init[k]).ravel() for k in init])
    step_bf16 = np.concatenate([(bf16_params[k] - init[k]).ravel() for k in init])
    cosine = step_f32 @ step_bf16 / (np.linalg.norm(step_f32) * np.linalg.norm(step_bf16))
    assert cosine > 0.9, cosine
