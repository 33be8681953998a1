"""Clockwork Diffusion (issue 23): the UNet's split forward, the adaptor, the clock sampler, FLOPs per clip, and the
model-step distillation phase (train.phase clockwork: configs/demo_clockwork.py:micro, trained, resumed, read back).

Kept small: the UNets are built abstractly and filled with random NumPy arrays (no per-parameter init programs),
and every UNet program is one jit that holds all of a test's forwards (XLA merges the identical parts).
"""
import dataclasses
import functools
import json
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mvd_jax.diffusion import edm, samplers
from mvd_jax.diffusion.pipeline import ImageToVideo, SampleOptions
from mvd_jax.errors import UserError
from mvd_jax.eval.flops import clock_flops, split_flops
from mvd_jax.models import UNetConfig
from mvd_jax.models.clockwork import (ClockworkConfig, abstract_adaptor, build_adaptor, clockwork_parts,
                                      identity_adaptor)
from mvd_jax.models.gates import temporal_block_names
from mvd_jax.models.unet_split import check_cut_level, split_channels, split_forward
from mvd_jax.models.unet_tensors import abstract_unet

# SVD's block structure (4 levels, the same down/up block types: tests/oracle.py's "tiny"), and the same with
# every MobileVD switch on.
SVD_SHAPED = UNetConfig(block_out_channels=(32, 64, 64, 64), num_attention_heads=(2, 2, 4, 4), cross_attention_dim=32,
                        addition_time_embed_dim=8, projection_class_embeddings_input_dim=24, layers_per_block=1)
MOBILEVD_SHAPED = dataclasses.replace(
    SVD_SHAPED, collapse_cross_attention=True, temporal_multiscale=True, spatial_multiscale=True,
    temporal_gating="sampled", pruned_temporal_blocks=tuple(temporal_block_names(SVD_SHAPED)[1::3]),
    funnel_factor=0.5)
# Two levels: the smallest UNet with a cut, for the sampler's loops.
TWO_LEVELS = UNetConfig(down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
                        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
                        block_out_channels=(32, 64), num_attention_heads=2, cross_attention_dim=32,
                        addition_time_embed_dim=8, projection_class_embeddings_input_dim=24, layers_per_block=1)


# The tests' own programs skip LLVM's optimisations: a quarter less compile time, the same numbers up to rounding.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def random_module(abstract, seed: int):
    """The abstract module with random parameters (matrices N(0, 1/fan_in), the rest 0.2·N): every parameter
    matters, and nothing is compiled to make them."""
    graphdef, state = nnx.split(abstract)
    rng = np.random.default_rng(seed)

    def draw(x):
        a = rng.standard_normal(x.shape).astype(np.float32)
        return jnp.asarray(a / np.sqrt(np.prod(x.shape[:-1])) if len(x.shape) >= 2 else 0.2 * a)

    return nnx.merge(graphdef, jax.tree.map(draw, state))


def unet_inputs(cfg, b, t, h, w, seed=0):
    rng = np.random.default_rng(seed)
    f = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
    return (f(b, t, h, w, cfg.in_channels), jnp.asarray(rng.uniform(-2, 2, b), jnp.float32),
            f(b, 1, cfg.context_dims[0]), jnp.asarray(rng.uniform(0, 30, (b, cfg.num_added_time_ids)), jnp.float32))


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


