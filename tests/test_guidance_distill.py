"""MoViE's multimodal guidance distillation (issue 24 parts 4–5): the guidance-scale embedding, the offline edit
pairs, the editing phases (train.phase instruct_pix2pix → guidance_distill on configs/demo_movie.py's micro
size), the distilled student in the editing CLI, and the 3× FLOPs drop per step.

Kept small: one-level UNets, 3 training steps per phase, every step compiled without LLVM's optimisations.
"""
import dataclasses
import json
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mvd_jax.convert.diffusers_unet2d import unet2d_from_tensors, unet2d_to_tensors
from mvd_jax.data import edit_pairs
from mvd_jax.errors import UserError
from mvd_jax.models.unet2d_condition import UNet2DConditionModel
from mvd_jax.models.unet2d_config import UNet2DConditionConfig

DEMO_MOVIE = "configs/demo_movie.py"
FAST_COMPILE = {"xla_backend_optimization_level": 0}
# one level: down, mid and up res-blocks all take the guidance embedding
TINY = UNet2DConditionConfig(in_channels=8, out_channels=4, block_out_channels=(32,), layers_per_block=1,
                             down_block_types=("CrossAttnDownBlock2D",), up_block_types=("CrossAttnUpBlock2D",),
                             cross_attention_dim=16, attention_head_dim=2, norm_num_groups=8)


def read_metrics(run):
    with open(f"{run}/metrics.jsonl") as f:
        return {r["step"]: r for r in map(json.loads, f)}


# =============================================================================================
# The guidance embedding
# =============================================================================================
def test_student_starts_as_the_base_unet_and_then_reads_the_scales():
    """A base checkpoint loaded with guidance_scales=2 gets a fresh embedding and zero projections: its output
    equals the base UNet's bit for bit at any scales (batch 3, non-square latents, per-example timesteps). With
    one projection made non-zero the output depends on the scales, per example. Wrong uses are errors."""
    base = UNet2DConditionModel(TINY, rngs=nnx.Rngs(0))
    tensors = unet2d_to_tensors(base)
    student = unet2d_from_tensors(tensors, dataclasses.replace(TINY, guidance_scales=2), guidance_seed=3)
    x = jax.random.normal(jax.random.key(1), (3, 10, 6, 8))
    t = jnp.array([10.0, 500.0, 900.0])
    ctx = jax.random.normal(jax.random.key(2), (3, 5, 16))
    scales = jnp.array([[1.0, 2.0], [1.5, 7.5], [3.0, 14.0]])

    def outputs(base_state, student_state, scales):
        b, s = nnx.merge(nnx.graphdef(base), base_state), nnx.merge(nnx.graphdef(student), student_state)
        return b(x, t, ctx), s(x, t, ctx, guidance=scales), s(x, t, ctx, guidance=scales[::-1])

    args = (nnx.state(base), nnx.state(student), scales)
    both = jax.jit(outputs).lower(*args).compile(FAST_COMPILE)
    plain, guided, swapped = both(*args)
    assert float(jnp.max(jnp.abs(plain - guided))) == 0.0 and float(jnp.max(jnp.abs(plain - swapped))) == 0.0
    proj = student.down_blocks[0].resnets[0].guidance_emb_proj
    proj.kernel[...] = jax.random.normal(jax.random.key(4), proj.kernel.shape) * 0.1
    _, guided, swapped = both(nnx.state(base), nnx.state(student), scales)
    per_example = jnp.sqrt(jnp.mean(jnp.square(guided - plain), axis=(1, 2, 3)))
    assert float(jnp.min(per_example)) > 1e-4
    # the middle example's scales are the same in both orders: only the others move
    moved = jnp.sqrt(jnp.mean(jnp.square(guided - swapped), axis=(1, 2, 3)))
    assert float(moved[1]) == 0.0 and float(jnp.min(moved[jnp.array([0, 2])])) > 1e-4

    with pytest.raises(ValueError, match="reads 2 guidance scale"):
        student(x, t, ctx)
    with pytest.raises(ValueError, match="without a guidance embedding"):
        base(x, t, ctx, guidance=scales)
    partial = {k: v for k, v in unet2d_to_tensors(student).items() if "mlp.linear_1" not in k}
    with pytest.raises(UserError, match="guidance_embedding"):
        unet2d_from_tensors(partial, dataclasses.replace(TINY, guidance_scales=2))
    with pytest.raises(UserError, match="guidance_scales"):
        UNet2DConditionConfig.from_dict({**TINY.to_diffusers_dict(), "guidance_scales": -1})


