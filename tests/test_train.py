"""The trainer: 1 device = 8 simulated devices = 2 processes × 4 devices; kill -9 and resume is bit-exact;
SIGTERM saves and exits 0; the loss falls on a fixed batch of real clips; EMA follows its recursion;
bad settings fail clearly. All runs use configs/demo.py:micro (the cheapest model with every block kind:
XLA's CPU compile time dominates these tests) and share compiled programs through a persistent cache."""
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mvd_jax.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
DRIVER = str(ROOT / "tests" / "train_driver.py")


def driver(env, settings, devices=1):
    e = dict(env, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return subprocess.Popen([sys.executable, DRIVER, json.dumps(settings)], env=e, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc, timeout=900):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out


def losses(workdir) -> dict:
    return {m["step"]: m["loss"] for m in read_metrics(workdir)}


def load_params(path) -> dict:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


CLI = [sys.executable, "-m", "mvd_jax.train", f"--config={ROOT / 'configs' / 'demo.py'}:micro",
       "--config.train.log_every=1", "--config.train.checkpoint_every=3", "--config.train.sample_at_end=False"]


def cli(env, workdir, *extra, popen=False):
    args = [*CLI, f"--workdir={workdir}", *extra]
    if popen:
        return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)


def wait_for_step(workdir, step, proc, timeout=600):
    t0 = time.time()
    while time.time() - t0 < timeout:
        done = max(losses(workdir) or [0])
        if done >= step:
            return done
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.05)
    raise AssertionError("the run made no progress")


@pytest.fixture(scope="module")
def uninterrupted(env, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    proc = cli(env, workdir, "--config.train.steps=12")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


def restore_params(workdir):
    import jax
    import orbax.checkpoint as ocp

    from mvd_jax.train.checkpoint import state_metadata

    mgr = ocp.CheckpointManager(Path(workdir) / "checkpoints", item_names=("state", "data"))
    step = mgr.latest_step()
    meta = state_metadata(Path(workdir) / "checkpoints", step)
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta, is_leaf=lambda x: hasattr(x, "shape"))
    out = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(item=meta, restore_args=args)))
    mgr.close()
    return step, jax.tree.map(np.asarray, out.state)


def test_kill_9_then_resume_is_bit_identical(env, uninterrupted, tmp_path):
    proc = cli(env, tmp_path, "--config.train.steps=12", popen=True)
    wait_for_step(tmp_path, 4, proc)
    while not (tmp_path / "checkpoints" / "3").is_dir():  # the step-3 checkpoint is complete
        assert proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(losses(tmp_path))
    assert killed_at < 12, "the run ended before it could be killed"
    again = cli(env, tmp_path, "--config.train.steps=12")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from step" in again.stdout
    reference = losses(uninterrupted)
    for m in read_metrics(tmp_path):  # every logged step, before and after the kill, equals the reference
        assert m["loss"] == reference[m["step"]], m["step"]
    assert max(losses(tmp_path)) == 12
    step_a, a = restore_params(uninterrupted)
    step_b, b = restore_params(tmp_path)
    assert step_a == step_b == 12
    for key in a["train"]["params"]:
        np.testing.assert_array_equal(a["train"]["params"][key], b["train"]["params"][key])
        np.testing.assert_array_equal(a["train"]["ema"][key], b["train"]["ema"][key])