# ---- the split ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg, cuts", [(SVD_SHAPED, (1,)), (MOBILEVD_SHAPED, (1, 2))], ids=["svd", "mobilevd"])
def test_split_forward_composes_to_the_plain_forward(cfg, cuts):
    """At the paper's cut (1) and, for MobileVD, below the temporal multiscale hand-over (2),
    ε_H^out(ε_L(ε_H^in(x))) is the plain forward: batch 2, 5 frames (odd: the temporal halving pads), a 10×14
    latent (odd sizes on the way down), an image-only frame; for MobileVD also gates on the unpruned temporal
    blocks. One program holds the plain forward and the splits (each cut costs a UNet's compile)."""
    b, t, h, w = 2, 5, 10, 14
    unet = random_module(abstract_unet(cfg), seed=1)
    inputs = unet_inputs(cfg, b, t, h, w, seed=2)
    iio = jnp.zeros((b, t)).at[1, 0].set(1.0)
    gates = (jnp.asarray(np.random.default_rng(3).integers(0, 2, len(temporal_block_names(cfg))), jnp.float32)
             if cfg.temporal_gating else None)
    graphdef, state = nnx.split(unet)

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def run(state, *a):
        model = nnx.merge(graphdef, state)
        return model(*a, iio, gates), [split_forward(model, *a, iio, gates, cut_level=c) for c in cuts]

    plain, splits = run(state, *inputs)
    assert plain.shape == (b, t, h, w, 4)
    for cut, (out, r_in, r_out) in zip(cuts, splits):
        assert rel(out, plain) <= 1e-6, cut  # float32 rounding at most (measured: bit for bit)
        # what an adaptor takes: r_in at half r_out's map size (rounded up), the same frames, the documented widths
        assert r_in.shape[:2] == r_out.shape[:2] and r_in.shape[0] == b
        assert r_in.shape[2:4] == tuple(-(-s // 2) for s in r_out.shape[2:4])
        assert (r_in.shape[-1], r_out.shape[-1]) == split_channels(cfg, cut)
    # cut 1 sits above the multiscale hand-over: r_in and r_out keep all frames and the plain 2× map
    assert splits[0][1].shape == (b, t, 5, 7, 32) and splits[0][2].shape == (b, t, h, w, 64)
    if len(cuts) > 1:
        assert splits[1][1].shape[1] == 3  # below it, the halved frame count


def test_bad_cut_levels_and_clocks_are_user_errors():
    for bad in (0, 4, True, 1.0, "1"):
        with pytest.raises(UserError, match="cut_level must be an integer in 1..3"):
            check_cut_level(SVD_SHAPED, bad)
    with pytest.raises(UserError, match="cut_level must be an integer in 1..1"):
        ClockworkConfig.for_unet(TWO_LEVELS, cut_level=2)
    for bad in (0, -1, True, 2.0):
        with pytest.raises(UserError, match="clock must be an integer ≥ 1"):
            samplers.clock_schedule(25, bad)
    np.testing.assert_array_equal(samplers.clock_schedule(5, 2), [True, False, True, False, True])
    assert samplers.clock_schedule(25, 4).sum() == 7 and samplers.clock_schedule(25, 1).all()


# ---- the adaptor -------------------------------------------------------------------------------------
# channels 64: two channels per GroupNorm group (with one, a per-channel time-embedding shift would be normalised away)
ADAPTOR = ClockworkConfig(in_channels=32, out_channels=64, channels=64, temb_channels=16, image_embed_dim=8)


def adaptor_inputs(seed=0):
    """r_in, r_out^{t+1}, t_emb, image_emb for 2 clips of 4 frames at odd sizes (r_out 9×13, r_in 5×7)."""
    rng = np.random.default_rng(seed)
    f = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
    return f(2, 4, 5, 7, 32), f(2, 4, 9, 13, 64), f(2, 16), f(2, 1, 8)


_apply = jax.jit(lambda split, *args: nnx.merge(*split)(*args), compiler_options=FAST_COMPILE)


def apply(adaptor, *args):
    """adaptor(*args), one compiled program per adaptor structure (the weights are an argument)."""
    return _apply(nnx.split(adaptor), *args)


def with_random_conv_up(adaptor, seed=5):
    """The adaptor once its last layer has learned something (random instead of zero)."""
    rng = np.random.default_rng(seed)
    for var in (adaptor.conv_up.kernel, adaptor.conv_up.bias):
        var[...] = jnp.asarray(0.1 * rng.standard_normal(var.shape), jnp.float32)
    return adaptor


@pytest.mark.parametrize("kind", ["resnet", "spatiotemporal"])
def test_a_fresh_adaptor_is_the_identity_adaptor(kind):
    """The residual runs from r_out^{t+1} to the output and conv_up starts at zero: ϕ = r_out^{t+1}, bit for bit.
    Once conv_up is not zero the output depends on r_in, t_emb and the image embedding."""
    r_in, r_out, temb, image = adaptor_inputs()
    adaptor = build_adaptor(dataclasses.replace(ADAPTOR, kind=kind))
    np.testing.assert_array_equal(apply(adaptor, r_in, r_out, temb, image), r_out)
    np.testing.assert_array_equal(identity_adaptor(TWO_LEVELS)(r_in, r_out, temb, image), r_out)

    with_random_conv_up(adaptor)
    out = apply(adaptor, r_in, r_out, temb, image)
    assert out.shape == r_out.shape and rel(out, r_out) > 1e-3
    for i, changed in enumerate([r_in + 1, r_out + 1, temb + 1, image + 1]):
        args = [r_in, r_out, temb, image]
        args[i] = changed
        assert rel(apply(adaptor, *args), out) > 1e-4, i
    with pytest.raises(ValueError, match="the adaptor takes r_out"):
        adaptor(r_in[:, :, :4], r_out, temb, image)


def test_only_the_spatiotemporal_adaptor_mixes_frames():
    """A change in frame 0 of r_in: the per-frame ResNet adaptor changes output frame 0 alone; the spatio-temporal
    one (temporal convs (3, 1, 1) in its ResBlocks) changes the neighbouring frame too."""
    r_in, r_out, temb, image = adaptor_inputs()
    changed = r_in.at[:, 0].add(1.0)
    for kind in ("resnet", "spatiotemporal"):
        adaptor = with_random_conv_up(build_adaptor(dataclasses.replace(ADAPTOR, kind=kind)))
        per_frame = np.abs(np.asarray(apply(adaptor, changed, r_out, temb, image)
                                      - apply(adaptor, r_in, r_out, temb, image)))
        per_frame = per_frame.max(axis=(0, 2, 3, 4))
        assert per_frame[0] > 1e-3, kind
        if kind == "resnet":
            assert np.all(per_frame[1:] == 0)
        else:
            assert per_frame[1] > 1e-3


def test_adaptor_config_serialises_and_refuses_bad_values():
    config = ClockworkConfig.for_unet(SVD_SHAPED, "spatiotemporal", cut_level=2)
    assert (config.in_channels, config.out_channels, config.channels, config.temb_channels,
            config.image_embed_dim) == (64, 64, 64, 128, 32)
    assert ClockworkConfig.from_dict(config.to_dict()) == config
    assert ClockworkConfig.from_json(json.dumps(config.to_dict())) == config
    assert ClockworkConfig() == ClockworkConfig.for_unet(UNetConfig())  # the defaults are SVD's
    with pytest.raises(UserError, match="unknown Clockwork adaptor config key"):
        ClockworkConfig.from_dict({**config.to_dict(), "chanels": 3})
    with pytest.raises(UserError, match="kind must be one of"):
        ClockworkConfig(kind="unet")
    with pytest.raises(UserError, match="multiple of 32"):
        ClockworkConfig(channels=100)
    with pytest.raises(UserError, match="does not fit this UNet"):
        ClockworkConfig().check_unet(TWO_LEVELS)  # SVD's adaptor
    assert not jax.tree.leaves(nnx.state(identity_adaptor(SVD_SHAPED), nnx.Param))


# ---- the clock sampler -------------------------------------------------------------------------------
STEPS = 5  # clock 2: the full UNet on steps 0, 2, 4


def sampler_inputs(seed=0):
    rng = np.random.default_rng(seed)
    f = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
    noise, cond_latent = f(1, 3, 6, 10, 4), f(1, 6, 10, 4)
    return noise, cond_latent, f(1, 1, 32), jnp.asarray([[6.0, 127.0, 0.02]], jnp.float32)


@pytest.fixture(scope="module")
def two_level_unet():
    return random_module(abstract_unet(TWO_LEVELS), seed=7)


@pytest.fixture(scope="module")
def sampled(two_level_unet):
    """One program: the plain Euler sampler, the clock sampler with the identity adaptor at clock 1, and at clock 2
    with the low-resolution part counting its runs (a host callback inside the loop's cond)."""
    noise, cond_latent, context, ids = sampler_inputs()
    cond = jnp.repeat(cond_latent[:, None], noise.shape[1], axis=1)
    sigmas = edm.karras_sigmas(STEPS)
    low_runs = []
    graphdef, state = nnx.split((two_level_unet, identity_adaptor(TWO_LEVELS)))

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def run(state):
        unet, adaptor = nnx.merge(graphdef, state)
        plain = samplers.euler_sample(lambda *a: unet(*a), noise, sigmas, cond, context, ids)
        parts = clockwork_parts(unet, adaptor)
        clock1 = samplers.clockwork_euler_sample(parts, noise, sigmas, cond, context, ids, clock=1)

        def counted_low(s):
            jax.debug.callback(lambda: low_runs.append(1))
            return parts.low(s)

        clock2 = samplers.clockwork_euler_sample(parts._replace(low=counted_low), noise, sigmas, cond, context, ids,
                                                 clock=2)
        return plain, clock1, clock2

    plain, clock1, clock2 = jax.block_until_ready(run(state))
    jax.effects_barrier()
    return SimpleNamespace(plain=plain, clock1=clock1, clock2=clock2, low_runs=len(low_runs))


def test_clock_1_is_the_plain_sampler(sampled):
    assert rel(sampled.clock1, sampled.plain) <= 1e-6  # float32 rounding at most


def test_clock_2_skips_the_low_resolution_part(sampled):
    """The low part ran on the clock steps only (3 of 5), in the compiled loop; the result is another sample."""
    assert sampled.low_runs == 3
    assert np.all(np.isfinite(sampled.clock2)) and rel(sampled.clock2, sampled.plain) > 1e-3


def test_pipeline_samples_with_a_fresh_resnet_adaptor_as_with_the_identity(two_level_unet, sampled):
    """ImageToVideo with clock 2 and a fresh ResNet adaptor (zero last layer: the identity's output) gives the
    identity adaptor's sample: the adaptor runs inside the pipeline's compiled loop. clock > 1 without an
    adaptor is refused."""

    class Stub(nnx.Module):  # the VAE and image encoder the latent sampler does not use
        def __init__(self):
            self.config = SimpleNamespace(downsampling_factor=8, scaling_factor=1.0)

    adaptor = build_adaptor(ClockworkConfig.for_unet(TWO_LEVELS, "resnet"))
    pipe = ImageToVideo(two_level_unet, Stub(), Stub(), adaptor=adaptor)
    noise, cond_latent, context, ids = sampler_inputs()
    options = SampleOptions(num_frames=3, height=48, width=80, steps=STEPS, clock=2)
    latents = pipe.sample_latents(cond_latent, context, ids, options, noise)
    assert rel(latents, sampled.clock2) <= 1e-5
    with pytest.raises(UserError, match="needs a Clockwork adaptor"):
        ImageToVideo(two_level_unet, Stub(), Stub()).check_options(options)


# ---- FLOPs per clip ----------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg, cut", [(SVD_SHAPED, 1), (MOBILEVD_SHAPED, 1), (MOBILEVD_SHAPED, 2)],
                         ids=["svd", "mobilevd", "mobilevd-cut2"])
def test_flops_of_the_parts_add_up_and_the_clock_saves_the_low_part(cfg, cut):
    """From jaxprs on abstract shapes: the three parts cost exactly the forward; a clock-N schedule over 25 steps
    saves the low part on the 25 − ⌈25/N⌉ adaptor steps, less the adaptor's own cost."""
    adaptors = [abstract_adaptor(ClockworkConfig.for_unet(cfg, kind, cut)) for kind in ("identity", "resnet")]
    split = split_flops(abstract_unet(cfg), batch=2, frames=5, height=10, width=14, cut_level=cut, adaptors=adaptors)
    assert split["high_in"] + split["low"] + split["high_out"] == split["forward"]
    assert split["adaptors"][0] == 0 and 0 < split["adaptors"][1] < split["low"]
    for clock, adaptor_steps in ((2, 12), (4, 18)):
        for adaptor_flops in split["adaptors"]:
            n = clock_flops(split, adaptor_flops, steps=25, clock=clock)
            assert n["full_steps"] == 25 - adaptor_steps and n["plain"] == 25 * split["forward"]
            expected = adaptor_steps * (split["low"] - adaptor_flops) / (25 * split["forward"])
            assert math.isclose(n["saving"], expected, rel_tol=1e-12)


def test_clockwork_table_svd_512x256():
    """The tables' Clockwork rows at SVD 512×256 (25 steps with guidance): the plain sampler is 25 × 2 forwards of
    8.46 TFLOPs; the identity adaptor saves about the paper's 32 % at clock 2 (measured 31.9 %; 47.9 % at clock 4),
    the ResNet adaptor a little less."""
    from mvd_jax.tables import PAPER_CONFIG_DIR, clockwork_rows, format_clockwork_table

    rows = clockwork_rows([os.path.join(PAPER_CONFIG_DIR, "svd_512x256.py")], adaptors=("identity", "resnet"))
    by = {(r["adaptor"], r["clock"]): r for r in rows}
    assert math.isclose(by[("none (plain)", 1)]["tflops"], 50 * 8.455, rel_tol=1e-3)
    # against the paper's number (SD-1.5, 8 steps, clock 2: −32 %), not against our own output
    assert abs(by[("identity", 2)]["saving"] - 0.32) < 0.03
    assert by[("identity", 2)]["saving"] < by[("identity", 4)]["saving"] < 2 * by[("identity", 2)]["saving"]
    assert 0.29 < by[("resnet", 2)]["saving"] < by[("identity", 2)]["saving"]
    assert by[("resnet", 2)]["adaptor_params"] == 24_833_920
    assert "identity" in format_clockwork_table(rows)


# ---- the command line --------------------------------------------------------------------------------
def test_sample_cli_refuses_bad_clockwork_options_before_loading_anything(tmp_path):
    """One `error:` line each, before any checkpoint is read (the checkpoint folder does not even exist)."""
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "config.json").write_text('{"train": {"phase": "diffusion"}}')
    base = ["--checkpoint", str(tmp_path / "none"), "--image", "x.png", "--out", str(tmp_path / "o.mp4")]
    cases = [(["--clock", "2"], "--clock needs --clockwork"),
             (["--clockwork", "identity", "--steps", "1"], "--clockwork needs --steps ≥ 2"),
             (["--clockwork", str(tmp_path)], "is not a training run directory"),
             (["--clockwork", str(run_dir)], "holds no Clockwork adaptor"),
             (["--clockwork", "identity", "--clock", "0"], "must be ≥ 1")]
    code = ("import sys\nfrom mvd_jax.sample import main\n"
            "for args in eval(sys.argv[1]):\n"
            "    try:\n        main(args)\n    except SystemExit as e:\n        print('exit', e.code, flush=True)\n")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("MVD_JAX_VERBOSE_ERRORS", None)
    proc = subprocess.run([sys.executable, "-c", code, repr([base + extra for extra, _ in cases])],
                          capture_output=True, text=True, env=env, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.stdout.split() == ["exit", "2"] * len(cases), proc.stderr[-2000:]
    assert len(errors) == len(cases), proc.stderr[-2000:]
    for line, (_, fragment) in zip(errors, cases):
        assert fragment in line, (fragment, line)


# ---- the distillation phase (train.phase clockwork) -----------------------------------------------------
CLOCKWORK_DEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                              "demo_clockwork.py")


