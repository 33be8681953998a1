"""MoViE's editing loop (diffusion/edit_pipeline.py, mvd_jax/edit.py) against diffusers:

- the discrete Euler samplers vs diffusers' EulerDiscreteScheduler / EulerAncestralDiscreteScheduler,
- the editing loop with cross-frame attention off vs StableDiffusionInstructPix2PixPipeline frame by frame on
  the same noise (a tiny random pipeline folder, tests/movie_oracle.py),
- cross-frame attention: the anchor frame is edited as on its own, the others are not, and the result does not
  depend on how frames are grouped into UNet batches,
- the editing CLI end to end on a real clip.
"""
import numpy as np
import pytest
import torch

from movie_oracle import IP2P_SCHEDULER, tiny_ip2p_pipeline
from mvd_jax.diffusion import discrete_euler as de
from mvd_jax.errors import UserError
from oracle import rel_l2

@pytest.mark.parametrize("kind", ["EulerAncestralDiscreteScheduler", "EulerDiscreteScheduler"])
@pytest.mark.parametrize("spacing,prediction", [("linspace", "epsilon"), ("leading", "v_prediction"),
                                                ("trailing", "epsilon")])
def test_discrete_euler_steps_equal_diffusers(kind, spacing, prediction):
    import diffusers

    d = dict(IP2P_SCHEDULER, _class_name=kind, timestep_spacing=spacing, prediction_type=prediction)
    theirs = getattr(diffusers, kind).from_config({k: v for k, v in d.items() if k != "_class_name"})
    config = de.DiscreteEulerConfig.from_dict(d)
    steps = 7
    theirs.set_timesteps(steps)
    ours = de.plan(config, steps)
    np.testing.assert_array_equal(ours.timesteps, theirs.timesteps.numpy())
    np.testing.assert_allclose(ours.sigmas, theirs.sigmas.numpy(), rtol=1e-6)
    assert ours.init_noise_sigma == pytest.approx(float(theirs.init_noise_sigma), rel=1e-6)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5, 4)).astype(np.float32) * ours.init_noise_sigma
    gen, replay = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    xt = torch.from_numpy(x)
    for i, t in enumerate(theirs.timesteps):  # each step from diffusers' state, so errors do not accumulate
        out = rng.standard_normal(x.shape).astype(np.float32)
        x = xt.numpy()
        scaled = theirs.scale_model_input(xt, t)
        np.testing.assert_allclose(np.asarray(de.scale_input(x, ours.sigmas[i])), scaled.numpy(), rtol=1e-6)
        xt = theirs.step(torch.from_numpy(out), t, xt, generator=gen).prev_sample
        noise = torch.randn(x.shape, generator=replay).numpy() if config.kind == "euler_ancestral" else None
        x = np.asarray(de.step(config, x, out, ours.sigmas[i], ours.sigmas[i + 1], noise))
        assert np.linalg.norm(x - xt.numpy()) <= 1e-6 * np.linalg.norm(xt.numpy()), (i, spacing, prediction)


def test_scheduler_config_errors_are_clear(tmp_path):
    with pytest.raises(UserError, match="DDIMScheduler.*not supported"):
        de.DiscreteEulerConfig.from_dict(dict(IP2P_SCHEDULER, _class_name="DDIMScheduler"))
    with pytest.raises(UserError, match="use_karras_sigmas"):
        de.DiscreteEulerConfig.from_dict(dict(IP2P_SCHEDULER, use_karras_sigmas=True))
    with pytest.raises(UserError, match="unknown scheduler config key.*'betas'"):
        de.DiscreteEulerConfig.from_dict(dict(IP2P_SCHEDULER, betas=1))
    with pytest.raises(UserError, match="no scheduler/scheduler_config.json"):
        de.DiscreteEulerConfig.from_folder(tmp_path)
    with pytest.raises(UserError, match="steps must be ≥ 1"):
        de.plan(de.DiscreteEulerConfig(), 0)


# ---- the editing loop ----------------------------------------------------------------------------
PROMPT = "make it snow"
STEPS = 3


@pytest.fixture(scope="module")
def ip2p(tmp_path_factory):
    from mvd_jax.diffusion.edit_pipeline import VideoEditor

    folder = tmp_path_factory.mktemp("ip2p")
    pipe = tiny_ip2p_pipeline(folder)
    return pipe, VideoEditor.from_folder(folder), folder


@pytest.fixture(scope="module")
def clip():
    """5 frames of a real video, 24×36 (non-square; latents 12×18)."""
    from PIL import Image

    from mvd_jax.data.manifest import demo_videos_dir
    from mvd_jax.data.video_decode import read_frames

    frames = read_frames(demo_videos_dir() / "carphone_pristine.mp4", range(0, 50, 10))
    return np.stack([np.asarray(Image.fromarray(f).resize((36, 24), Image.BICUBIC)) for f in frames])


def _noise(frames: int, shape, steps: int):
    """Per frame, what diffusers draws from torch.Generator().manual_seed(frame): the initial latents, then one
    draw per ancestral step; as (latents (F, h, w, c), step_noise(i))."""
    draws = []
    for f in range(frames):
        g = torch.Generator().manual_seed(f)
        draws.append([torch.randn(shape, generator=g).numpy()[0].transpose(1, 2, 0) for _ in range(steps + 1)])
    latents = np.stack([d[0] for d in draws])
    return latents, lambda i: np.stack([d[i + 1] for d in draws])