def test_sigterm_saves_and_exits_0(env, tmp_path):
    proc = cli(env, tmp_path, "--config.train.steps=1000", popen=True)
    wait_for_step(tmp_path, 2, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    step = max(losses(tmp_path))
    assert step < 1000 and "SIGTERM: saved step" in out + err
    assert (tmp_path / "checkpoints" / str(step)).is_dir()


def test_resuming_with_an_incompatible_config_is_refused(env, uninterrupted, tmp_path):
    import shutil

    shutil.copytree(uninterrupted / "checkpoints", tmp_path / "checkpoints")
    proc = cli(env, tmp_path, "--config.train.steps=13", "--config.model.layers_per_block=2")
    assert proc.returncode == 2
    assert "incompatible config" in proc.stderr and "layers_per_block 1 → 2" in proc.stderr


def test_loss_falls_on_a_fixed_batch_and_ema_follows_its_recursion(tmp_path):
    """200 steps on one batch of real clips (the demo videos) with the micro model."""
    import dataclasses

    import jax
    from flax import nnx

    from mvd_jax.settings import load_config, resolve, unet_config
    from mvd_jax.train import sharding as shd
    from mvd_jax.train.model_state import build_unet, make_optimizer
    from mvd_jax.train.trainer import _next_batch, build_autoencoder, build_programs, make_data

    cfg = resolve(load_config(str(ROOT / "configs" / "demo.py") + ":micro"))
    unet_cfg = dataclasses.replace(unet_config(cfg), num_frames=cfg.frames)
    mesh = shd.make_mesh(dict(cfg.mesh))
    encoders = build_autoencoder(cfg)
    tx, schedule = make_optimizer(cfg.optimizer)
    programs = build_programs(cfg, nnx.eval_shape(lambda: build_unet(unet_cfg, 0)), mesh, encoders, tx, schedule)
    params = programs.codec.to_dict(build_unet(unet_cfg, 0))
    state = programs.init_state(params)
    loader, _ = make_data(cfg, cfg.train.batch_size, tmp_path)
    batch = _next_batch(iter(loader), mesh, programs, jax.device_put(nnx.state(encoders)), 0, False)

    decay = cfg.optimizer.ema_decay
    ema = {k: np.asarray(v, np.float64) for k, v in params.items()}
    loss_history = []
    for n in range(200):
        state, metrics = programs.train_step(state, {}, batch)
        loss_history.append(float(metrics["loss"]))
        now = jax.device_get(state["params"])
        d = min(decay, (1 + n) / (10 + n))  # the EMA's warm-up (diffusers' EMAModel): 0.1 at the first update
        ema = {k: d * ema[k] + (1 - d) * np.asarray(now[k], np.float64) for k in ema}
    first, last = np.mean(loss_history[:10]), np.mean(loss_history[-10:])
    print(f"denoising loss: first 10 steps {first:.4f}, last 10 steps {last:.4f}")
    assert last < 0.5 * first, (first, last)
    got = jax.device_get(state["ema"])
    assert max(rel(got[k], ema[k]) for k in ema) <= 1e-5
    # after 200 steps at decay 0.99 the EMA lags the weights: it is neither the raw weights nor the init
    lag = max(rel(got[k], now[k]) for k in ema)
    assert lag > 1e-3


def test_bad_settings_fail_clearly(tmp_path):
    from mvd_jax.settings import load_config
    from mvd_jax.errors import UserError
    from mvd_jax.train.sharding import check_batch, make_mesh, mesh_shape
    from mvd_jax.train.trainer import train

    config = load_config(str(ROOT / "configs" / "demo.py") + ":micro")
    bad = config.copy_and_resolve_references()
    bad.train.lr = 0.1
    with pytest.raises(UserError, match="unknown key.*'train'.*lr"):
        train(bad, tmp_path / "a")
    with pytest.raises(UserError, match="does not divide the 8 devices"):
        mesh_shape({"data": 3, "fsdp": -1}, 8)
    with pytest.raises(UserError, match="needs 8 devices, there are 4"):
        mesh_shape({"data": 2, "fsdp": 2, "tensor": 2}, 4)
    with pytest.raises(UserError, match="unknown mesh axes"):
        mesh_shape({"model": 2}, 2)
    mesh = make_mesh({"data": -1})
    assert check_batch(4, mesh, 1) == 4
    fake = type("M", (), {"shape": {"data": 2, "fsdp": 4, "tensor": 1}})()  # only the mesh's shape is read
    with pytest.raises(UserError, match="batch size 6 is not divisible by the data-parallel mesh size 8"):
        check_batch(6, fake, 1)
    bad = config.copy_and_resolve_references()
    bad.mesh.data = 3
    with pytest.raises(UserError, match="mesh"):
        train(bad, tmp_path / "b")


def test_pixel_scaling_factor_scales_the_latents_only():
    """autoencoder.pixel_scaling_factor multiplies the diffusion latents as SVD's VAE scaling factor does; the
    conditioning latent stays unscaled (SVD's convention), and latents / factor decode back to the video."""
    import jax
    import jax.numpy as jnp

    from mvd_jax.data.encode import encode_clips
    from mvd_jax.settings import load_config, resolve
    from mvd_jax.train.trainer import build_autoencoder

    video = jax.random.uniform(jax.random.key(0), (2, 3, 32, 64, 3), minval=-1.0, maxval=1.0)
    args = (video, jnp.array([7.0, 7.0]), jnp.array([127, 127]), jnp.array([0.02, 0.02]),
            jax.random.split(jax.random.key(1), 2))
    encoded = {}
    for factor in (1.0, 2.0):
        cfg = load_config(str(ROOT / "configs" / "demo.py") + ":micro")
        cfg.autoencoder.pixel_scaling_factor = factor
        autoencoder, image_encoder = build_autoencoder(resolve(cfg))
        encoded[factor] = encode_clips(autoencoder, image_encoder, *args)
        z = encoded[factor]["latents"][0] / autoencoder.config.scaling_factor
        np.testing.assert_allclose(np.asarray(autoencoder.decode(z, 3)), np.asarray(video[0]), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(encoded[2.0]["latents"]), 2 * np.asarray(encoded[1.0]["latents"]))
    np.testing.assert_array_equal(np.asarray(encoded[2.0]["cond_latent"]), np.asarray(encoded[1.0]["cond_latent"]))


def test_pixel_basis_whitens_blocks_and_the_autoencoder_inverts_it_exactly(tmp_path):
    """data/pixel_basis.py + autoencoder.pixel_basis: on blocks with strongly correlated pixels (as real video's),
    the fitted basis gives latents of mean 0 and identity covariance (float64, exact up to the eigen-solver), the
    autoencoder's encode equals (v − mean) @ encode on its blocks in the raw-block channel order, decode inverts
    it, and the trainer builds it from the .npz (a wrong shape is a clear error)."""
    import jax.numpy as jnp

    from mvd_jax.data.pixel_basis import block_vectors, fit_basis
    from mvd_jax.errors import UserError
    from mvd_jax.models.pixel_autoencoder import PixelAutoencoder, PixelAutoencoderConfig
    from mvd_jax.settings import load_config, resolve
    from mvd_jax.train.trainer import build_autoencoder

    rng = np.random.default_rng(7)
    f, d = 4, 48
    mixing = rng.standard_normal((d, d)) * np.logspace(0, -2, d)[None, :]  # spreads over two decades
    # 2000 frames of one 4×4 block each: the blocks' pixels are correlated like real video's
    frames = (rng.standard_normal((2000, d)) @ mixing.T + 0.3).reshape(2000, f, f, 3)
    blocks = block_vectors(frames, f)
    basis = fit_basis(blocks, min_std=1e-6)
    z = (blocks - basis["mean"]) @ basis["encode"]
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-9)
    np.testing.assert_allclose(np.cov(z, rowvar=False), np.eye(d), atol=1e-8)
    np.testing.assert_allclose(basis["encode"] @ basis["decode"], np.eye(d), atol=1e-9)
    assert np.all(np.diff(basis["std"]) <= 0)

    ae = PixelAutoencoder(PixelAutoencoderConfig(factor=f), basis)
    tiled = frames[:12].reshape(3, 2, 2, f, f, 3).transpose(0, 1, 3, 2, 4, 5).reshape(3, 2 * f, 2 * f, 3)
    images = jnp.asarray(tiled, jnp.float32)  # 3 frames of 2×2 blocks
    latents = np.asarray(ae.encode_mode(images))
    expected = (block_vectors(tiled, f) - basis["mean"]) @ basis["encode"]
    np.testing.assert_allclose(latents.reshape(-1, d), expected, rtol=0, atol=1e-3 * np.abs(expected).max())
    np.testing.assert_allclose(np.asarray(ae.decode(jnp.asarray(latents))), tiled, rtol=0, atol=1e-4)

    # k < 48 components: the first k of the full latents, and decode is the projection on them (the best
    # rank-k reconstruction of the centred blocks, float64 SVD as the oracle)
    k = 12
    truncated = PixelAutoencoder(PixelAutoencoderConfig(factor=f, channels=k), basis)
    latents_k = np.asarray(truncated.encode_mode(images))
    np.testing.assert_allclose(latents_k, latents[..., :k], rtol=0, atol=1e-5)
    centred = block_vectors(tiled, f) - basis["mean"]
    whitened = centred @ basis["encode"]
    best = (whitened[:, :k] @ basis["decode"][:k]) + basis["mean"]
    np.testing.assert_allclose(block_vectors(np.asarray(truncated.decode(jnp.asarray(latents_k))), f), best,
                               rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="need a basis"):
        PixelAutoencoder(PixelAutoencoderConfig(factor=f, channels=k))

    cfg = load_config(str(ROOT / "configs" / "demo.py") + ":micro")
    cfg.autoencoder.pixel_basis = str(tmp_path / "basis.npz")
    np.savez(cfg.autoencoder.pixel_basis, **basis)
    built, _ = build_autoencoder(resolve(cfg))
    np.testing.assert_allclose(np.asarray(built.encode_mode(images)), latents, rtol=0, atol=1e-5)
    np.savez(cfg.autoencoder.pixel_basis, **{**basis, "encode": basis["encode"][:4]})
    with pytest.raises(UserError, match="do not fit factor 4"):
        build_autoencoder(resolve(cfg))
    cfg.autoencoder.pixel_basis = str(tmp_path / "none.npz")
    with pytest.raises(UserError, match="is not a file"):
        build_autoencoder(resolve(cfg))
    cfg.autoencoder.pixel_basis = ""
    cfg.autoencoder.pixel_channels = k
    with pytest.raises(UserError, match="needs autoencoder.pixel_basis"):
        resolve(cfg)