def read_metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r for r in map(json.loads, f)}


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    """configs/demo_clockwork.py:micro (the committed demo UNet as the teacher, 4-level trajectories, 3 pairs per
    clip): stopped after 3 steps, then resumed to 6 in the same workdir. The step compiles once (the resumed run
    loads it from the test run's compilation cache), without LLVM's optimisations."""
    from mvd_jax.settings import load_config
    from mvd_jax.train import sharding
    from mvd_jax.train.trainer import train

    run = tmp_path_factory.mktemp("clockwork") / "run"
    logs = []
    mp = pytest.MonkeyPatch()
    mp.setattr(sharding, "step_compiler_options", lambda *a: dict(FAST_COMPILE))
    try:
        cfg = load_config(CLOCKWORK_DEMO + ":micro")
        cfg.train.steps = 3
        train(cfg, run, log=logs.append)
        cfg.train.steps = 6
        result = train(cfg, run, log=logs.append)
    finally:
        mp.undo()
    return SimpleNamespace(run=str(run), cfg=cfg, result=result, logs=[str(line) for line in logs])


def test_clockwork_phase_beats_reuse_and_resumes(distilled):
    """A fresh adaptor is the identity adaptor (ratio exactly 1 at the first steps: step 1 runs at learning rate 0);
    within 6 steps the adaptor's feature error on the training batches is well below the identity adaptor's.
    The run stopped at step 3 and continued from its checkpoint."""
    m = read_metrics(distilled.run)
    assert sorted(m) == [1, 2, 3, 4, 5, 6]
    assert m[1]["loss_ratio"] == pytest.approx(1.0, abs=1e-5) and m[2]["loss_ratio"] == pytest.approx(1.0, abs=1e-5)
    assert m[6]["loss"] < 0.85 * m[6]["identity_loss"], m[6]
    assert max(m[5]["loss_ratio"], m[6]["loss_ratio"]) < 0.9, (m[5], m[6])
    assert any("resumed from step 3" in line for line in distilled.logs)
    assert any("teacher: the UNet of" in line for line in distilled.logs)


