"""End to end: image → video equals diffusers' StableVideoDiffusionPipeline on the same tiny random
SVD folder (UNet + temporal VAE + CLIP image encoder), image and noise; and the sampling CLI."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import oracle

H, W, T = 32, 48, 5


@pytest.fixture(scope="module")
def svd_folder(tmp_path_factory):
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, StableVideoDiffusionPipeline
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from test_sampler_vs_diffusers import SVD_SCHEDULER

    unet = oracle.random_diffusers_unet(dict(oracle.SMALL_CONFIGS["tiny"], cross_attention_dim=16), seed=3)
    torch.manual_seed(0)
    vae = AutoencoderKLTemporalDecoder(block_out_channels=(32, 64), layers_per_block=1, latent_channels=4,
                                       down_block_types=("DownEncoderBlock2D",) * 2).eval()
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, projection_dim=16, num_hidden_layers=2, num_attention_heads=4,
        image_size=224, patch_size=32, hidden_act="gelu")).eval()
    with torch.no_grad():  # every parameter random, so nothing hides behind a default value
        for model in (vae, encoder):
            for name, p in model.named_parameters():
                p.copy_(torch.randn(p.shape) / np.sqrt(p[0].numel()) if p.ndim >= 2 else
                        (1 + 0.2 * torch.randn(p.shape) if "norm" in name and name.endswith("weight")
                         else 0.2 * torch.randn(p.shape)))
    pipe = StableVideoDiffusionPipeline(vae=vae, image_encoder=encoder, unet=unet,
                                        scheduler=EulerDiscreteScheduler.from_config(SVD_SCHEDULER),
                                        feature_extractor=CLIPImageProcessor())
    folder = tmp_path_factory.mktemp("svd")
    pipe.save_pretrained(folder)
    return pipe, folder


def _image(seed=0, size=(40, 30)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.mark.parametrize("steps,max_scale,chunk", [(3, 3.0, 2), (1, 1.0, 2), (1, 3.0, None)])
def test_pipeline_equals_diffusers(svd_folder, steps, max_scale, chunk):
    """Measured: 1.8e-6 (3 steps), 1.9e-5 / 1.4e-5 (1 step; diffusers' Euler step x + (0 − σ)(x − D)/σ at
    σ = 700 cancels digits in float32, ours too)."""
    from mvd_jax.diffusion.pipeline import ImageToVideo, SampleOptions

    pipe, folder = svd_folder
    image = _image(steps)
    latents = torch.randn((1, T, 4, H // 2, W // 2), generator=torch.Generator().manual_seed(1))
    image_noise = torch.randn((1, 3, H, W), generator=torch.Generator().manual_seed(0))  # the pipeline's first draw
    with torch.no_grad():
        expected = pipe(image, height=H, width=W, num_frames=T, num_inference_steps=steps, min_guidance_scale=1.0,
                        max_guidance_scale=max_scale, fps=7, motion_bucket_id=127, noise_aug_strength=0.02,
                        decode_chunk_size=chunk, generator=torch.Generator().manual_seed(0), latents=latents,
                        output_type="np").frames[0]

    ours = ImageToVideo.from_folder(folder)
    options = SampleOptions(num_frames=T, height=H, width=W, steps=steps, min_guidance_scale=1.0,
                            max_guidance_scale=max_scale, decode_chunk_size=chunk)
    got = ours(image, options, noise=latents.numpy().transpose(0, 1, 3, 4, 2),
               image_noise=image_noise.numpy().transpose(0, 2, 3, 1))
    assert got.shape == expected.shape == (T, H, W, 3)
    assert oracle.rel_l2(got, expected) <= 1e-4


def run_sample(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "mvd_jax.sample", *args], capture_output=True, text=True, env=env)


def test_sample_cli_writes_a_playable_mp4(svd_folder, tmp_path):
    import av

    _, folder = svd_folder
    _image(5).save(tmp_path / "in.png")
    out = tmp_path / "clip.mp4"
    proc = run_sample("--checkpoint", str(folder), "--image", str(tmp_path / "in.png"), "--out", str(out),
                      "--steps", "2", "--frames", "4", "--height", "32", "--width", "48")
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stdout and "sampling" in proc.stdout
    with av.open(str(out)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 4 and frames[0].shape == (32, 48, 3)


def test_sample_cli_takes_the_unet_of_a_training_run(svd_folder, tmp_path):
    """`--unet RUN_DIR`: a trainer run (here one diffusion step from the folder's own UNet, only conv_out
    trained to keep the compile small) supplies the UNet — its EMA weights — the folder the VAE and CLIP;
    the 1-step sample equals the pipeline run on that UNet directly."""
    import json

    import av
    import ml_collections

    from mvd_jax.diffusion.pipeline import ImageToVideo, SampleOptions
    from mvd_jax.train.stages import read_run_unet
    from mvd_jax.train.trainer import train

    _, folder = svd_folder
    model = {k: v for k, v in json.loads((folder / "unet" / "config.json").read_text()).items()
             if not k.startswith("_")}
    cfg = ml_collections.ConfigDict(dict(
        model=model, frames=2, height=32, width=48, init_from=str(folder),
        autoencoder=dict(kind="svd", checkpoint=str(folder)), data=dict(videos="demo", workers=0),
        train=dict(steps=1, batch_size=1, trainable="conv_out", sample_at_end=False, log_every=1),
        optimizer=dict(warmup_steps=1)))
    run = tmp_path / "run"
    train(cfg, run, log=lambda *a: None)
    unet = read_run_unet(run)[0]

    _image(6).save(tmp_path / "in.png")
    out = tmp_path / "one_step.mp4"
    proc = run_sample("--checkpoint", str(folder), "--unet", str(run), "--image", str(tmp_path / "in.png"),
                      "--out", str(out), "--steps", "1", "--frames", "2", "--height", "32", "--width", "48")
    assert proc.returncode == 0, proc.stderr
    assert "1 steps, no guidance" in proc.stdout
    with av.open(str(out)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 2 and frames[0].shape == (32, 48, 3)
    direct = ImageToVideo.from_folder(folder, unet=unet)(
        _image(6), SampleOptions(num_frames=2, height=32, width=48, steps=1, max_guidance_scale=1.0))
    # the file is H.264 with 4:2:0 chroma (the random model's colours do not survive it): compare luma,
    # measured 2.5 mean abs (of 255), correlation 0.996
    luma = np.asarray([0.299, 0.587, 0.114])
    got, want = np.asarray(frames, np.float64) @ luma, np.asarray(direct, np.float64) * 255 @ luma
    assert np.abs(got - want).mean() < 6 and np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.98
    bad = run_sample("--checkpoint", str(folder), "--unet", str(tmp_path / "nowhere"), "--image",
                     str(tmp_path / "in.png"), "--out", str(tmp_path / "x.mp4"))
    assert bad.returncode == 2 and "neither a trainer run directory" in bad.stderr


def test_sample_cli_decodes_with_a_tiny_decoder(svd_folder, tmp_path):
    """`--decoder tiny:FOLDER` (an AutoencoderTiny folder of the VAE's factor and latent channels) decodes the
    sampled latents instead of the VAE: the video equals the pipeline run with that decoder, and differs from
    the VAE's; a tiny decoder of another factor is refused before sampling."""
    import av
    from flax import nnx

    from mvd_jax.convert.diffusers_tiny_autoencoder import save_tiny_autoencoder
    from mvd_jax.diffusion.pipeline import ImageToVideo, SampleOptions
    from mvd_jax.models.tiny_autoencoder import TinyAutoencoder, TinyAutoencoderConfig

    _, folder = svd_folder  # its VAE: factor 2, 4 latent channels
    layout = lambda n: dict(encoder_block_out_channels=(8,) * n, decoder_block_out_channels=(8,) * n,
                            num_encoder_blocks=(1,) * n, num_decoder_blocks=(1,) * n, temporal_mixing=True)
    tiny = TinyAutoencoder(TinyAutoencoderConfig(**layout(2)), rngs=nnx.Rngs(4))
    save_tiny_autoencoder(tiny, tmp_path / "tiny")
    _image(7).save(tmp_path / "in.png")
    out = tmp_path / "tiny.mp4"
    args = ["--checkpoint", str(folder), "--image", str(tmp_path / "in.png"), "--steps", "1", "--frames", "2",
            "--height", "32", "--width", "48"]
    proc = run_sample(*args, "--out", str(out), "--decoder", f"tiny:{tmp_path / 'tiny'}")
    assert proc.returncode == 0, proc.stderr
    with av.open(str(out)) as container:
        frames = np.asarray([f.to_ndarray(format="rgb24") for f in container.decode(video=0)], np.float64)
    o = SampleOptions(num_frames=2, height=32, width=48, steps=1, max_guidance_scale=1.0)
    with_tiny = ImageToVideo.from_folder(folder, decoder=tiny)(_image(7), o)
    with_vae = ImageToVideo.from_folder(folder)(_image(7), o)
    luma = np.asarray([0.299, 0.587, 0.114])  # H.264 4:2:0: compare luma, as the UNet test does
    got = frames @ luma
    assert np.abs(got - np.asarray(with_tiny, np.float64) * 255 @ luma).mean() < 6
    assert np.abs(got - np.asarray(with_vae, np.float64) * 255 @ luma).mean() > 10

    save_tiny_autoencoder(TinyAutoencoder(TinyAutoencoderConfig(**layout(3)), rngs=nnx.Rngs(0)), tmp_path / "f4")
    bad = run_sample(*args, "--out", str(tmp_path / "bad.mp4"), "--decoder", f"tiny:{tmp_path / 'f4'}")
    assert bad.returncode == 2 and "factor 4; the autoencoder's are 4-channel at factor 2" in bad.stderr
    assert not (tmp_path / "bad.mp4").exists()


@pytest.mark.parametrize("case", ["missing_image", "unreadable_image", "no_vae", "bad_size", "bad_suffix"])
def test_sample_cli_errors(svd_folder, tmp_path, case):
    import shutil

    _, folder = svd_folder
    image = tmp_path / "in.png"
    _image().save(image)
    out = tmp_path / "out.mp4"
    args = dict(checkpoint=str(folder), image=str(image), out=str(out), height="32", width="48")
    if case == "missing_image":
        args["image"] = str(tmp_path / "nope.png")
    elif case == "unreadable_image":
        (tmp_path / "bad.png").write_bytes(b"not a png")
        args["image"] = str(tmp_path / "bad.png")
    elif case == "no_vae":
        partial = tmp_path / "partial"
        shutil.copytree(folder, partial)
        shutil.rmtree(partial / "vae")
        args["checkpoint"] = str(partial)
    elif case == "bad_size":
        args["height"] = "33"
    else:
        args["out"] = str(tmp_path / "out.avi")
    proc = run_sample(*[x for k, v in args.items() for x in (f"--{k}", v)], "--steps", "1", "--frames", "2")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert not any(p.suffix in (".mp4", ".avi") for p in tmp_path.iterdir())
