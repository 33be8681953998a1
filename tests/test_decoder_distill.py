"""The tiny decoder's pipeline at the tests' size (configs/demo.py:vae_micro and :tiny_decoder_micro): the
autoencoder phase trains a VAE of SVD's structure, the decoder_distill phase distils its decoder into the tiny
autoencoder (resumable), the run converts to an AutoencoderTiny folder, decodes through eval/decoder_quality.py,
and exports as `vae_decoder_tiny` (fp32 and fp16, verified with LiteRT, builtins only). Bad inputs: one clear
error each."""
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mvd_jax.errors import UserError
from mvd_jax.settings import load_config
from mvd_jax.train.trainer import train

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEMO = str(ROOT / "configs" / "demo.py")


def metrics(workdir) -> dict:
    return {r["step"]: r for r in map(json.loads, (Path(workdir) / "metrics.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(the autoencoder run, the decoder run distilled from it and resumed from 8 to 10 steps, the metrics of its
    first 8 steps, what the runs logged)."""
    base = tmp_path_factory.mktemp("tiny")
    vae_run, decoder_run = base / "vae", base / "decoder"
    train(load_config(DEMO + ":vae_micro"), vae_run, log=lambda *a: None)
    cfg = load_config(DEMO + ":tiny_decoder_micro")
    cfg.autoencoder.update(kind="vae", checkpoint=str(vae_run))  # the teacher: the run just trained
    logs = []
    train(cfg, decoder_run, log=logs.append)
    first = metrics(decoder_run)
    cfg.train.steps = 10
    train(cfg, decoder_run, log=logs.append)
    return vae_run, decoder_run, first, logs


def test_autoencoder_phase_learns_and_converts(runs, tmp_path):
    from mvd_jax.convert.__main__ import main as convert_main
    from mvd_jax.convert.diffusers_vae import load_vae
    from mvd_jax.train.vae_train import read_run_vae

    vae_run = runs[0]
    m = metrics(vae_run)
    assert m[4]["reconstruction"] < m[1]["reconstruction"]  # 4 steps at lr 1e-3
    assert (vae_run / "samples" / "step_0000004.mp4").is_file()  # clip | reconstruction
    convert_main([str(vae_run), "--out", str(tmp_path / "vae"), "--float16"])
    vae, _, step = read_run_vae(vae_run)
    back = load_vae(tmp_path / "vae")
    assert step == 4 and back.config == vae.config
    z = jnp.asarray(np.random.default_rng(0).standard_normal((3, 4, 6, 4)), jnp.float32)
    a, b = np.asarray(vae.decode(z, 3)), np.asarray(back.decode(z, 3))
    assert np.abs(a - b).max() < 2e-2 * np.abs(a).max()  # float16 weights


def test_decoder_distill_learns_resumes_and_scores(runs):
    from mvd_jax.eval.decoder_quality import main as quality_main

    _, decoder_run, first, logs = runs
    assert first[8]["pixel_loss"] < 0.6 * first[1]["pixel_loss"], (first[1], first[8])
    assert {"temporal_loss", "encoder_loss", "psnr"} <= set(first[8])
    assert any("resumed from step 8" in str(line) for line in logs)
    assert max(metrics(decoder_run)) == 10
    assert any("teacher | student video" in str(line) for line in logs)
    record = quality_main(["--runs", str(decoder_run), "--clips", "2"])
    row = record["runs"][0]
    assert row["step"] == 10 and row["error_reduction"] > 1.5, row
    assert row["trained"]["psnr_db"] > row["initial"]["psnr_db"]
    assert 0 <= row["trained"]["flicker"] and np.isfinite(row["trained"]["jitter_ratio"])


def test_clip_metrics_on_known_signals():
    from mvd_jax.eval.decoder_quality import clip_metrics

    rng = np.random.default_rng(0)
    y = rng.uniform(-1, 1, (2, 5, 4, 6, 3))
    same_change = clip_metrics(y + 0.1, y)  # an offset every frame: no flicker, same jitter
    assert same_change["flicker"] == pytest.approx(0, abs=1e-12) and same_change["jitter_ratio"] == pytest.approx(1)
    assert same_change["psnr_db"] == pytest.approx(10 * np.log10(4 / 0.01))
    flicker = y + 0.1 * (-1.0) ** np.arange(5)[None, :, None, None, None]  # ±0.1 alternating frames
    assert clip_metrics(flicker, y)["flicker"] > 0.1 and clip_metrics(flicker, y)["jitter_ratio"] > 1


def test_exported_tiny_decoder_verifies_and_converts(runs, tmp_path):
    from export.tflite import main as export_main
    from mvd_jax.convert.__main__ import main as convert_main
    from mvd_jax.convert.diffusers_tiny_autoencoder import load_tiny_autoencoder
    from mvd_jax.export import verify
    from mvd_jax.train.decoder_distill import read_run_tiny_autoencoder

    decoder_run = runs[1]
    out = tmp_path / "tflite"
    assert export_main(["--decoder", f"tiny:{decoder_run}", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    models = {(m["component"], m["precision"]): m for m in report["models"]}
    assert set(models) == {("vae_decoder_tiny", "fp32"), ("vae_decoder_tiny", "fp16")}
    for m in models.values():
        assert m["error"] is None and m["rel_l2_real"], m  # verified on the teacher's latents of a real clip too
        assert verify.control_flow_ops(m["census"]) == [] and m["census"]["CONV_2D"] > 0
        assert "CONV_3D" not in m["census"]  # the temporal mixers are (3, 1) CONV_2Ds
    assert report["components"]["vae_decoder_tiny"]["inputs"][0]["shape"] == [1, 3, 4, 6, 4]

    convert_main([str(decoder_run), "--out", str(tmp_path / "taesd")])
    folder = load_tiny_autoencoder(tmp_path / "taesd")
    trained = read_run_tiny_autoencoder(decoder_run)[0]
    z = jnp.asarray(np.random.default_rng(1).standard_normal((3, 4, 6, 4)), jnp.float32)
    np.testing.assert_array_equal(np.asarray(folder.decode(z, 3)), np.asarray(trained.decode(z, 3)))


def test_bad_decoder_inputs(runs, tmp_path, capsys):
    from export.tflite import main as export_main
    from mvd_jax.models.tiny_autoencoder import TinyAutoencoder, TinyAutoencoderConfig
    from mvd_jax.convert.diffusers_tiny_autoencoder import save_tiny_autoencoder
    from flax import nnx

    vae_run, decoder_run = runs[0], runs[1]
    # a tiny autoencoder of the wrong factor against the run's teacher: one clear error
    three_stage = TinyAutoencoder(TinyAutoencoderConfig(encoder_block_out_channels=(8,) * 3,
                                                        decoder_block_out_channels=(8,) * 3,
                                                        num_encoder_blocks=(1,) * 3, num_decoder_blocks=(1,) * 3),
                                  rngs=nnx.Rngs(0))
    save_tiny_autoencoder(three_stage, tmp_path / "factor4")
    def refused(args, message):
        with pytest.raises(SystemExit) as e:
            export_main(args)
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and message in err[0], err

    refused(["--run", str(decoder_run), "--decoder", f"tiny:{tmp_path / 'factor4'}", "--components", "vae_decoder_tiny",
             "--out", str(tmp_path / "x")], "4-channel latents at factor 4; the autoencoder's are 4-channel at factor 8")
    refused(["--decoder", f"tiny:{vae_run}", "--out", str(tmp_path / "y")], "'autoencoder' run, not a tiny decoder")
    refused(["--decoder", f"tiny:{tmp_path / 'nowhere'}", "--out", str(tmp_path / "z")],
            "neither a decoder run directory nor an AutoencoderTiny folder")
    assert not any((tmp_path / d).exists() for d in "xyz")
    # a config whose tiny autoencoder cannot have the teacher's factor, and the pixel stand-in as a teacher
    cfg = load_config(DEMO + ":tiny_decoder_micro")
    cfg.tiny_autoencoder.decoder_blocks = (1, 1, 1)
    with pytest.raises(UserError, match="both need 4 stages"):
        train(cfg, tmp_path / "never")
    cfg = load_config(DEMO + ":tiny_decoder_micro")
    cfg.autoencoder.kind = "pixel"
    with pytest.raises(UserError, match="autoencoder.kind must be 'svd'"):
        train(cfg, tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_gradient_accumulation_equals_the_whole_batch(runs, tmp_path):
    """The shared single-loss step (train/programs.py) with train.grad_accum=2: the distillation loss has no
    randomness, so the mean of the two micro-batches' gradients is the whole batch's and one step lands on the
    same weights (float32 rounding apart)."""
    results = {}
    for k in (1, 2):
        cfg = load_config(DEMO + ":tiny_decoder_micro")
        cfg.autoencoder.update(kind="vae", checkpoint=str(runs[0]))
        cfg.train.update(steps=2, grad_accum=k, sample_at_end=False, log_every=1)  # step 1 runs at lr 0 (warm-up)
        results[k] = train(cfg, tmp_path / f"accum{k}", log=lambda *a: None)
    from mvd_jax.train.decoder_distill import initial_student
    from mvd_jax.train.model_state import ParamCodec
    from mvd_jax.train.trainer import build_autoencoder

    teacher = build_autoencoder(cfg)[0]
    start = ParamCodec(initial_student(cfg, teacher.config, log=lambda *a: None))
    start = start.to_dict(initial_student(cfg, teacher.config, log=lambda *a: None))
    a, b = (jax.device_get(results[k].state["params"]) for k in (1, 2))
    assert set(a) == set(b)
    moved = max(float(np.abs(a[k] - start[k]).max()) for k in a)
    differ = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    assert moved > 1e-3 and differ < 1e-3 * moved, (moved, differ)
    assert results[1].metrics["loss"] == pytest.approx(results[2].metrics["loss"], rel=1e-5)