def test_only_the_adaptor_trains_and_the_run_reads_back(distilled):
    """The optimizer holds the adaptor's parameters only; the teacher in the checkpoint is configs/demo_unet bit for
    bit; read_clockwork_run and load_adaptor (the sampler's --clockwork RUN_DIR) read the EMA adaptor back, and the
    clock sampler runs it at clock 2 (the adaptor's estimate, not the reuse of the previous features, on the step
    between the full ones). The phase's training pairs follow the teacher's trajectory step by step."""
    from mvd_jax.settings import unet_config
    from mvd_jax.train.clockwork_distill import PARAM_PREFIX, load_adaptor, read_clockwork_run, teacher_pairs
    from mvd_jax.train.model_state import ParamCodec, init_unet_from_svd

    cfg, state = distilled.cfg, distilled.result.state
    assert set(state["params"]) and all(k.startswith(PARAM_PREFIX) for k in state["params"])
    assert not any(k.startswith(PARAM_PREFIX) for k in distilled.result.frozen)
    unet_cfg = dataclasses.replace(unet_config(cfg), num_frames=cfg.frames)
    source = init_unet_from_svd(cfg.init_from, unet_cfg)
    expected = ParamCodec(source).to_dict(source)
    frozen = jax.device_get(distilled.result.frozen)
    assert set(frozen) == set(expected)
    for k, v in expected.items():
        np.testing.assert_array_equal(np.asarray(frozen[k]), np.asarray(v), err_msg=k)

    teacher, adaptor, run_cfg, step = read_clockwork_run(distilled.run)
    assert step == 6 and run_cfg.train.phase == "clockwork"
    assert adaptor.config == ClockworkConfig.for_unet(unet_cfg, "resnet", 1, 64)
    ema = jax.device_get(state["ema"])
    np.testing.assert_array_equal(np.asarray(adaptor.conv_up.kernel[...]), ema[PARAM_PREFIX + "conv_up/kernel"])
    assert np.abs(ema[PARAM_PREFIX + "conv_up/kernel"]).max() > 0  # it learned (conv_up starts at zero)
    for k, v in ParamCodec(teacher).to_dict(teacher).items():
        np.testing.assert_array_equal(np.asarray(v), np.asarray(expected[k]), err_msg=k)
    with pytest.raises(UserError, match="sits at cut_level 1, not 2"):
        load_adaptor(distilled.run, teacher.config, cut_level=2)
    loaded = load_adaptor(distilled.run, teacher.config)  # what `sample --clockwork RUN_DIR` loads
    assert loaded.config == adaptor.config
    np.testing.assert_array_equal(np.asarray(loaded.conv_up.kernel[...]), np.asarray(adaptor.conv_up.kernel[...]))

    # the clock sampler with it (the pipeline's loop: test_pipeline_samples_with_a_fresh_resnet_adaptor_…), and the
    # same program with conv_up zeroed (the identity adaptor's output): the adaptor's step makes a difference
    rng = np.random.default_rng(0)
    c = teacher.config.out_channels  # the demo's latent channels
    noise = jnp.asarray(rng.standard_normal((1, 4, 8, 16, c)), jnp.float32)
    cond = jnp.repeat(jnp.asarray(rng.standard_normal((1, 1, 8, 16, c)), jnp.float32), 4, axis=1)
    embeds = jnp.asarray(rng.standard_normal((1, 1, 32)), jnp.float32)
    ids = jnp.asarray([[6.0, 127.0, 0.02]], jnp.float32)
    graphdef, _ = nnx.split((teacher, loaded))

    sigmas = edm.karras_sigmas(3)

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def sample(state):
        parts = clockwork_parts(*nnx.merge(graphdef, state))
        return samplers.clockwork_euler_sample(parts, noise, sigmas, cond, embeds, ids, clock=2, max_scale=1.0)

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def trajectory(state):
        """The phase's training pairs of this noise, and the split forward of the trajectory's first step."""
        unet = nnx.merge(graphdef, state)[0]
        batch = {"latents": noise, "cond_latent": cond[:, 0], "image_embeds": embeds, "added_time_ids": ids}
        pairs = teacher_pairs(unet, batch, jax.random.key(0), sigmas=sigmas, cut_level=1, noise=noise)
        x0 = noise * np.sqrt(sigmas[0] ** 2 + 1.0)
        first = split_forward(unet, jnp.concatenate([edm.c_in(sigmas[0]) * x0, cond], -1),
                              jnp.full((1,), edm.c_noise(sigmas[0])), embeds, ids)
        return pairs, first

    latents = sample(nnx.state((teacher, loaded)))
    assert latents.shape == (1, 4, 8, 16, c) and np.all(np.isfinite(np.asarray(latents)))
    for var in (loaded.conv_up.kernel, loaded.conv_up.bias):
        var[...] = jnp.zeros_like(var[...])
    assert rel(latents, sample(nnx.state((teacher, loaded)))) > 1e-4

    # the pairs (t − 1 → t) chain the trajectory's steps: step 0's r_out is the first pair's input, each pair's target
    # the next pair's input
    pairs, (_, _, r_out_0) = trajectory(nnx.state((teacher, loaded)))
    np.testing.assert_array_equal(pairs.step, [1, 2])
    assert pairs.r_in.shape == (2, 1, 4, 4, 8, 64) and pairs.r_out.shape == (2, 1, 4, 8, 16, 128)
    assert rel(pairs.r_out_prev[0], r_out_0) <= 1e-5
    np.testing.assert_array_equal(pairs.r_out_prev[1], pairs.r_out[0])
    assert rel(pairs.r_out[1], pairs.r_out[0]) > 1e-3 and rel(pairs.temb[1], pairs.temb[0]) > 1e-3