def test_svd_student_starts_as_the_base_unet():
    """The same for SVD's UNet (one level, temporal blocks): loaded with guidance_scales=1 from a base UNet's
    tensors, it equals the base bit for bit (batch 2, 3 frames, per-clip scales); guidance is then required."""
    from mvd_jax.models import UNetConfig
    from mvd_jax.models.unet import SpatioTemporalUNet
    from mvd_jax.models.unet_tensors import unet_from_tensors, unet_to_tensors

    c = UNetConfig(down_block_types=("CrossAttnDownBlockSpatioTemporal",), up_block_types=("CrossAttnUpBlockSpatioTemporal",),
                   block_out_channels=(32,), num_attention_heads=2, cross_attention_dim=32, addition_time_embed_dim=8,
                   projection_class_embeddings_input_dim=24, layers_per_block=1)
    base = SpatioTemporalUNet(c, rngs=nnx.Rngs(0))
    student = unet_from_tensors(unet_to_tensors(base), dataclasses.replace(c, guidance_scales=1), guidance_seed=2)
    x = jax.random.normal(jax.random.key(1), (2, 3, 6, 10, 8))
    args = (x, jnp.array([0.3, -0.5]), jax.random.normal(jax.random.key(2), (2, 1, 32)), jnp.ones((2, 3)))

    def outputs(base_state, student_state):
        b, s = nnx.merge(nnx.graphdef(base), base_state), nnx.merge(nnx.graphdef(student), student_state)
        return b(*args), s(*args, guidance=jnp.array([[2.0], [3.0]]))

    states = (nnx.state(base), nnx.state(student))
    plain, guided = jax.jit(outputs).lower(*states).compile(FAST_COMPILE)(*states)
    assert float(jnp.max(jnp.abs(plain - guided))) == 0.0
    with pytest.raises(ValueError, match="reads 1 guidance scale"):
        student(*args)


# =============================================================================================
# The offline edit pairs
# =============================================================================================
def test_programmatic_edits_against_numpy():
    """Every edit against a float64 NumPy version of its formula on random non-square images, per-image choice."""
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (len(edit_pairs.EDITS), 7, 9, 3)).astype(np.float32)
    out = np.asarray(edit_pairs.apply_edits(jnp.asarray(images), jnp.arange(len(edit_pairs.EDITS))), np.float64)
    p = (images.astype(np.float64) + 1) / 2

    def blur(q):
        padded = np.pad(q, ((2, 2), (2, 2), (0, 0)), mode="edge")
        return np.mean([padded[i:i + q.shape[0], j:j + q.shape[1]] for i in range(5) for j in range(5)], axis=0)

    expect = {"make it brighter": lambda q: 0.4 + 0.6 * q, "make it darker": lambda q: 0.5 * q,
              "make it black and white": lambda q: np.repeat((q @ [0.299, 0.587, 0.114])[..., None], 3, -1),
              "invert the colors": lambda q: 1 - q, "make it red": lambda q: q * [0.7, 0.4, 0.4] + [0.3, 0, 0],
              "make it blue": lambda q: q * [0.4, 0.4, 0.7] + [0, 0, 0.3], "blur it": blur,
              "flip it upside down": lambda q: q[::-1]}
    assert list(expect) == list(edit_pairs.INSTRUCTIONS)
    for i, (name, fn) in enumerate(expect.items()):
        np.testing.assert_allclose(out[i], np.clip(fn(p[i]), 0, 1) * 2 - 1, atol=2e-6, err_msg=name)
    ids = edit_pairs.instruction_ids(edit_pairs.byte_tokenizer(24))
    assert ids.shape == (len(edit_pairs.EDITS) + 1, 24) and len({tuple(r) for r in ids}) == len(ids)


def test_triplet_loader_reads_resizes_and_refuses(tmp_path):
    """data/edit_triplets.py: the manifest's images come back resized/cropped to the asked size in [−1, 1] with
    the instruction's token ids, every triplet once per epoch; bad manifests are UserErrors naming the line."""
    from mvd_jax.data.edit_triplets import TripletLoader, read_triplets, load_image

    manifest, frames, which = write_triplets(tmp_path / "t")
    tokenizer = edit_pairs.byte_tokenizer(24)
    records = read_triplets(manifest)
    loader = TripletLoader(records, lambda s: tokenizer([s]).input_ids[0], height=32, width=48, batch_size=3,
                           seed=1, num_epochs=1)
    batches = list(loader)
    assert len(batches) == 2 and batches[0]["input"].shape == (3, 32, 48, 3) and batches[0]["ids"].shape == (3, 24)
    ids = {tuple(r) for b in batches for r in b["ids"]}
    assert ids == {tuple(tokenizer([edit_pairs.INSTRUCTIONS[w]]).input_ids[0]) for w in which}
    first = load_image(records[0]["input"], 40, 70)  # the stored size: the pixels themselves
    np.testing.assert_allclose(first, frames[0] / 127.5 - 1, atol=1e-6)
    for text, match in (('{"input": "a.png"}', ":1: a triplet needs"), ("not json", ":1: not valid JSON"), ("", "no triplet")):
        (tmp_path / "bad.jsonl").write_text(text)
        with pytest.raises(UserError, match=match):
            read_triplets(tmp_path / "bad.jsonl")
    with pytest.raises(UserError, match="cannot read the triplet image"):
        load_image(str(tmp_path / "none.png"), 8, 8)


