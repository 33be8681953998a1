"""The adversarial phase of the trainer (train/adversarial.py): the discriminator's backbone stays
frozen with no optimizer state while every head learns; a fixed generator leaves G untouched; kill -9
and resume is bit-identical, as in the diffusion phase. (Loss pieces, σ sets and the discriminator
itself: test_discriminator.py.)"""
import dataclasses
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from mvd_jax.settings import latent_geometry, load_config, resolve, unet_config
from mvd_jax.train import sharding as shd
from mvd_jax.train.adversarial import DISCRIMINATOR_PREFIX
from mvd_jax.train.metrics import read_metrics
from mvd_jax.train.model_state import build_unet
from mvd_jax.train.trainer import make_programs

ROOT = Path(__file__).resolve().parents[1]
SMALL_D = ["--config.adversarial.discriminator.head_channels=32", "--config.adversarial.discriminator.cond_dim=32",
           "--config.adversarial.discriminator.norm_groups=8"]


def adversarial_config(**train):
    cfg = resolve(load_config(str(ROOT / "configs" / "demo.py") + ":micro"))
    cfg.train.phase = "adversarial"
    cfg.train.update(train)
    cfg.adversarial.discriminator.update(head_channels=32, cond_dim=32, norm_groups=8)
    cfg.optimizer.warmup_steps = 1
    return cfg


def synthetic_batch(cfg, unet_cfg, b=2):
    factor, channels = latent_geometry(cfg)
    h, w = cfg.height // factor, cfg.width // factor
    rng = np.random.default_rng(0)
    return {"latents": rng.standard_normal((b, cfg.frames, h, w, channels)).astype(np.float32),
            "cond_latent": rng.standard_normal((b, h, w, channels)).astype(np.float32),
            "image_embeds": rng.standard_normal((b, 1, unet_cfg.context_dims[0])).astype(np.float32),
            "added_time_ids": np.tile(np.asarray([[6.0, 127.0, 0.02]], np.float32), (b, 1))}


def opt_state_keys(opt_state) -> set:
    keys = set()
    for path, _ in jax.tree_util.tree_leaves_with_path(opt_state):
        keys |= {p.key for p in path if isinstance(getattr(p, "key", None), str)}
    return keys


