"""Export to TFLite (mvd_jax/export, python -m export.tflite): a small MobileVD (collapsed cross-attention,
temporal multiscaling, pruned temporal blocks, funnels merged at export) plus a tiny temporal VAE and CLIP
image encoder go through the command line once, from a trainer run directory (its checkpoint holds the
UNet, its config names the VAE + CLIP folder and the demo videos, so verification also runs on one real
clip); the tests then check the files against JAX computed independently of the export code, the op
census, the refusals and the AI Hub orchestration.

Needs the [export] extra (tensorflow-cpu, ai-edge-litert, qai-hub); skipped without it.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import inspect
import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from mvd_jax.convert import unet_from_tensors, unet_to_tensors  # noqa: E402
from mvd_jax.convert.diffusers_unet import DIFFUSERS_CLASS, WEIGHTS_NAME, expected_parameters  # noqa: E402
from mvd_jax.convert.diffusers_vae import abstract_vae, save_vae_diffusers, vae_from_tensors  # noqa: E402
from mvd_jax.convert.safetensors_io import write_safetensors  # noqa: E402
from mvd_jax.convert.strict import expected_from_module  # noqa: E402
from mvd_jax.convert.transformers_clip import (  # noqa: E402
    abstract_image_encoder,
    image_encoder_from_tensors,
    save_image_encoder,
)
from mvd_jax.diffusion import samplers  # noqa: E402
from mvd_jax.errors import UserError  # noqa: E402
from mvd_jax.export import ExportError  # noqa: E402
from mvd_jax.export import ai_hub  # noqa: E402
from mvd_jax.export import functions as F  # noqa: E402
from mvd_jax.export import verify  # noqa: E402
from mvd_jax.export import tflite  # noqa: E402
from mvd_jax.export.tflite import export_component  # noqa: E402
from mvd_jax.models.clip_vision import CLIPVisionConfig, preprocess_for_clip  # noqa: E402
from mvd_jax.models.funnels import add_funnels  # noqa: E402
from mvd_jax.models.gates import temporal_block_names  # noqa: E402
from mvd_jax.models.unet_config import UNetConfig  # noqa: E402
from mvd_jax.models.vae import VAEConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from export.tflite import main as export_main  # noqa: E402

FRAMES, HEIGHT, WIDTH = 4, 16, 32  # pixels; the tiny VAE halves them: latents 4 × 8 × 16
PRUNED = ("down_blocks.1.resnets.0", "mid_block.resnets.1")
UNET_CONFIG = UNetConfig(
    in_channels=8, out_channels=4,
    down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
    up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
    block_out_channels=(32, 32), num_attention_heads=(2, 2), cross_attention_dim=32, addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=24, layers_per_block=1, num_frames=FRAMES,
    collapse_cross_attention=True, temporal_multiscale=True, pruned_temporal_blocks=PRUNED)
VAE_CONFIG = VAEConfig(down_block_types=("DownEncoderBlock2D",) * 2, block_out_channels=(32, 32), layers_per_block=1,
                       latent_channels=4)
CLIP_CONFIG = CLIPVisionConfig(hidden_size=32, intermediate_size=64, projection_dim=32, num_hidden_layers=1,
                               num_attention_heads=2, patch_size=32)
FILES = ("unet_step", "vae_decoder", "vae_encoder", "clip_image_encoder")


def random_tensors(shapes: dict, seed: int) -> dict:
    """Every parameter random (as tests/oracle.py does for torch models): a mis-exported parameter cannot
    hide behind a default 0, 1 or 0.5."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in shapes.items():
        if len(shape) >= 2:
            w = rng.standard_normal(shape) / np.sqrt(math.prod(shape[1:]))
        elif name.endswith("mix_factor"):
            w = rng.standard_normal(shape)
        elif "norm" in name and name.endswith("weight"):
            w = 1.0 + 0.2 * rng.standard_normal(shape)
        else:
            w = 0.2 * rng.standard_normal(shape)
        out[name] = w.astype(np.float32)
    return out


# ---- fixtures: a pipeline folder with random models, exported once through the command line ---------------
@pytest.fixture(scope="module")
def models():
    base = unet_from_tensors(random_tensors(expected_parameters(UNET_CONFIG), 0), UNET_CONFIG)
    unet = add_funnels(base, 0.5, init="he")  # random funnels: merging at export has real work to do
    vae = vae_from_tensors(random_tensors(expected_from_module(abstract_vae(VAE_CONFIG)), 1), VAE_CONFIG)
    clip = image_encoder_from_tensors(random_tensors(expected_from_module(abstract_image_encoder(CLIP_CONFIG)), 2),
                                      CLIP_CONFIG)
    return unet, vae, clip


@pytest.fixture(scope="module")
def pipeline_folder(models, tmp_path_factory):
    unet, vae, clip = models
    folder = tmp_path_factory.mktemp("svd_like")
    (folder / "unet").mkdir()
    write_safetensors(folder / "unet" / WEIGHTS_NAME, unet_to_tensors(unet))
    (folder / "unet" / "config.json").write_text(json.dumps({"_class_name": DIFFUSERS_CLASS,
                                                             **unet.config.to_dict()}))
    save_vae_diffusers(vae, folder / "vae")
    save_image_encoder(clip, folder / "image_encoder")
    return folder


