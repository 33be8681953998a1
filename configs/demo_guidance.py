"""Guidance distillation of SVD's frame-wise guidance at demo scale (train.phase guidance_distill with
guidance.model "svd"; train/guidance_distill.py): the committed pretrained demo UNet (configs/demo_unet/) samples
with 2 UNet passes per step (unconditional and conditional, mixed with a scale rising 1 → s over the frames); its
student reads s and does it in one. Trained on the bundled clips' training part at s ~ U[1, 3]:

    python -m mvd_jax.train --config=configs/demo_guidance.py --workdir=runs/demo_guidance
    python -m mvd_jax.sample --checkpoint RUN_OR_FOLDER ... --unet runs/demo_guidance --max_guidance_scale 2

The trainer logs the student's error to the teacher's guided denoiser (`loss`) beside the conditional-only
model's (`baseline_loss`, where the student starts: its guidance projections are zero) and their ratio; the
sample video holds the teacher's guided sample, the student's and the conditional-only one, from the same noise.

`micro` is the tests' size (tests/test_guidance_distill.py): the same teacher at 4 frames of 32×64, a few steps.
"""
from pathlib import Path

from mvd_jax.settings import load_config, resolve

HERE = Path(__file__).resolve().parent
ARGS = ("demo", "micro")


def get_config(arg: str = "demo"):
    if arg not in ARGS:
        raise ValueError(f"configs/demo_guidance.py takes one of {ARGS}, not {arg!r}")
    micro = arg == "micro"
    c = load_config(f"{HERE / 'demo.py'}:demo")  # the demo UNet, its clips and autoencoder
    c.name = f"demo_guidance{'_micro' if micro else ''}"
    c.init_from = str(HERE / "demo_unet")
    c.train.update(phase="guidance_distill", steps=3 if micro else 150, batch_size=2, log_every=1 if micro else 25,
                   checkpoint_every=3 if micro else 50, sample_every=0, sample_at_end=not micro,
                   sample_max_guidance_scale=2.0)
    c.guidance.update(model="svd", svd_scale_min=1.0, svd_scale_max=3.0)
    c.optimizer.update(learning_rate=1e-4, warmup_steps=1 if micro else 20, ema_decay=0.9 if micro else 0.99)
    if micro:
        c.frames, c.height, c.width = 4, 32, 64
        c.data.update(videos="demo", workers=0)
    return resolve(c)