def test_guided_eps_is_the_three_branch_formula():
    """edit_training.guided_eps (the teacher) and guidance_distill.student_eps against separate calls, with a
    stand-in UNet whose output depends on the input image latent, the text and the timestep."""
    from mvd_jax.train.edit_training import guided_eps

    def fake_unet(inputs, t, context, guidance=None):
        x, image = jnp.split(inputs, 2, axis=-1)
        return 0.5 * x + jnp.tanh(image) * jnp.mean(context, axis=(1, 2))[:, None, None, None] + t[:, None, None, None] / 1e3

    k = jax.random.split(jax.random.key(0), 4)
    x, il = jax.random.normal(k[0], (2, 3, 5, 4)), jax.random.normal(k[1], (2, 3, 5, 4))
    text, empty = jax.random.normal(k[2], (2, 6, 8)), jax.random.normal(k[3], (2, 6, 8))
    s_i, s_t = jnp.array([1.5, 2.0]), jnp.array([7.5, 3.0])
    got, full = guided_eps(fake_unet, x, il, 400.0, text, empty, s_i, s_t)
    t = jnp.full((2,), 400.0)
    f = lambda image, ctx: np.asarray(fake_unet(jnp.concatenate([x, image], -1), t, ctx), np.float64)
    e_full, e_img, e_unc = f(il, text), f(il, empty), f(jnp.zeros_like(il), empty)
    si, st = np.asarray(s_i)[:, None, None, None], np.asarray(s_t)[:, None, None, None]
    np.testing.assert_allclose(np.asarray(got), e_unc + si * (e_img - e_unc) + st * (e_full - e_img), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(full), e_full, rtol=1e-6)


# =============================================================================================
# The phases, the student read back, the CLI
# =============================================================================================
def write_triplets(folder, count: int = 6):
    """A triplet manifest (data/edit_triplets.py) of real frames (odd sizes, 40×70, resized by the loader) and
    their programmatic edits, written as PNG files; returns (manifest path, the input frames, the edit indices)."""
    from PIL import Image

    from mvd_jax.data.manifest import demo_videos_dir
    from mvd_jax.data.video_decode import read_frames

    frames = read_frames(demo_videos_dir() / "carphone_pristine.mp4", range(0, 10 * count, 10))[:, :40, :70]
    which = np.arange(count) % len(edit_pairs.EDITS)
    edited = np.asarray(edit_pairs.apply_edits(jnp.asarray(frames / 127.5 - 1, jnp.float32), jnp.asarray(which)))
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        Image.fromarray(frames[i]).save(folder / f"{i}_in.png")
        Image.fromarray(np.round((edited[i] + 1) * 127.5).astype(np.uint8)).save(folder / f"{i}_out.png")
        lines.append(json.dumps({"input": f"{i}_in.png", "edited": f"{i}_out.png",
                                 "instruction": edit_pairs.INSTRUCTIONS[which[i]]}))
    (folder / "triplets.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "triplets.jsonl", frames, which


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """configs/demo_movie.py:micro_teacher (3 steps from scratch) on a triplet manifest of real frames, then
    :micro_distill from it (3 steps) on the bundled clips' frames with programmatic edits: both data paths."""
    from mvd_jax.settings import load_config
    from mvd_jax.train import sharding
    from mvd_jax.train.trainer import train

    root = tmp_path_factory.mktemp("movie")
    manifest, _, _ = write_triplets(root / "triplets")
    logs = []
    mp = pytest.MonkeyPatch()
    mp.setattr(sharding, "step_compiler_options", lambda *a: dict(FAST_COMPILE))
    try:
        teacher_cfg = load_config(DEMO_MOVIE + ":micro_teacher")
        teacher_cfg.edit.triplets = str(manifest)
        teacher = train(teacher_cfg, root / "teacher", log=logs.append)
        cfg = load_config(DEMO_MOVIE + ":micro_distill")
        cfg.init_from = str(root / "teacher")
        cfg.train.sample_at_end = True
        distilled = train(cfg, root / "distill", log=logs.append)
    finally:
        mp.undo()
    return SimpleNamespace(teacher=str(root / "teacher"), distill=str(root / "distill"), cfg=cfg, root=root,
                           teacher_result=teacher, result=distilled, logs=[str(line) for line in logs])


def test_distillation_starts_at_the_conditional_model_and_moves_towards_the_teacher(runs):
    """Step 1 (learning rate 0 in the warm-up) is the conditional-only model: the loss equals baseline_loss (up to
    float32 rounding: the teacher's conditional branch runs batched with the other two; the student's bit-exact
    start is test_student_starts_as_the_base_unet_and_then_reads_the_scales).
    After 3 steps the student's error to the 3-pass ε̃ is below the conditional-only model's on the same draws.
    The teacher phase's loss is finite and its EMA differs from its start; the sample sheet was written."""
    m = read_metrics(runs.distill)
    assert sorted(m) == [1, 2, 3]
    assert m[1]["loss"] == pytest.approx(m[1]["baseline_loss"], rel=1e-5), m[1]
    assert m[3]["loss_ratio"] < 0.95, m[3]
    t = read_metrics(runs.teacher)
    assert sorted(t) == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in t.values())
    assert any("conditional only sheet" in line and line.rstrip().endswith("dB)") for line in runs.logs)
    assert (runs.root / "distill" / "samples" / "step_0000003.png").is_file()