@pytest.mark.parametrize("trainable", ["all", "none", "gated", "d_warmup"])
def test_backbone_is_frozen_and_every_head_learns(trainable):
    if trainable == "d_warmup":  # D learns alone for the first 2 steps: G, EMA, G's optimizer state held
        cfg = adversarial_config(trainable="all")
        cfg.adversarial.d_warmup_steps = 2
    elif trainable == "gated":  # the gate-learning stage trains under this objective: its importances must move
        cfg = adversarial_config(trainable="all", gate_keep=3)
        cfg.model.temporal_gating = "sampled"
    else:
        cfg = adversarial_config(trainable=trainable)
    unet_cfg = dataclasses.replace(unet_config(cfg), num_frames=cfg.frames)
    mesh = shd.make_mesh(dict(cfg.mesh))
    programs = make_programs(cfg, nnx.eval_shape(lambda: build_unet(unet_cfg, 0)), mesh, None)
    start, frozen = programs.initial_arrays(build_unet(unet_cfg, 0))
    backbone = {k: v for k, v in frozen.items() if k.startswith(DISCRIMINATOR_PREFIX)}
    assert backbone and not any(k.startswith("heads/") for k in start["generator"])
    # the backbone is the starting UNet's encoder: same names, same weights
    unet_params = programs.codec.to_dict(build_unet(unet_cfg, 0))
    for k, v in backbone.items():
        np.testing.assert_array_equal(v, unet_params[k[len(DISCRIMINATOR_PREFIX) + len("backbone/"):]])

    state = programs.init_state(jax.device_put(start, programs.trainable_shardings))
    g_opt_start = jax.device_get(state["opt_state"])
    frozen_dev = jax.device_put(frozen, programs.frozen_shardings)
    # optimizer state exists for the heads and the generator's trainable set only
    assert opt_state_keys(state["d_opt_state"]) <= set(start["discriminator"])
    assert not any(k.startswith(DISCRIMINATOR_PREFIX) for k in opt_state_keys(state["opt_state"]))
    batch = shd.global_batch(synthetic_batch(cfg, unet_cfg), mesh)
    for _ in range(2):  # step 1 runs at warm-up learning rate 0; step 2 moves the weights
        state, metrics = programs.train_step(state, frozen_dev, batch)
    assert bool(metrics["finite"]) and 0.0 <= float(metrics["d_accuracy"]) <= 1.0
    heads_after = jax.device_get(state["d_params"])
    unchanged = [k for k in heads_after if np.array_equal(heads_after[k], start["discriminator"][k])]
    assert not unchanged, f"heads without a gradient: {unchanged[:5]}"
    for k, v in jax.device_get(frozen_dev).items():  # the frozen dict (D's backbone included) is untouched
        np.testing.assert_array_equal(v, frozen[k])
    g_after = jax.device_get(state["params"])
    if trainable == "none":
        assert g_after == {} and set(frozen) >= set(unet_params)
    elif trainable == "d_warmup":
        for k in g_after:
            np.testing.assert_array_equal(g_after[k], start["generator"][k])
            np.testing.assert_array_equal(jax.device_get(state["ema"][k]), start["generator"][k])
        jax.tree.map(np.testing.assert_array_equal, jax.device_get(state["opt_state"]), g_opt_start)
        assert float(metrics["lr"]) == 0.0
        for _ in range(2):  # then G's own schedule starts: its step 1 at warm-up lr 0, step 2 moves it
            state, metrics = programs.train_step(state, frozen_dev, batch)
        assert float(metrics["lr"]) > 0.0
        g_after = jax.device_get(state["params"])
        assert any(not np.array_equal(g_after[k], start["generator"][k]) for k in g_after)
    else:
        assert any(not np.array_equal(g_after[k], start["generator"][k]) for k in g_after)
    if trainable == "gated":
        logits = "temporal_gates/logits"
        assert not np.array_equal(g_after[logits], start["generator"][logits]), "no gradient reached the gates"


# ---- kill -9 and resume --------------------------------------------------------------------------
def cli(env, workdir, *extra, popen=False):
    args = [sys.executable, "-m", "mvd_jax.train", f"--config={ROOT / 'configs' / 'demo.py'}:micro",
            f"--workdir={workdir}", "--config.train.phase=adversarial", "--config.train.log_every=1",
            "--config.train.checkpoint_every=3", "--config.train.sample_at_end=False", "--config.train.steps=9",
            *SMALL_D, *extra]
    if popen:
        return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def logged(workdir) -> dict:
    return {m["step"]: (m["loss"], m["d_loss"]) for m in read_metrics(workdir)}


def test_kill_9_then_resume_is_bit_identical(env, tmp_path):
    from test_train import restore_params

    cli(env, tmp_path / "reference")
    killed = tmp_path / "killed"
    proc = cli(env, killed, popen=True)
    t0 = time.time()
    while not (killed / "checkpoints" / "3").is_dir() or max(logged(killed) or [0]) < 4:
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() - t0 < 600
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert max(logged(killed)) < 9, "the run ended before it could be killed"
    again = cli(env, killed)
    assert "resumed from step" in again.stdout
    reference = logged(tmp_path / "reference")
    last = read_metrics(tmp_path / "reference")[-1]  # interval means of the swinging per-step values
    assert 0.0 <= last["d_accuracy_avg"] <= 1.0 and {"loss_avg", "d_loss_avg", "g_adversarial_avg"} <= set(last)
    for step, values in logged(killed).items():
        assert values == reference[step], step
    _, a = restore_params(tmp_path / "reference")
    _, b = restore_params(killed)
    for part in ("params", "ema", "d_params"):
        for k in a["train"][part]:
            np.testing.assert_array_equal(a["train"][part][k], b["train"][part][k])