def test_ema_decay_warms_up_like_diffusers_ema_model():
    from mvd_jax.train.model_state import ema_decay_at

    # diffusers' EMAModel: min(decay, (1 + n) / (10 + n)) at update n; without warm-up the decay itself
    for n, expected in ((0, 0.1), (8, 0.5), (90, 0.91), (10_000, 0.99)):
        assert float(ema_decay_at(0.99, n)) == pytest.approx(expected, rel=1e-6)
    assert float(ema_decay_at(0.99, 0, warmup=False)) == pytest.approx(0.99, rel=1e-6)


def test_learning_rate_warms_up_holds_then_decays_linearly():
    import ml_collections

    from mvd_jax.errors import UserError
    from mvd_jax.settings import load_config, resolve
    from mvd_jax.train.model_state import learning_rate_schedule

    opt = ml_collections.ConfigDict(dict(warmup_steps=10, decay_start=100, decay_steps=50, decay_to=0.2))
    lr = learning_rate_schedule(opt, 2.0)
    # warm-up 0 → 2 over 10 steps, 2 until step 100, then linearly to 0.4 at step 150, 0.4 after
    for step, expected in ((0, 0.0), (5, 1.0), (10, 2.0), (99, 2.0), (100, 2.0), (125, 1.2), (150, 0.4), (10_000, 0.4)):
        assert float(lr(step)) == pytest.approx(expected, rel=1e-6), step
    opt.decay_steps = 0  # no decay: constant after the warm-up
    assert float(learning_rate_schedule(opt, 2.0)(10_000)) == pytest.approx(2.0)
    bad = load_config(str(ROOT / "configs" / "demo.py") + ":micro")
    bad.optimizer.update(decay_steps=10, decay_start=2)  # inside the 5-step warm-up
    with pytest.raises(UserError, match="decay_start.*warm-up"):
        resolve(bad)