def test_only_the_student_trains_and_reads_back(runs):
    """The trained set is the student's parameters (the guidance weights among them); the frozen teacher in the
    checkpoint is the teacher run's EMA UNet bit for bit; read_student gives the EMA student."""
    from mvd_jax.train import guidance_distill as gd
    from mvd_jax.train.edit_training import load_editing_unet
    from mvd_jax.train.model_state import ParamCodec

    state, frozen = runs.result.state, runs.result.frozen
    assert all(not k.startswith(gd.TEACHER_PREFIX) for k in state["params"])
    assert any("guidance_emb_proj" in k for k in state["params"]) and "guidance_embedding/mlp/linear_1/kernel" in state["params"]
    assert frozen and all(k.startswith(gd.TEACHER_PREFIX) for k in frozen)
    teacher = load_editing_unet(runs.cfg, runs.teacher)
    for k, v in ParamCodec(teacher).to_dict(teacher).items():
        np.testing.assert_array_equal(np.asarray(frozen[gd.TEACHER_PREFIX + k]), np.asarray(v))
    student, cfg, step = gd.read_student(runs.distill)
    assert step == 3 and student.config.guidance_scales == 2
    for k, v in ParamCodec(student).to_dict(student).items():
        np.testing.assert_array_equal(np.asarray(v), np.asarray(state["ema"][k]))


def test_edit_cli_runs_the_distilled_student_on_a_real_clip(runs, tmp_path, capsys):
    """`mvd_jax.edit --distilled RUN`: one UNet pass per step, an mp4 with the input's frame count and size; its
    errors name the problem before any model is loaded."""
    from mvd_jax import edit
    from mvd_jax.data.manifest import demo_videos_dir
    from mvd_jax.data.video_decode import probe

    source = demo_videos_dir() / "carphone_pristine.mp4"
    out = tmp_path / "red.mp4"
    edit.main(["--distilled", runs.distill, "--video", str(source), "--prompt", "make it red", "--out", str(out),
               "--frames", "3", "--height", "32", "--width", "64", "--steps", "2", "--batch_frames", "3"])
    assert "distilled: 1 UNet pass per step" in capsys.readouterr().out
    info = probe(out, count_frames=True)
    assert (info.num_frames, info.width, info.height) == (3, 64, 32)
    for argv, match in ((["--distilled", runs.teacher], "not a 'guidance_distill'"),
                        (["--distilled", runs.distill, "--checkpoint", str(tmp_path)], "exactly one of"),
                        ([], "exactly one of")):
        with pytest.raises(SystemExit) as e:
            edit.main([*argv, "--video", str(source), "--prompt", "x", "--out", str(tmp_path / "x.mp4")])
        assert e.value.code == 2 and match in capsys.readouterr().err, argv


