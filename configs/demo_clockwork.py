"""Clockwork model-step distillation at demo scale (train.phase clockwork, train/clockwork_distill.py;
configs/stages/clockwork.py is the SVD-size one): an adaptor for the demo UNet learns, on the demo UNet's own
12-step Euler trajectories conditioned on the bundled clips' training part (demo:train), to estimate the
low-resolution features of a step from the previous step's. The teacher (`init_from`) is the committed
pretrained demo UNet (configs/demo_unet/, what the main job's first stage starts from), so this runs from a
clean checkout; --config.init_from=runs/demo distils the main job's finetuned one instead:

    python -m mvd_jax.train --config=configs/demo_clockwork.py --workdir=runs/demo_clockwork
    python bench/clockwork_demo.py --run runs/demo_clockwork --out runs/demo_clockwork/bench.json

The trainer logs the adaptor's feature error (`loss`) beside the identity adaptor's (`identity_loss`, reuse of
the previous step's features) and their ratio; its sample video holds the full sampler, clock 2 with the
identity adaptor and clock 2 with the trained adaptor, from the same noise.

The argument `micro` is the tests' size (tests/test_clockwork.py): the same teacher at 4 frames of 32×64 (the
demo's latents), 4-level trajectories, a 64-wide adaptor, a few steps.

The demo model is configs/demo.py's (its `demo` argument), read through mvd_jax.settings.load_config, so the two
stay one model.
"""
from pathlib import Path

from mvd_jax.settings import load_config, resolve

HERE = Path(__file__).resolve().parent
ARGS = ("demo", "micro")


def get_config(arg: str = "demo"):
    if arg not in ARGS:
        raise ValueError(f"configs/demo_clockwork.py takes one of {ARGS}, not {arg!r}")
    micro = arg == "micro"
    c = load_config(f"{HERE / 'demo.py'}:demo")  # the demo UNet, its clips and autoencoder
    c.name = f"demo_clockwork{'_micro' if micro else ''}"
    c.init_from = str(HERE / "demo_unet")
    c.prune_from_gates = False
    c.train.update(phase="clockwork", steps=6 if micro else 100, batch_size=2, log_every=1 if micro else 10,
                   checkpoint_every=3 if micro else 100, sample_every=0, sample_at_end=not micro)
    # the demo samples with 12 Euler steps and no guidance (configs/demo.py sample_steps; eval/demo_report.py)
    c.clockwork.update(kind="resnet", cut_level=1, channels=64 if micro else 0, steps=4 if micro else 12, pairs=0,
                       min_guidance_scale=1.0, max_guidance_scale=1.0, clock=2)
    c.optimizer.update(learning_rate=1e-3, warmup_steps=1 if micro else 20, ema_decay=0.9 if micro else 0.99)
    if micro:
        c.frames, c.height, c.width = 4, 32, 64
        c.data.update(videos="demo", workers=0)
    return resolve(c)
