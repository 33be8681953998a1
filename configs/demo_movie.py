"""MoViE's editing UNet and its multimodal guidance distillation at demo scale (issue 24; train/edit_training.py,
train/guidance_distill.py), on the bundled real clips with programmatic edits (data/edit_pairs.py: brighter,
darker, black and white, inverted, red, blue, blurred, upside down), a small random CLIP text encoder on a byte
vocabulary, and the demo's whitened pixel-block latents (configs/demo.py's autoencoder):

    python -m mvd_jax.train --config=configs/demo_movie.py:teacher --workdir=runs/movie_teacher
    python -m mvd_jax.train --config=configs/demo_movie.py:distill --workdir=runs/movie_distill
    python bench/guidance_distill_demo.py --run runs/movie_distill --out bench/results/guidance_distill_demo.json
    python -m mvd_jax.edit --distilled runs/movie_distill --video VIDEO --prompt "make it red" --out red.mp4

`teacher` trains an InstructPix2Pix-style UNet from scratch on those triplets (with InstructPix2Pix's condition
dropout, so the guided sampler's unconditional branches exist); `distill` distils its 3-pass guidance
(s_I ~ U[1, 3], s_T ~ U[2, 14], the paper's ranges) into a 1-pass student that reads the scales. The sample
sheets (runs/*/samples/step_N.png) show input | teacher | student | conditional only.

`micro_teacher` / `micro_distill`: the tests' size (tests/test_guidance_distill.py): one level, 32×64 frames.
"""
from pathlib import Path

import ml_collections

from mvd_jax.settings import resolve

HERE = Path(__file__).resolve().parent
ARGS = ("teacher", "distill", "micro_teacher", "micro_distill")
TEXT_WIDTH = 32
TEACHER_STEPS = 1800


def unet(micro: bool, latent: int) -> dict:
    """The editing UNet (diffusers' UNet2DConditionModel keys): InstructPix2Pix's layout at demo widths."""
    if micro:
        levels = dict(down_block_types=["CrossAttnDownBlock2D"], up_block_types=["CrossAttnUpBlock2D"],
                      block_out_channels=[32], attention_head_dim=2)
    else:
        levels = dict(down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                      up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
                      block_out_channels=[64, 128, 128], attention_head_dim=[2, 4, 4])
    return dict(in_channels=2 * latent, out_channels=latent, layers_per_block=1, norm_num_groups=16 if micro else 32,
                cross_attention_dim=TEXT_WIDTH, **levels)


def get_config(arg: str = "teacher"):
    if arg not in ARGS:
        raise ValueError(f"configs/demo_movie.py takes one of {ARGS}, not {arg!r}")
    micro = arg.startswith("micro")
    distill = arg.endswith("distill")
    c = ml_collections.ConfigDict()
    c.name = f"demo_movie_{arg}"
    # the demo's latents (configs/demo.py): 4×4 pixel blocks whitened, 12 components; micro: raw blocks (48)
    latent = 48 if micro else 12
    c.model = unet(micro, latent)
    c.frames = 2  # frames per clip; every frame is one example with its own edit
    c.height, c.width = (32, 64) if micro else (64, 128)
    c.data = dict(videos="demo" if micro else "demo:train", fps=7.0, crop="random", workers=0 if micro else 1)
    c.autoencoder = dict(kind="pixel", pixel_factor=4, pixel_scaling_factor=1.0,
                         pixel_basis="" if micro else str(HERE / "demo_pixel_basis.npz"),
                         pixel_channels=0 if micro else 12)
    c.edit = dict(text_hidden_size=TEXT_WIDTH, text_layers=2, text_heads=2, max_length=24,
                  cond_dropout=0.1,  # twice InstructPix2Pix's 0.05: the demo's unconditional branches learn sooner
                  sample_steps=4 if micro else 10, sample_image_guidance=1.5, sample_text_guidance=7.5)
    c.train = dict(phase="guidance_distill" if distill else "instruct_pix2pix", batch_size=4 if micro else 8,
                   steps=3 if micro else (300 if distill else TEACHER_STEPS), log_every=1 if micro else 50,
                   checkpoint_every=3 if micro else 100, sample_every=0, sample_at_end=not micro)
    c.optimizer = dict(learning_rate=1e-3 if not distill else 3e-4, warmup_steps=1 if micro else 50,
                       ema_decay=0.9 if micro else 0.99)
    if not (micro or distill):  # the teacher: the learning rate decays linearly to a tenth over the last 600 steps
        c.optimizer.update(decay_start=TEACHER_STEPS - 600, decay_steps=600, decay_to=0.1)
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    if distill:
        c.init_from = "runs/movie_teacher"  # the teacher run (micro: the tests pass theirs)
    return resolve(c)