def run_config(unet, pipeline_folder, videos="demo"):
    """A trainer config for the module's models: `unet`'s architecture, the folder's VAE + CLIP, `videos`."""
    import ml_collections

    from mvd_jax.settings import resolve

    return resolve(ml_collections.ConfigDict(dict(
        model=unet.config.to_dict(), frames=FRAMES, height=HEIGHT, width=WIDTH, data=dict(videos=str(videos)),
        autoencoder=dict(kind="svd", checkpoint=str(pipeline_folder)))))


@pytest.fixture(scope="module")
def run_dir(models, pipeline_folder, tmp_path_factory):
    """A trainer run directory as the trainer's checkpoint manager writes it, its EMA weights the module's
    UNet (funnels unmerged: export merges them) — no training step, so no train-step compile."""
    import grain

    from mvd_jax.train.checkpoint import CheckpointManager
    from mvd_jax.train.model_state import ParamCodec

    unet = models[0]
    run = tmp_path_factory.mktemp("run")
    manager = CheckpointManager(run / "checkpoints")
    manager.save_config(run_config(unet, pipeline_folder))
    manager.save(1, {"ema": ParamCodec(unet).to_dict(unet)}, {}, iter(grain.MapDataset.range(1).to_iter_dataset()))
    manager.close()
    return run


def test_unet_only_geometry_takes_the_runs_vae_factor(models, pipeline_folder):
    """--run … --components unet builds no VAE: the latent size must still follow the run's VAE (the
    test VAE halves 16×32 pixels to 8×16, where SVD's would give 2×4)."""
    import argparse

    from export.tflite import Sources, geometry

    args = argparse.Namespace(frames=None, height=None, width=None, decode_chunk=None)
    g = geometry(args, Sources(run_config=run_config(models[0], pipeline_folder)))
    assert (g["latent_height"], g["latent_width"]) == (8, 16)


