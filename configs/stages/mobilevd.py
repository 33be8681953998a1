"""MobileVD's training stages at 14×512×256 (paper §2, "Pipeline order"), one config per stage; each
stage starts from the previous stage's run directory through `init_from` (train/stages.py):

    lowres       SVD finetuned at 512×256 (EDM denoising loss)          init_from = the SVD folder
    adversarial  single-step adversarial finetune (SF-V recipe)        init_from = runs/mobilevd/lowres
    multiscale   + temporal multiscaling (adversarial objective)        init_from = runs/mobilevd/adversarial
    gates        + temporal-block gates learned, keep 11 of 38          init_from = runs/mobilevd/multiscale
    pruned       the 27 blocks the gates dropped are removed            init_from = runs/mobilevd/gates
    funnels      + channel funnels r = 0.5 (CSI), trained               init_from = runs/mobilevd/pruned
    (export merges the funnels: funnels_merged=True computes the same function)

The optimized cross-attention (stage 3 of Table 2) is exact, so it is on from the first stage. Stages
after the adversarial one keep its objective ([I] in the spec: the paper trains them so). Run, with SVD's
diffusers folder for the VAE / CLIP (and the first stage's weights) and your data (a folder, manifest
or latent cache):

    python -m mvd_jax.train --config=configs/stages/mobilevd.py:lowres --workdir=runs/mobilevd/lowres \\
        --config.init_from=SVD_DIR --config.autoencoder.checkpoint=SVD_DIR --config.data.videos=VIDEOS
    python -m mvd_jax.train --config=configs/stages/mobilevd.py:adversarial --workdir=runs/mobilevd/adversarial \\
        --config.autoencoder.checkpoint=SVD_DIR --config.data.videos=VIDEOS
    … and so on for multiscale, gates, pruned, funnels (each reads runs/mobilevd/<previous stage>).

Step counts and batch sizes are not published ([U]); these follow SF-V (batch 32, EMA 0.95) and
split a ~100k-iteration budget (a secondary source's figure for MobileVD) over the stages. The
efficiency of each stage's model: configs/paper/{svd_512x256,xattn,temporal_ms,pruned_70,mobilevd}.py.
"""
import ml_collections

from mvd_jax.models.unet_config import UNetConfig
from mvd_jax.settings import resolve

STAGES = ("lowres", "adversarial", "multiscale", "gates", "pruned", "funnels")
RUNS = "runs/mobilevd"
STEPS = {"lowres": 30_000, "adversarial": 30_000, "multiscale": 10_000, "gates": 10_000, "pruned": 5_000,
         "funnels": 15_000}
KEEP = 11  # temporal blocks kept of 38: 70 % pruned (Table 6)


def get_config(stage: str = "lowres"):
    if stage not in STAGES:
        raise ValueError(f"configs/stages/mobilevd.py takes one of {STAGES}, not {stage!r}")
    i = STAGES.index(stage)
    model = UNetConfig(collapse_cross_attention=True, temporal_multiscale=i >= 2,
                       temporal_gating="sampled" if stage == "gates" else None,
                       funnel_factor=0.5 if stage == "funnels" else None)
    c = ml_collections.ConfigDict()
    c.name = f"mobilevd_{stage}"
    c.model = model.to_dict()
    c.frames, c.height, c.width = 14, 256, 512
    c.autoencoder = dict(kind="svd")
    c.data = dict(fps=7.0, crop="random", workers=8)
    c.init_from = "" if i == 0 else f"{RUNS}/{STAGES[i - 1]}"
    c.prune_from_gates = stage == "pruned"
    c.train = dict(phase="diffusion" if i == 0 else "adversarial", steps=STEPS[stage], batch_size=32,
                   dtype="bfloat16", remat=True, checkpoint_every=1000, log_every=50, sample_every=5000,
                   sample_steps=25 if i == 0 else 1)
    if stage == "gates":  # anneal the kept blocks from all 38 to 11 over the first half of the stage
        c.train.update(gate_keep=KEEP, gate_keep_start=38, gate_anneal_steps=STEPS[stage] // 2)
    c.optimizer = dict(learning_rate=1e-5, warmup_steps=500, ema_decay=0.999 if i == 0 else 0.95)
    c.mesh = dict(data=1, fsdp=-1, tensor=1)
    return resolve(c)
