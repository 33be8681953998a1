"""Clockwork Diffusion's model-step distillation at SVD size (mobilevd_paper.md §6.2; train.phase clockwork,
train/clockwork_distill.py): a ResNet adaptor at the paper's cut (below the UNet's top level: r_in is the
320-channel map at half the latent size, r_out the 640-channel map at the latent size; 24.8 M parameters) learns
the low-resolution features of a 25-step Euler trajectory from the previous step's, on the frozen UNet's own
trajectories with SVD's frame-wise guidance (1 → 3), conditioned on your clips' first frames, 14×512×256.

    python -m mvd_jax.train --config=configs/stages/clockwork.py --workdir=runs/clockwork/svd \\
        --config.init_from=SVD_DIR --config.autoencoder.checkpoint=SVD_DIR --config.data.videos=VIDEOS
    python -m mvd_jax.train --config=configs/stages/clockwork.py:lowres --workdir=runs/clockwork/lowres \\
        --config.autoencoder.checkpoint=SVD_DIR --config.data.videos=VIDEOS
    python -m mvd_jax.sample --checkpoint SVD_DIR --unet runs/clockwork/svd --clockwork runs/clockwork/svd \\
        --clock 2 --image in.png --out out.mp4 --height 256 --width 512 --frames 14

Arguments: `svd` (default) distils SVD's own UNet (init_from = the SVD folder, given on the command line);
`lowres` the first MobileVD stage's (configs/stages/mobilevd.py:lowres, runs/mobilevd/lowres: SVD finetuned at
512×256 with the optimized cross-attention). The later MobileVD stages are one-step generators
(adversarial): there is no trajectory to put a clock on. A run directory holds its teacher too, so
`--unet RUN` and `--clockwork RUN` can name the same run.

Our choices (the paper's are for SD: Adam, LR 1e-4, batch 16, 120 epochs over 50 K captions): LR 1e-4, batch 16,
10 k steps, EMA 0.999. Each step runs the teacher's whole trajectory — 25 steps × 2 guidance branches = 50 UNet
evaluations per clip (≈ 423 TFLOPs at 512×256), no backward — and the adaptor learns from `pairs` = 8 of its
24 step pairs (drawn per batch: a pair holds r_in, r_out^{t+1} and r_out^t of both branches, ≈ 78 M values per
clip at cut 1, so all 24 would keep ≈ 3.8 GB of bf16 features per clip, and the adaptor's backward pass as much
again). bf16 activations; the teacher FSDP-sharded like the MobileVD stages.
"""
import ml_collections

from mvd_jax.models.unet_config import UNetConfig
from mvd_jax.settings import resolve

TEACHERS = {"svd": ("", UNetConfig()),  # init_from: SVD_DIR on the command line
            "lowres": ("runs/mobilevd/lowres", UNetConfig(collapse_cross_attention=True))}


def get_config(teacher: str = "svd"):
    if teacher not in TEACHERS:
        raise ValueError(f"configs/stages/clockwork.py takes one of {tuple(TEACHERS)}, not {teacher!r}")
    init_from, model = TEACHERS[teacher]
    c = ml_collections.ConfigDict()
    c.name = f"clockwork_{teacher}"
    c.model = model.to_dict()
    c.frames, c.height, c.width = 14, 256, 512
    c.autoencoder = dict(kind="svd")
    c.data = dict(fps=7.0, crop="random", workers=8)
    c.init_from = init_from
    c.train = dict(phase="clockwork", steps=10_000, batch_size=16, dtype="bfloat16", checkpoint_every=500,
                   log_every=50, sample_every=2000)
    c.clockwork = dict(kind="resnet", cut_level=1, channels=0, num_res_blocks=2, steps=25, pairs=8,
                       min_guidance_scale=1.0, max_guidance_scale=3.0, clock=2)
    c.optimizer = dict(learning_rate=1e-4, warmup_steps=500, ema_decay=0.999)
    c.mesh = dict(data=1, fsdp=-1, tensor=1)
    return resolve(c)