def _export(argv):
    """(status, stdout, stderr) of the command line."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = export_main(argv)
    return status, stdout.getvalue(), stderr.getvalue()


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("tflite")
    status, stdout, stderr = _export(["--run", str(run_dir), "--out", str(out), "--precision", "fp32,fp16"])
    return status, out, json.loads((out / "report.json").read_text()), stdout, stderr


def _inputs(seed):
    rng = np.random.default_rng(seed)
    return dict(noise=rng.standard_normal((1, FRAMES, 8, 16, 4)).astype(np.float32),
                cond_latent=rng.standard_normal((1, 8, 16, 4)).astype(np.float32),
                image_embeds=rng.standard_normal((1, 32)).astype(np.float32),
                added_time_ids=np.array([[6.0, 127.0, 0.02]], np.float32),
                latents=rng.standard_normal((1, FRAMES, 8, 16, 4)).astype(np.float32),
                image=rng.uniform(-1, 1, (1, HEIGHT, WIDTH, 3)).astype(np.float32))


# ---- the exported models -----------------------------------------------------------------------------------
def test_cli_exports_every_component_verified(exported):
    status, out, report, _, stderr = exported
    assert status == 0 and "skipped" not in stderr
    assert [(m["component"], m["precision"]) for m in report["models"]] == [
        (name, p) for name in FILES for p in ("fp32", "fp16")]
    for m in report["models"]:
        assert m["error"] is None and m["rel_l2"]
        assert max(m["rel_l2"].values()) <= {"fp32": 1e-4, "fp16": 5e-3}[m["precision"]], m
        assert Path(m["path"]).is_file()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{n}_{p}.tflite" for n in FILES for p in ("fp32", "fp16")] + ["report.json"])  # no partial files
    assert report["components"]["unet_step"]["inputs"][0] == dict(
        name="noise", shape=[1, FRAMES, 8, 16, 4], dtype="float32", doc="unit Gaussian noise")


def test_a_run_directory_is_also_verified_on_one_real_clip(exported):
    """Every model of the run-directory export was checked on one clip of the run's data (the demo videos)
    as well as on random inputs, both within the tolerance, and the table shows both."""
    _, _, report, stdout, _ = exported
    source = report["real_inputs"]
    assert source["path"].endswith(".mp4") and Path(source["path"]).is_file()
    assert source["crop"] == "center" and source["frames"] == FRAMES
    for m in report["models"]:
        tolerance = {"fp32": 1e-4, "fp16": 5e-3}[m["precision"]]
        assert set(m["rel_l2_real"]) == set(m["rel_l2"]) and max(m["rel_l2_real"].values()) <= tolerance, m
        assert m["rel_l2_real"] != m["rel_l2"]  # other inputs than the random ones
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("component"))
    assert "rel L2 random" in lines[header] and "rel L2 real" in lines[header]
    rows = [line.split() for line in lines[header + 1:header + 1 + len(report["models"])]]
    for row, m in zip(rows, report["models"]):
        assert row[:2] == [m["component"], m["precision"]] and row[-1] == "ok"
        assert float(row[5]) == pytest.approx(max(m["rel_l2_real"].values()), rel=0.01)
    assert f"real inputs from {Path(source['path']).name}" in stdout


def test_a_run_whose_data_is_gone_exports_on_random_inputs_with_one_line(models, pipeline_folder, tmp_path):
    run = tmp_path / "run"  # a config is all a run needs for the VAE / CLIP: no checkpoint read
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "config.json").write_text(run_config(models[0], pipeline_folder, tmp_path / "gone").to_json())
    argv = ["--run", str(run), "--components", "clip", "--precision", "fp32"]
    status, stdout, stderr = _export(argv + ["--out", str(tmp_path / "out")])
    assert status == 0 and (tmp_path / "out" / "clip_image_encoder_fp32.tflite").is_file()
    [line] = stderr.strip().splitlines()
    assert line.startswith("real-input check skipped:") and str(tmp_path / "gone") in line
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set(report["real_inputs"]) == {"skipped"} and report["real_inputs"]["skipped"] in line
    [m] = report["models"]
    assert m["rel_l2"] and m["rel_l2_real"] == {} and m["error"] is None
    # deliberately: no data read, no line
    status, stdout, stderr = _export(argv + ["--out", str(tmp_path / "out2"), "--no-real-inputs"])
    assert status == 0 and stderr == ""
    assert json.loads((tmp_path / "out2" / "report.json").read_text())["real_inputs"] is None


def test_real_inputs_of_a_clip(models):
    """clip_real_inputs: the clip encoded as training encodes it, in the scales the functions take."""
    _, vae, clip = models
    rng = np.random.default_rng(5)
    video = rng.uniform(-1, 1, (1, FRAMES, HEIGHT, WIDTH, 3)).astype(np.float32)
    real = F.clip_real_inputs(vae, clip, dict(video=video, fps=np.array([7.0], np.float32),
                                              motion_bucket_id=np.array([90], np.int32)),
                              frames=FRAMES, decode_chunk=2, seed=3)
    u = real["unet_step"]
    assert u["noise"].shape == (1, FRAMES, 8, 16, 4) and abs(u["noise"].std() - 1) < 0.1
    np.testing.assert_allclose(u["added_time_ids"], [[6.0, 90.0, 0.02]])
    want_embeds = jax.jit(lambda im: clip(preprocess_for_clip(im)))(video[:, 0])
    np.testing.assert_allclose(u["image_embeds"], want_embeds, rtol=1e-4, atol=1e-5)
    clean = np.asarray(jax.jit(vae.encode_mode)(video[:, 0]))
    assert u["cond_latent"].shape == clean.shape and 0 < verify.rel_l2(u["cond_latent"], clean) < 0.2  # 0.02·ε
    # the decoder's latents: the first chunk's, scaled as unet_step's x0 (vae_decoder divides by the factor)
    want_latents = VAE_CONFIG.scaling_factor * np.asarray(jax.jit(vae.encode_mode)(video[0, :2]))
    np.testing.assert_allclose(real["vae_decoder"]["latents"][0], want_latents, rtol=1e-4, atol=1e-5)
    for name in ("vae_encoder", "clip_image_encoder"):
        np.testing.assert_array_equal(real[name]["image"], video[:, 0])
    f = F.vae_decoder(vae, frames=2, latent_height=8, latent_width=16)
    f.set_real_inputs(real["vae_decoder"])
    with pytest.raises(UserError, match="shape"):
        F.vae_decoder(vae, frames=FRAMES, latent_height=8, latent_width=16).set_real_inputs(real["vae_decoder"])
    with pytest.raises(UserError, match="not its inputs"):
        f.set_real_inputs(dict(image=video[:, 0]))


def test_the_tolerance_bounds_the_worst_of_random_and_real():
    r = verify.Report("x", "fp32", rel_l2={"y": 1e-6}, rel_l2_real={"y": 3e-4})
    assert r.worst == 3e-4 and r.worst_random == 1e-6 and r.worst_real == 3e-4
    assert math.isnan(verify.Report("x", "fp32", rel_l2={"y": 1e-6}).worst_real)


@pytest.fixture(scope="module")
def references(models):
    """JAX outputs for `_inputs(7)` computed without the export code: the repo's one-step sampler on the UNet
    as trained (funnels unmerged, σ not folded) and the pipeline's VAE and CLIP calls."""
    unet, vae, clip = models
    x = _inputs(7)
    cond = jnp.repeat(jnp.asarray(x["cond_latent"])[:, None], FRAMES, axis=1)
    x0 = jax.jit(lambda n, c, e, i: samplers.single_step_sample(lambda *a: unet(*a), n, c, e[:, None], i))(
        x["noise"], cond, x["image_embeds"], x["added_time_ids"])
    z = x["latents"][0] / VAE_CONFIG.scaling_factor  # the pipeline's decode: unscale, decode, to [0, 1]
    frames = jax.jit(lambda z: jnp.clip(vae.decode(z, FRAMES) / 2 + 0.5, 0, 1))(z)
    latent = jax.jit(vae.encode_mode)(x["image"])
    embeds = jax.jit(lambda im: clip(preprocess_for_clip(im)))(x["image"])
    return x, dict(unet_step=x0, vae_decoder=frames[None], vae_encoder=latent, clip_image_encoder=embeds)