def test_per_step_flops_drop_three_times():
    """The UNet FLOPs of one sampling step (paper convention, from the jaxpr): the 3-pass guided teacher vs the
    student's one pass — 3× up to the guidance embedding's few matrix-vector products."""
    from mvd_jax.eval.flops import jaxpr_flops
    from mvd_jax.train.edit_training import guided_eps
    from mvd_jax.train.guidance_distill import student_eps

    teacher, t_state = nnx.split(nnx.eval_shape(lambda: UNet2DConditionModel(TINY, rngs=nnx.Rngs(0))))
    student, s_state = nnx.split(nnx.eval_shape(lambda: UNet2DConditionModel(
        dataclasses.replace(TINY, guidance_scales=2), rngs=nnx.Rngs(0))))
    x = jax.ShapeDtypeStruct((1, 16, 24, 4), jnp.float32)
    ctx = jax.ShapeDtypeStruct((1, 7, 16), jnp.float32)
    three = jaxpr_flops(jax.make_jaxpr(lambda st, x, il, c: guided_eps(
        nnx.merge(teacher, st), x, il, 500.0, c, c, 1.5, 7.5)[0])(t_state, x, x, ctx))
    one = jaxpr_flops(jax.make_jaxpr(lambda st, x, il, c: student_eps(
        nnx.merge(student, st), x, il, 500.0, c, 1.5, 7.5))(s_state, x, x, ctx))
    assert 2.9 < three / one <= 3.0, (three, one)


def test_editing_phases_refuse_bad_settings():
    from mvd_jax.settings import load_config, resolve

    base = load_config(DEMO_MOVIE + ":micro_distill")
    cases = [({"init_from": ""}, "init_from must name"),
             ({"autoencoder.kind": "svd"}, "autoencoder.kind must be 'pixel' or 'sd_vae'"),
             ({"guidance.image_min": 4.0}, "image_min 4.0 > "),
             ({"edit.text_hidden_size": 48}, "cross_attention_dim 32 must equal edit.text_hidden_size"),
             ({"model.guidance_scales": 2}, "must stay 0"),
             ({"model.attention_head_dim": 3}, "not divisible by its 3 attention heads")]
    for overrides, match in cases:
        cfg = base.copy_and_resolve_references()
        for key, value in overrides.items():
            node = cfg
            *path, leaf = key.split(".")
            for part in path:
                node = node[part]
            node[leaf] = value
        with pytest.raises(UserError, match=match):
            resolve(cfg)


# =============================================================================================
# SVD's frame-wise guidance, the same mechanism
# =============================================================================================
def test_svd_variant_starts_at_the_conditional_model_and_learns(tmp_path):
    """configs/demo_guidance.py:micro (the committed demo UNet as the teacher, 4 frames of 32×64): step 1 is the
    conditional model (loss == baseline_loss up to float32 rounding: the teacher's conditional branch runs in a
    batch with the unconditional one, so XLA may sum in another order), step 3's loss is below the baseline; only the student
    trains; `--unet RUN` reading (stages.read_run_unet) gives the student, which reads one scale."""
    from mvd_jax.settings import load_config
    from mvd_jax.train import sharding, stages
    from mvd_jax.train.guidance_distill import TEACHER_PREFIX
    from mvd_jax.train.trainer import train

    logs = []
    mp = pytest.MonkeyPatch()
    mp.setattr(sharding, "step_compiler_options", lambda *a: dict(FAST_COMPILE))
    try:
        cfg = load_config("configs/demo_guidance.py:micro")  # no sample video: the demo run writes one (README)
        result = train(cfg, tmp_path / "run", log=logs.append)
    finally:
        mp.undo()
    m = read_metrics(tmp_path / "run")
    assert m[1]["loss"] == pytest.approx(m[1]["baseline_loss"], rel=1e-5), m[1]
    assert m[3]["loss_ratio"] < 0.999, m[3]
    assert all(not k.startswith(TEACHER_PREFIX) for k in result.state["params"])
    assert any("guidance_emb_proj" in k for k in result.state["params"])
    student, _, step = stages.read_run_unet(tmp_path / "run")
    assert step == 3 and student.config.guidance_scales == 1
    with pytest.raises(UserError, match="image-editing UNet"):
        stages.read_run_unet(_movie_run_dir(tmp_path))


def _movie_run_dir(tmp_path):
    """A run directory whose config says instruct_pix2pix (only its config is read)."""
    from mvd_jax.settings import load_config
    from mvd_jax.train.checkpoint import CheckpointManager

    run = tmp_path / "movie_run"
    CheckpointManager(run / "checkpoints").save_config(load_config(DEMO_MOVIE + ":micro_teacher"))
    return run