def test_clockwork_phase_refuses_bad_settings(distilled, tmp_path):
    """One clear UserError each, before any run directory is made (or, resuming with another adaptor, before the
    checkpoint is read)."""
    from mvd_jax.settings import load_config, resolve
    from mvd_jax.train.trainer import train

    def refused(change, message, workdir=None):
        cfg = load_config(CLOCKWORK_DEMO + ":micro")
        change(cfg)
        with pytest.raises(UserError, match=message):
            train(resolve(cfg), workdir or tmp_path / "never", log=lambda *a: None)

    refused(lambda c: c.clockwork.update(kind="identity"), "'identity' has no parameters to train")
    refused(lambda c: c.clockwork.update(cut_level=2), r"clockwork.cut_level must be in 1..1 for this UNet")
    refused(lambda c: c.clockwork.update(pairs=4), r"clockwork.pairs must be ≤ clockwork.steps − 1 = 3")
    refused(lambda c: c.clockwork.update(channels=100), "clockwork: Clockwork adaptor channels must be a multiple of 32")
    refused(lambda c: c.clockwork.update(steps=1), "clockwork.steps must be in 2..1000")
    refused(lambda c: setattr(c, "init_from", ""), "init_from must name it")
    assert not (tmp_path / "never").exists()
    refused(lambda c: c.clockwork.update(channels=96), r"incompatible config \(clockwork.channels: checkpoint 64, "
            r"config 96\)", workdir=distilled.run)


def test_pair_steps_are_every_pair_or_a_sorted_draw():
    from mvd_jax.train.clockwork_distill import pair_steps

    np.testing.assert_array_equal(pair_steps(jax.random.key(0), 5), [1, 2, 3, 4])
    np.testing.assert_array_equal(pair_steps(jax.random.key(0), 5, 4), [1, 2, 3, 4])
    drawn = np.asarray(pair_steps(jax.random.key(1), 25, 6))
    assert len(set(drawn)) == 6 and np.all(np.diff(drawn) > 0) and drawn.min() >= 1 and drawn.max() <= 24