@pytest.mark.parametrize("precision,tolerance", [("fp32", 1e-4), ("fp16", 5e-3)])
def test_exports_equal_jax_computed_without_the_export_code(exported, references, precision, tolerance):
    x, want = references
    feeds = dict(unet_step=("noise", "cond_latent", "image_embeds", "added_time_ids"), vae_decoder=("latents",),
                 vae_encoder=("image",), clip_image_encoder=("image",))
    for name, keys in feeds.items():
        got = verify.run_litert(exported[1] / f"{name}_{precision}.tflite", {k: x[k] for k in keys})
        assert verify.rel_l2(next(iter(got.values())), want[name]) <= tolerance, name


def test_op_census_is_builtins_only_and_fp16_halves_the_file(exported):
    out = exported[1]
    for name in FILES:
        census = verify.op_census(out / f"{name}_fp32.tflite")
        assert census and verify.non_builtin_ops(census) == []
        assert all(op.isupper() for op in census)
        # attention is exported in XLA's batched form, not as the CPU loops of models/attention_kernel.py
        assert verify.control_flow_ops(census) == [], (name, census)
        if name in ("unet_step", "clip_image_encoder"):  # (the tests' tiny VAE has no attention)
            assert census["BATCH_MATMUL"] > 0, (name, census)
        fp32, fp16 = ((out / f"{name}_{p}.tflite").stat().st_size for p in ("fp32", "fp16"))
        # weights halve; the graph itself (a few hundred kB at this size) does not
        assert 0.4 < fp16 / fp32 < 0.62, (name, fp16 / fp32)
    fp16_census = verify.op_census(out / "unet_step_fp16.tflite")
    assert fp16_census["DEQUANTIZE"] > 0 and verify.non_builtin_ops(fp16_census) == []


def test_exported_unet_is_the_pruned_merged_inference_form(exported):
    """The export takes the funneled UNet and ships its merged form; pruned blocks are absent."""
    out, report = exported[1], exported[2]
    count = lambda config: sum(math.prod(s) for s in expected_parameters(config).values())
    merged = dataclasses.replace(UNET_CONFIG, funnel_factor=0.5, funnels_merged=True)
    shipped = {m["num_params"] for m in report["models"] if m["component"] == "unet_step"}
    assert shipped == {count(merged)}
    assert count(merged) < count(UNET_CONFIG) < count(dataclasses.replace(merged, funnels_merged=False))
    assert count(UNET_CONFIG) < count(dataclasses.replace(UNET_CONFIG, pruned_temporal_blocks=()))
    inputs, outputs = verify.io_names(out / "unet_step_fp16.tflite")
    assert sorted(t for t, _ in inputs) == ["added_time_ids", "cond_latent", "image_embeds", "noise"]
    assert all(t == s for t, s in inputs + outputs) and outputs == [("x0", "x0")]


# ---- the UNet as a chain of graphs (unet_chain.py) ----------------------------------------------------------
def test_plan_parts_minimises_the_largest_part():
    """Against every way of cutting 7 blocks into 1–7 contiguous runs: the plan's largest part is the smallest
    possible, the runs cover the blocks in order, and parts_for picks the fewest parts under a limit."""
    import itertools

    from mvd_jax.export.unet_chain import parts_for, plan_parts

    rng = np.random.default_rng(0)
    for _ in range(5):
        counts = {f"b{i}": int(n) for i, n in enumerate(rng.integers(1, 100, 7))}
        sizes = list(counts.values())
        for parts in range(1, 8):
            runs = plan_parts(counts, parts)
            assert len(runs) == parts and [b for run in runs for b in run] == list(counts)
            best = min(max(sum(sizes[a:b]) for a, b in zip((0, *cuts), (*cuts, 7)))
                       for cuts in itertools.combinations(range(1, 7), parts - 1))
            assert max(sum(counts[b] for b in run) for run in runs) == best
        limit = int(rng.integers(max(sizes), sum(sizes)))
        n = parts_for(counts, limit)
        assert max(sum(counts[b] for b in run) for run in plan_parts(counts, n)) <= limit
        assert n == 1 or max(sum(counts[b] for b in run) for run in plan_parts(counts, n - 1)) > limit
    # a limit below the largest block: that block alone, as few parts as that allows
    n = parts_for(counts, 1)
    assert max(sum(counts[b] for b in run) for run in plan_parts(counts, n)) == max(sizes)
    assert n == 1 or max(sum(counts[b] for b in run) for run in plan_parts(counts, n - 1)) > max(sizes)
    with pytest.raises(UserError, match="1 to 7 parts"):
        plan_parts(counts, 8)


