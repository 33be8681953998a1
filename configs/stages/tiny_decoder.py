"""The tiny temporal decoder for the phone (MobileVD Table 9, MoViE §6.1): TAESD's layout with temporal mixing,
distilled from SVD's temporal VAE decoder on its own encodings of your clips (train/decoder_distill.py).

    python -m mvd_jax.train --config=configs/stages/tiny_decoder.py --workdir=runs/mobilevd/tiny_decoder \\
        --config.autoencoder.checkpoint=SVD_DIR --config.data.videos=VIDEOS
    python -m mvd_jax.sample --unet RUN --decoder tiny:runs/mobilevd/tiny_decoder ...     # sample with it
    python -m export.tflite --run RUN --decoder tiny:runs/mobilevd/tiny_decoder --components vae_decoder_tiny

Starting from TAESD's published weights (a diffusers AutoencoderTiny folder, e.g. madebyollin/taesd; the
temporal mixers start at zero, i.e. as the per-frame TAESD) shortens it: --config.init_from=TAESD_DIR.
Step count, batch and learning rate are our choices (the paper publishes none): TAESD-sized decoders
converge in tens of thousands of steps; the teacher's decode is the step's main cost.
"""
import ml_collections

from mvd_jax.models.unet_config import UNetConfig
from mvd_jax.settings import resolve


def get_config():
    c = ml_collections.ConfigDict()
    c.name = "tiny_decoder"
    c.model = UNetConfig(collapse_cross_attention=True).to_dict()  # not trained here; the run's latents are SVD's
    c.frames, c.height, c.width = 14, 256, 512
    c.autoencoder = dict(kind="svd")
    c.data = dict(fps=7.0, crop="random", workers=8)
    c.train = dict(phase="decoder_distill", steps=50_000, batch_size=16, dtype="bfloat16", checkpoint_every=1000,
                   log_every=50, sample_every=5000)
    c.tiny_autoencoder = dict(width=64, encoder_blocks=(1, 3, 3, 3), decoder_blocks=(3, 3, 3, 1), temporal_mixing=True,
                              pixel_loss="l1", temporal_weight=1.0, encoder_weight=1.0)
    c.optimizer = dict(learning_rate=3e-4, warmup_steps=500, ema_decay=0.999)
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    return resolve(c)