def test_editing_loop_equals_diffusers_pipeline_frame_by_frame(ip2p, clip):
    """Cross-frame attention off: each frame as diffusers' pipeline edits it alone (3-way guidance, Euler
    ancestral, same noise), latents ≤ 1e-4 relative; decoding diffusers' latents gives its frames (±1 level)."""
    from PIL import Image

    from mvd_jax.diffusion.edit_pipeline import EditOptions

    pipe, editor, _ = ip2p
    o = EditOptions(steps=STEPS, image_guidance_scale=1.5, text_guidance_scale=7.5, batch_frames=3, cross_frame=False)
    frames = clip[:3]
    latents, step_noise = _noise(len(frames), (1, 4, 12, 18), STEPS)
    ours = np.asarray(editor.edit_latents(frames, PROMPT, o, latents=latents, step_noise=step_noise))
    for f, frame in enumerate(frames):
        with torch.no_grad():
            theirs = pipe(PROMPT, image=Image.fromarray(frame), num_inference_steps=STEPS, image_guidance_scale=1.5,
                          guidance_scale=7.5, generator=torch.Generator().manual_seed(f), output_type="latent").images
        err = rel_l2(ours[f], theirs.numpy()[0].transpose(1, 2, 0))
        print(f"frame {f}: latents rel L2 {err:.2e}")
        assert err <= 1e-4
        if f == 0:  # decoding: ours from diffusers' latents vs diffusers' own post-processing
            with torch.no_grad():
                image = pipe.vae.decode(theirs / pipe.vae.config.scaling_factor).sample
            want = pipe.image_processor.postprocess(image, output_type="np")[0]
            got = editor.decode(theirs.numpy().transpose(0, 2, 3, 1))[0]
            assert np.abs(got.astype(np.int32) - np.round(want * 255).astype(np.int32)).max() <= 1


def test_cross_frame_attention_ties_frames_to_the_anchor(ip2p, clip):
    """With cross-frame attention the anchor (middle) frame is edited exactly as on its own, every other frame
    differently; grouping 5 frames into UNet batches of 3 (anchor + 2, two groups, the last topped up) gives what
    one batch of all 5 gives."""
    from mvd_jax.diffusion.edit_pipeline import EditOptions, frame_groups

    _, editor, _ = ip2p
    latents, step_noise = _noise(5, (1, 4, 12, 18), STEPS)
    run = lambda **kw: np.asarray(editor.edit_latents(clip, PROMPT, EditOptions(steps=STEPS, **kw), latents=latents,
                                                      step_noise=step_noise))
    alone = run(batch_frames=3, cross_frame=False)
    tied = run(batch_frames=3)
    groups, anchor = frame_groups(5, 3, True)
    assert anchor == 2 and groups.tolist() == [[0, 2, 1], [3, 2, 4]]
    assert rel_l2(tied[anchor], alone[anchor]) <= 1e-5
    for f in (0, 1, 3, 4):
        assert rel_l2(tied[f], alone[f]) > 1e-3, f
    one_batch = run(batch_frames=5)
    assert rel_l2(one_batch, tied) <= 1e-5
    # uneven: 4 others in groups of 3 → [0, a, 1], [3, a, 4] with a = 2; 6 frames → a = 3, last group topped up
    assert frame_groups(6, 3, True)[0].tolist() == [[0, 3, 1], [2, 3, 4], [5, 3, 5]]


def test_edit_cli_end_to_end_on_a_real_clip(ip2p, clip, tmp_path, capsys):
    """python -m mvd_jax.edit on a 5-frame real clip (the fixture's frames, 36×24: the sizes the tests above
    compiled): an mp4 with the input's frame count and size."""
    from mvd_jax import edit
    from mvd_jax.data.video_decode import probe
    from mvd_jax.video_io import write_video

    _, _, folder = ip2p
    source = tmp_path / "in.mp4"
    write_video(source, clip, 10)
    out = tmp_path / "edited.mp4"
    edit.main(["--checkpoint", str(folder), "--video", str(source), "--prompt", PROMPT, "--out", str(out),
               "--steps", "2", "--batch_frames", "3"])
    info = probe(out, count_frames=True)
    assert (info.num_frames, info.width, info.height) == (5, 36, 24)
    assert "wrote" in capsys.readouterr().out
    for argv, message in (
            (["--video", str(tmp_path / "none.mp4")], "none.mp4"),
            (["--checkpoint", str(tmp_path)], "not an InstructPix2Pix pipeline folder.*unet/"),
            (["--height", "31"], "multiples of 2")):
        base = {"--checkpoint": str(folder), "--video": str(source), "--prompt": PROMPT,
                "--out": str(tmp_path / "x.mp4")}
        base.update(dict(zip(argv[::2], argv[1::2])))
        with pytest.raises(SystemExit) as e:
            edit.main([a for kv in base.items() for a in kv])
        assert e.value.code == 2 and __import__("re").search(message, capsys.readouterr().err), argv
        assert not (tmp_path / "x.mp4").exists()