def test_the_chained_unet_composes_to_the_one_graph_function():
    """The paper's 4-level structure (multiscale, collapsed cross-attention, pruned blocks, merged funnels)
    in 5 parts: the JAX parts run in a row equal unet_step exactly; skips travel from their maker to their
    reader only, and a part without cross-attention does not take the image embedding."""
    from flax import nnx

    from mvd_jax.export.unet_chain import step_params, unet_step_chain
    from mvd_jax.models.gates import SVD_BLOCKS_BY_COST
    from mvd_jax.models.unet import SpatioTemporalUNet

    config = UNetConfig(block_out_channels=(32, 32, 64, 64), num_attention_heads=(1, 1, 2, 2), cross_attention_dim=32,
                        addition_time_embed_dim=8, projection_class_embeddings_input_dim=24,
                        collapse_cross_attention=True, temporal_multiscale=True,
                        pruned_temporal_blocks=SVD_BLOCKS_BY_COST[:27], funnel_factor=0.5, funnels_merged=True)
    unet = SpatioTemporalUNet(config, rngs=nnx.Rngs(3))
    chain = unet_step_chain(unet, parts=5, frames=5, latent_height=6, latent_width=10)  # odd sizes, T ≠ 14
    assert [b for run in chain.steps for b in run] == list(unet.step_names)
    assert sum(p.num_params for p in chain.parts) == chain.full.num_params == sum(step_params(unet).values())
    x = chain.full.sample_inputs(1)
    outputs = chain.run_jax(x)
    np.testing.assert_array_equal(outputs[-1]["x0"], chain.full.reference(x)["x0"])
    for name, (maker, readers) in chain.wiring.items():
        assert all(r > maker for r in readers) and (readers or name == "x0"), (name, maker, readers)
        if name.startswith("skip_"):  # read once, by the up block that consumes it
            assert len(readers) == 1
    no_attention = [p for p, run in enumerate(chain.steps) if all(b in ("down_blocks.3", "up_blocks.0") for b in run)]
    assert no_attention and all("image_embeds" not in [i.name for i in chain.parts[p].inputs] for p in no_attention)
    # released means released: nothing else (the parts' functions included) keeps a weight alive
    import gc
    import weakref

    del unet
    refs = [weakref.ref(p) for f in [chain.full, *chain.parts] for p in f.params]
    for f in [chain.full, *chain.parts]:
        f.release_params()
    gc.collect()
    assert not [r for r in refs if r() is not None]


def test_the_unet_as_a_chain_equals_its_one_graph_export(run_dir, exported, tmp_path, monkeypatch):
    """`--unet-parts 3` through the command line: installed part files only, the chain verified end to end on
    random and real inputs, report.json's wiring, and LiteRT's chain equal to the single-graph model of the
    same run on fresh inputs (part 3 reads skips that part 1 made: they pass part 2 by). With
    `--ai-hub-device` (the stand-in hub below, which runs each job with LiteRT): one profiled job per part, in
    order, each part fed the outputs the "phone" returned for the earlier ones, compared with JAX at the end."""
    hub = FakeHub()
    (tmp_path / "client.ini").write_text("[api]\n")
    monkeypatch.setattr(ai_hub, "_import_hub", lambda: hub)
    monkeypatch.setattr(ai_hub, "credentials_path", lambda: tmp_path / "client.ini")
    out = tmp_path / "out"
    status, stdout, stderr = _export(["--run", str(run_dir), "--out", str(out), "--components", "unet",
                                      "--precision", "fp32", "--unet-parts", "3",
                                      "--ai-hub-device", "Samsung Galaxy S24"])
    assert status == 0, stderr
    names = [f"unet_step_part{k}of3_fp32.tflite" for k in (1, 2, 3)]
    assert sorted(p.name for p in out.iterdir()) == sorted(names + ["report.json"])
    report = json.loads((out / "report.json").read_text())
    [device] = report["ai_hub"]
    assert [c[0] for c in hub.calls] == ["upload_model", "submit_inference_job"] * 3
    assert [c[1] for c in hub.calls[::2]] == [str(out / n) for n in names]
    assert [c[2] for c in hub.calls[1::2]] == [[t for t, _ in verify.io_names(out / n)[0]] for n in names]
    # part 1 returns one tensor under two names (the last down block's output is also the top skip): each
    # signature name is listed, so the next parts find both
    outputs = [sig for _, sig in verify.io_names(out / names[0])[1]]
    assert sorted(outputs) == sorted(set(outputs)) == sorted(report["components"]["unet_step"]["chain"][0]["outputs"])
    assert [p["name"] for p in device["parts"]] == [n.removesuffix(".tflite") for n in names]
    assert device["rel_l2"]["x0"] <= 1e-4 and device["latency_ms"] == pytest.approx(3 * 12.345)
    assert device["compute_units"] == {"NPU": 21, "GPU": 0, "CPU": 3}
    assert "3 graphs in a row" in stdout
    [m] = report["models"]
    assert m["error"] is None and max(m["rel_l2"].values()) <= 1e-4 and max(m["rel_l2_real"].values()) <= 1e-4
    assert [Path(p["path"]).name for p in m["parts"]] == names
    assert m["census"] == dict(sum((collections.Counter(p["census"]) for p in m["parts"]), collections.Counter()))
    chain = report["components"]["unet_step"]["chain"]
    assert [c["name"] for c in chain] == [n.removesuffix("_fp32.tflite") for n in names]
    assert [i["name"] for i in chain[0]["inputs"]] == ["noise", "cond_latent", "image_embeds", "added_time_ids"]
    assert chain[-1]["outputs"] == ["x0"] and "noise" in [i["name"] for i in chain[-1]["inputs"]]
    x = _inputs(11)
    step_inputs = {k: x[k] for k in ("noise", "cond_latent", "image_embeds", "added_time_ids")}
    [got] = verify.run_litert_chain([out / n for n in names], [step_inputs])
    want = verify.run_litert(exported[1] / "unet_step_fp32.tflite", step_inputs)
    assert verify.rel_l2(got["x0"], want["x0"]) < 1e-5
    passed_by = {i["name"] for i in chain[2]["inputs"] if i["name"].startswith("skip_")} & set(chain[0]["outputs"])
    assert passed_by and not passed_by & {i["name"] for i in chain[1]["inputs"]}
    assert [b for c in chain for b in c["blocks"]] == ["down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.0",
                                                      "up_blocks.1"]
    # the next export at this precision, chained or not, first removes this one's files
    tflite.remove_stale(out, "unet_step", "fp32")
    assert sorted(p.name for p in out.iterdir()) == ["report.json"]


