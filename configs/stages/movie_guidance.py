"""MoViE's multimodal guidance distillation at full size (mobilevd_paper.md §6.1, Algorithm 1; train.phase
guidance_distill, train/guidance_distill.py): InstructPix2Pix's 3-pass guided UNet (SD-1.5 with 8 input
channels) distilled into a 1-pass student that reads s_I and s_T, on (image, instruction, edited image) triplets:

    python -m mvd_jax.train --config=configs/stages/movie_guidance.py:IP2P_DIR --workdir=runs/movie/guidance \\
        [--config.edit.triplets=ip2p/triplets.jsonl]
    python -m mvd_jax.edit --distilled runs/movie/guidance --video in.mp4 --prompt "make it snowy" --out out.mp4

The argument is the diffusers InstructPix2Pix pipeline folder (timbrooks/instruct-pix2pix): teacher UNet, SD VAE,
CLIP text encoder + tokenizer and noise schedule all come from it. The triplets: README "Video editing" turns the
InstructPix2Pix dataset into the manifest data/edit_triplets.py reads.

The paper's recipe: Adam, LR 1e-5, 5 k iterations, batch 512 at 256×256, t ~ U[0, 1000], s_I ~ U[1, 3],
s_T ~ U[2, 14] (1×A100, ≈ 14 h). Here: the same, with AdamW's weight decay off, bf16 activations, remat, the
student and the frozen teacher FSDP-sharded, batch 512 as 64 × 8 accumulated micro-batches (set
train.grad_accum for your devices' memory).
"""
import ml_collections

from mvd_jax.models.unet2d_config import UNet2DConditionConfig
from mvd_jax.settings import resolve


def get_config(folder: str = "instruct-pix2pix"):
    c = ml_collections.ConfigDict()
    c.name = "movie_guidance"
    c.model = UNet2DConditionConfig.instruct_pix2pix().to_diffusers_dict()
    c.frames, c.height, c.width = 1, 256, 256
    c.init_from = folder
    c.autoencoder = dict(kind="sd_vae", checkpoint=folder)
    c.edit = dict(triplets="ip2p/triplets.jsonl", text_encoder=folder, scheduler=folder, sample_steps=10)
    c.guidance = dict(model="instruct_pix2pix", image_min=1.0, image_max=3.0, text_min=2.0, text_max=14.0)
    c.train = dict(phase="guidance_distill", steps=5000, batch_size=512, grad_accum=8, dtype="bfloat16", remat=True,
                   checkpoint_every=250, log_every=25, sample_every=1000)
    c.optimizer = dict(learning_rate=1e-5, warmup_steps=100, weight_decay=0.0, ema_decay=0.999)
    c.mesh = dict(data=1, fsdp=-1, tensor=1)
    return resolve(c)