def test_a_run_exports_as_a_float16_unet_folder_that_init_from_reads(uninterrupted, tmp_path):
    """`python -m mvd_jax.convert RUN --out DIR --float16` (how configs/demo_unet/ was made): the run's EMA
    UNet in diffusers' fp16-variant file, its MobileVD keys kept in config.json, and `init_from` that folder
    gives back exactly those weights rounded to float16."""
    import jax
    from flax import nnx

    from mvd_jax.convert.__main__ import main as convert_main
    from mvd_jax.train.model_state import init_unet_from_svd
    from mvd_jax.train.stages import read_run_unet

    convert_main([str(uninterrupted), "--out", str(tmp_path / "unet"), "--float16"])
    config = json.loads((tmp_path / "unet" / "config.json").read_text())
    assert config["collapse_cross_attention"] is True  # micro collapses: diffusers has no such key
    assert (tmp_path / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    ema, _, _ = read_run_unet(uninterrupted)
    loaded = init_unet_from_svd(tmp_path / "unet", ema.config)
    a, b = nnx.state(ema, nnx.Param), nnx.state(loaded, nnx.Param)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x, np.float16).astype(np.float32), y), a, b)


def test_demo_report_writes_the_sheet_and_scores_against_the_still_frame(uninterrupted, tmp_path):
    """The main job's last step (eval/demo_report.py) on a micro run: sheet geometry, metrics and checks."""
    from PIL import Image

    from mvd_jax.eval import demo_report

    results = demo_report.report(uninterrupted, uninterrupted, tmp_path / "report", clips=2, sheet_clips=2)
    assert results["held_out"] is False and results["videos"] == "demo"  # micro trains on whole videos
    assert demo_report.held_out_source("demo:train") == ("demo:heldout", True)
    still = results["first frame held still"]
    assert still["motion_ratio"] == 0.0 and 0.5 < still["sharpness_ratio"] < 1.5
    for name, steps in (("4-step sample", 4), ("1-step sample", 1)):
        entry = results["samples"][name]
        assert entry["sampling_steps"] == steps and np.isfinite(entry["psnr_to_real_db"])
        assert entry["passes"] == demo_report.check(entry, still)
    on_disk = json.loads((tmp_path / "report" / "quality.json").read_text())
    assert on_disk["samples"].keys() == results["samples"].keys()
    # per clip a band of 3 videos × 32 rows, 2 white rows between bands; 4 frames of 64 columns
    assert Image.open(tmp_path / "report" / "contact_sheet.png").size == (4 * 64, 2 * 3 * 32 + 2)
    assert "training clips" in demo_report.table(results)
    passing = {"psnr_to_real_db": still["psnr_to_real_db"] - 0.5, "sharpness_ratio": 1.0, "motion_ratio": 0.5}
    assert demo_report.check(passing, still) == {"psnr": True, "sharpness": True, "motion": True}
    assert demo_report.check({**passing, "sharpness_ratio": 3.0, "motion_ratio": 0.1}, still) == {
        "psnr": True, "sharpness": False, "motion": False}