def test_the_converter_in_a_child_process(tmp_path):
    """What large models take (export_component, above CHILD_PARAMS): the same model as in-process conversion,
    and the child's failure as an ExportError."""
    f = _tiny_function("tiny", lambda x: jnp.tanh(x) * 2.0)
    graph = tflite.save_graph(f, tmp_path / "graph")
    report = export_component(f, "fp32", tmp_path, graph=graph, in_child=True)
    assert report.ok and report.worst < 1e-6
    assert Path(report.path).read_bytes() == tflite.convert(f, "fp32", graph=graph)
    # an ExportError in the child reaches the caller as itself (here before the child imports TensorFlow)
    with pytest.raises(ExportError, match="unknown precision 'fp8'"):
        tflite.convert_in_child(f, "fp8", graph, tmp_path / "out.tflite", buffer_offsets=False)
    assert not (tmp_path / "out.tflite").exists()


def test_child_failures_become_export_errors():
    """export/child.run_child, which both children (converter, LiteRT) run under: a child's ExportError as
    itself, a SIGKILL with the caller's hint, another status with the stderr tail, a timeout."""
    import sys

    from mvd_jax.export.child import run_child

    def child(code):
        return [sys.executable, "-c", "import os, signal, sys, time\n" + code]

    run_child(child("pass"), "ok", timeout_s=60)
    with pytest.raises(ExportError) as e:
        run_child(child("from mvd_jax.export import ExportError; from mvd_jax.export.child import report_error\n"
                        "sys.exit(report_error(ExportError('two\\nlines')))"), "x", timeout_s=60)
    assert str(e.value) == "two\nlines"
    with pytest.raises(ExportError, match="^conv was killed by SIGKILL — out of memory"):
        run_child(child("os.kill(os.getpid(), signal.SIGKILL)"), "conv", timeout_s=60, killed_hint=" — out of memory")
    with pytest.raises(ExportError, match="^lite exited with status 3\n  last words$"):
        run_child(child("print('last words', file=sys.stderr); sys.exit(3)"), "lite", timeout_s=60)
    with pytest.raises(ExportError, match="^slow did not finish within 1 s$"):
        run_child(child("time.sleep(30)"), "slow", timeout_s=1)


def test_prepare_unet_prunes_what_learned_gates_drop():
    gated_config = dataclasses.replace(UNET_CONFIG, pruned_temporal_blocks=(), temporal_gating="sampled")
    tensors = random_tensors(expected_parameters(gated_config), 3)
    tensors["temporal_gates.logits"] = np.arange(12, dtype=np.float32)  # the last blocks matter most
    gated = unet_from_tensors(tensors, gated_config)
    with pytest.raises(UserError, match="gate"):
        F.prepare_unet(gated)
    pruned = F.prepare_unet(gated, gate_keep=9)
    assert pruned.config.temporal_gating is None
    assert pruned.config.pruned_temporal_blocks == tuple(sorted(temporal_block_names(gated_config)[:3]))


# ---- refusals: nothing that looks like a model is left behind ----------------------------------------------
def _tiny_function(name, body):
    return F.ExportFunction(name, lambda params, x: {"y": body(x)}, [], (F.Input("x", (1, 8, 8)),), ("y",),
                            lambda rng: dict(x=rng.standard_normal((1, 8, 8)).astype(np.float32)))


def test_a_graph_without_builtins_fails_and_leaves_no_file(tmp_path):
    f = _tiny_function("fft_model", lambda x: jnp.abs(jnp.fft.fft(x)))
    (tmp_path / "fft_model_fp32.tflite").write_bytes(b"stale model from an earlier export")
    with pytest.raises(ExportError, match="converter refused") as e:
        export_component(f, "fp32", tmp_path)
    assert "fft" in str(e.value) and e.value.report.error
    assert list(tmp_path.iterdir()) == []


def test_a_flex_op_in_the_flatbuffer_is_refused(tmp_path):
    """Even when a converter hands over a model with a TensorFlow (Flex) kernel in it."""
    def flex_converter(f, precision):
        fn = tf.function(lambda x: {"y": tf.linalg.det(x)}, input_signature=[tf.TensorSpec((1, 8, 8), tf.float32)])
        converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
        return converter.convert()

    f = _tiny_function("det_model", lambda x: jnp.linalg.det(x))
    with pytest.raises(ExportError, match="FlexMatrixDeterminant"):
        export_component(f, "fp32", tmp_path, converter=flex_converter)
    assert list(tmp_path.iterdir()) == []


def test_out_of_tolerance_numerics_are_refused(models, tmp_path):
    f = F.clip_image_encoder(models[2], height=HEIGHT, width=WIDTH)
    with pytest.raises(ExportError, match="tolerance") as e:
        export_component(f, "fp16", tmp_path, tolerance=1e-7)  # fp16 weights cannot get this close
    assert 0 < e.value.report.worst < 5e-3 and e.value.report.census
    assert list(tmp_path.iterdir()) == []


def test_cli_exits_nonzero_and_writes_no_model_when_verification_fails(pipeline_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(verify.TOLERANCES, "fp16", 1e-7)
    status = export_main(["--checkpoint", str(pipeline_folder), "--out", str(tmp_path), "--components", "clip",
                          "--precision", "fp32,fp16", "--frames", str(FRAMES), "--height", str(HEIGHT),
                          "--width", str(WIDTH)])
    assert status == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip_image_encoder_fp32.tflite", "report.json"]
    assert "FAILED" in capsys.readouterr().out


def test_cli_user_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        export_main(["--out", str(tmp_path)])
    assert e.value.code == 2 and "name the model" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        export_main(["--unet", str(tmp_path / "missing"), "--out", str(tmp_path), "--frames", "4", "--height", "16",
                     "--width", "32", "--components", "unet"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        export_main(["--unet", str(tmp_path), "--out", str(tmp_path), "--precision", "bf16"])
    assert e.value.code == 2 and "fp32" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        export_main(["--unet", str(tmp_path), "--out", str(tmp_path), "--unet-parts", "-1"])
    assert e.value.code == 2 and "--unet-parts" in capsys.readouterr().err


# ---- AI Hub: the orchestration against a stand-in with qai_hub's call signatures -----------------------------
class FakeStatus:
    def __init__(self, ok, message=None):
        self.success, self.failure, self.message = ok, not ok, message
        self.code = "SUCCESS" if ok else "FAILED"


class FakeJob:
    """Runs the uploaded model with LiteRT on this machine, as the phone would."""

    def __init__(self, hub, model, inputs, ok=True):
        self.hub, self.model, self.inputs, self.ok = hub, model, inputs, ok
        self.url = "https://app.aihub.qualcomm.com/jobs/jfake/"

    def wait(self, timeout: "int | None" = None):
        return FakeStatus(self.ok, None if self.ok else "device lost")

    def download_output_data(self, filename: "str | None" = None):
        outputs = verify.run_litert(self.model, {k: v[0] for k, v in self.inputs.items()})
        return {k: [v] for k, v in outputs.items()}

    def download_profile(self, filename: "str | None" = None):
        return {"execution_summary": {"estimated_inference_time": 12345},
                "execution_detail": [{"name": "a", "type": "CONV_2D", "compute_unit": "NPU"}] * 7
                + [{"name": "b", "type": "TANH", "compute_unit": "CPU"}]}


class FakeHub:
    """qai_hub's module-level functions with their real signatures (checked below)."""

    class Error(Exception):
        pass

    class UserError(Error):
        pass

    @dataclasses.dataclass
    class Device:
        name: str = ""
        os: str = ""
        attributes: "str | list[str]" = dataclasses.field(default_factory=list)

    def __init__(self, job_ok=True, offline=False):
        self.job_ok, self.offline, self.calls = job_ok, offline, []

    def upload_model(self, model, name=None, project=None):
        if self.offline:
            import requests

            raise requests.exceptions.ConnectionError("Max retries exceeded with url: /api/v1/models/")
        self.calls.append(("upload_model", model, name))
        return model

    def submit_inference_job(self, model, device, inputs=None, name=None, options="", retry=True, profile=True,
                             project=None):
        self.calls.append(("submit_inference_job", device.name, list(inputs), profile))
        return FakeJob(self, model, inputs, self.job_ok)

    def submit_profile_job(self, model, device, name=None, options="", retry=True, project=None):
        return FakeJob(self, model, None, self.job_ok)


def _parameters(fn):
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values() if p.name != "self"]


def test_the_stand_in_has_qai_hubs_call_signatures():
    qai_hub = pytest.importorskip("qai_hub")
    fake = FakeHub()
    for name in ("upload_model", "submit_inference_job", "submit_profile_job"):
        assert _parameters(getattr(fake, name)) == _parameters(getattr(qai_hub, name)), name
    assert [n for n, *_ in _parameters(FakeHub.Device)] == [n for n, *_ in _parameters(qai_hub.Device)]
    for method in ("wait", "download_output_data", "download_profile"):
        assert _parameters(getattr(FakeJob, method)) == _parameters(getattr(qai_hub.client.InferenceJob, method))
    assert issubclass(qai_hub.client.UserError, qai_hub.Error)


def test_run_on_device_uploads_runs_profiles_and_compares(models, exported):
    path = exported[1] / "clip_image_encoder_fp32.tflite"
    f = F.clip_image_encoder(models[2], height=HEIGHT, width=WIDTH)
    hub = FakeHub()
    result = ai_hub.run_on_device(path, f, "fp32", "Samsung Galaxy S24", hub=hub)
    assert result.rel_l2["image_embeds"] <= 1e-4 and result.latency_ms == pytest.approx(12.345)
    assert result.compute_units == {"NPU": 7, "GPU": 0, "CPU": 1}
    upload, submit = hub.calls
    assert upload == ("upload_model", str(path), "clip_image_encoder_fp32")
    model_order = [t for t, _ in verify.io_names(path)[0]]
    assert submit == ("submit_inference_job", "Samsung Galaxy S24", model_order, True)
    assert "Samsung Galaxy S24" in result.line() and "NPU 7" in result.line()


def test_run_on_device_failures_and_the_models_input_order(models, exported):
    path = exported[1] / "unet_step_fp16.tflite"
    f = F.unet_step(F.prepare_unet(models[0]), frames=FRAMES, latent_height=8, latent_width=16)
    hub = FakeHub(job_ok=False)
    with pytest.raises(ExportError, match="did not succeed"):
        ai_hub.run_on_device(path, f, "fp16", "Samsung Galaxy S24", hub=hub)
    # AI Hub matches a dataset to the model's inputs by order: the flatbuffer's, not the declaration's
    model_order = [t for t, _ in verify.io_names(path)[0]]
    assert hub.calls[1][2] == model_order and sorted(model_order) == sorted(i.name for i in f.inputs)
    with pytest.raises(ai_hub.HubUnavailable, match="ConnectionError"):
        ai_hub.run_on_device(path, f, "fp16", "Samsung Galaxy S24", hub=FakeHub(offline=True))


def test_without_credentials_one_line_and_the_local_export_stands(pipeline_folder, tmp_path, monkeypatch, capsys):
    pytest.importorskip("qai_hub")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    out = tmp_path / "out"
    status = export_main(["--checkpoint", str(pipeline_folder), "--out", str(out), "--components", "clip",
                          "--precision", "fp32", "--frames", str(FRAMES), "--height", str(HEIGHT),
                          "--width", str(WIDTH), "--ai-hub-device", "Samsung Galaxy S24"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 3
    assert len(err) == 1 and "client.ini" in err[0] and "stands" in err[0]
    assert (out / "clip_image_encoder_fp32.tflite").is_file()


def test_main_job_configuration_exports_without_control_flow(monkeypatch):
    """The main job's model (configs/demo.py: 512 top-level tokens, where this host's blocked attention form
    loops) exported as the exporter builds it: no loop in any component's traced function, and the UNet
    step's TFLite census has no WHILE / DYNAMIC_UPDATE_SLICE although the model was last traced (and the
    module left) in the CPU's blocked form."""
    from mvd_jax.settings import load_config, unet_config
    from mvd_jax.models import attention_kernel
    from mvd_jax.train.model_state import build_unet
    from mvd_jax.train.trainer import build_autoencoder

    cfg = load_config(str(ROOT / "configs" / "demo.py") + ":adversarial")
    unet = attention_kernel.set_form(build_unet(dataclasses.replace(unet_config(cfg), num_frames=cfg.frames), 0),
                                     attention_kernel.AttentionForm("blocked"))
    autoencoder, clip = build_autoencoder(cfg)
    factor = autoencoder.config.downsampling_factor
    latent = dict(frames=cfg.frames, latent_height=cfg.height // factor, latent_width=cfg.width // factor)
    unet_step = F.unet_step(unet, **latent)
    functions = [unet_step, F.vae_decoder(autoencoder, **latent),
                 F.vae_encoder(autoencoder, height=cfg.height, width=cfg.width),
                 F.clip_image_encoder(clip, height=cfg.height, width=cfg.width)]
    for f in functions:
        jaxpr = str(jax.make_jaxpr(f.fn)(f.params, *[jax.ShapeDtypeStruct(i.shape, i.dtype) for i in f.inputs]))
        assert not any(p in jaxpr for p in ("while[", "scan[", "dynamic_update_slice")), f.name
    # the module the user holds keeps its own form; the export used XLA's
    assert attention_kernel.forms_in(unet) == {attention_kernel.AttentionForm("blocked")}
    census = verify.op_census(tflite.convert(unet_step, "fp32"))
    assert verify.control_flow_ops(census) == [] and census["BATCH_MATMUL"] > 0 and census["SOFTMAX"] > 0, census


def test_a_graph_with_a_loop_is_refused(tmp_path):
    f = _tiny_function("loop_model", lambda x: jax.lax.fori_loop(0, 3, lambda i, y: y.at[i].set(y[i] * 2.0 + 1.0),
                                                                 x.reshape(8, 8)).reshape(1, 8, 8))
    with pytest.raises(ExportError, match="control flow WHILE"):
        export_component(f, "fp32", tmp_path)
    assert list(tmp_path.iterdir()) == []
