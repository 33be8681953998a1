"""Training the instruction-editing UNet of MoViE (InstructPix2Pix, mobilevd_paper.md §6.1): what its two phases
share, and the first of them.

  * train.phase "instruct_pix2pix" (this file): the editing UNet learns ε-prediction on (frame, instruction,
    edited frame) triplets, as InstructPix2Pix was trained — the UNet sees the noisy latent of the edited frame
    concatenated with the input frame's latent, and the instruction's text states; the conditions are dropped
    at random (`edit.cond_dropout` p: text only for u < p, both for p ≤ u < 2p, image only for 2p ≤ u < 3p,
    u ~ U[0, 1); diffusers' train_instruct_pix2pix.py) so that the guided sampler's unconditional branches
    exist. At demo scale this trains the teacher from scratch; a user starts from timbrooks/instruct-pix2pix.
  * train.phase "guidance_distill" (train/guidance_distill.py): the 3-pass guided teacher distilled into a
    1-pass student that reads the guidance scales.

The batch: (input image, instruction, edited image) triplets from a manifest (`edit.triplets`,
data/edit_triplets.py: the InstructPix2Pix dataset's form), or — without one — clips from the data loader (the
bundled real clips, or yours), every frame one example, each frame given one of data/edit_pairs.py's programmatic
edits inside the compiled encode step (`make_encode`), drawn per frame from (train.seed, step). The autoencoder (`autoencoder.kind` "pixel": the demo's whitened pixel blocks;
"sd_vae": an SD VAE folder, `autoencoder.checkpoint`) gives the input frame's latent c_I (the posterior mode,
unscaled, as the InstructPix2Pix pipeline conditions) and the edited frame's x0 (× scaling_factor); the text
encoder gives the instruction's states c_T and the empty prompt's ∅ (`edit.text_encoder`: a pipeline folder
with text_encoder/ and tokenizer/, or "" for a small random CLIP text model on a byte vocabulary, sizes
edit.text_*). Noise levels follow the DDPM training schedule of `edit.scheduler` (a pipeline folder's
scheduler/, or "" for SD-1.5's: scaled-linear β 0.00085 … 0.012 over 1000 steps).

The UNet's architecture is the config's `model`: diffusers' UNet2DConditionModel keys (models/unet2d_config.py).
`init_from`: "" (a fresh UNet from train.seed), an InstructPix2Pix / SD pipeline or unet/ folder, or an earlier
run of these phases.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mvd_jax import storage
from mvd_jax.data import edit_pairs
from mvd_jax.diffusion import discrete_euler
from mvd_jax.errors import UserError
from mvd_jax.models import attention_kernel
from mvd_jax.models.unet2d_condition import UNet2DConditionModel
from mvd_jax.models.unet2d_config import UNet2DConditionConfig
from mvd_jax.train import sharding as shd
from mvd_jax.train.model_state import ParamCodec, make_optimizer
from mvd_jax.train.programs import Programs, build_loss_programs

# SD-1.5's (and InstructPix2Pix's) noise schedule, the sampler its pipeline folder names
SD_SCHEDULER = discrete_euler.DiscreteEulerConfig(kind="euler_ancestral", beta_start=0.00085, beta_end=0.012,
                                                  beta_schedule="scaled_linear", steps_offset=1)
BATCH_RANKS = {"latents": 4, "image_latents": 4, "text": 3, "empty_text": 3}


def is_edit_phase(cfg) -> bool:
    """The config trains the editing UNet (settings.edits_images): instruct_pix2pix, or MoViE's guidance_distill."""
    from mvd_jax.settings import edits_images

    return edits_images(cfg)


def model_config(cfg) -> UNet2DConditionConfig:
    """The editing UNet of the config (`model`, diffusers' keys), without a guidance embedding."""
    return dataclasses.replace(UNet2DConditionConfig.from_dict(dict(cfg.model)), guidance_scales=0)


# =============================================================================================
# The frozen parts: autoencoder, text encoder + tokenizer, noise schedule
# =============================================================================================
class TextParts(NamedTuple):
    tokenizer: object  # data/clip_tokenizer.CLIPTokenizer
    encoder: object  # models/clip_text.CLIPTextModel


def build_autoencoder(cfg):
    """The editing phases' autoencoder: the pixel one (demo) or an SD VAE folder."""
    a = cfg.autoencoder
    if a.kind == "sd_vae":
        from mvd_jax.convert.diffusers_sd_vae import load_sd_vae

        folder = storage.path(a.checkpoint)
        return load_sd_vae(folder / "vae" if (folder / "vae").is_dir() else folder)
    from mvd_jax.train.trainer import pixel_autoencoder

    return pixel_autoencoder(a)


def build_text_parts(cfg) -> TextParts:
    e = cfg.edit
    if e.text_encoder:
        from mvd_jax.convert.transformers_clip_text import load_text_encoder
        from mvd_jax.data.clip_tokenizer import CLIPTokenizer

        folder = Path(storage.path(e.text_encoder))
        return TextParts(CLIPTokenizer.from_folder(folder), load_text_encoder(folder))
    from mvd_jax.models.clip_text import CLIPTextConfig, CLIPTextModel

    tokenizer = edit_pairs.byte_tokenizer(e.max_length)
    config = CLIPTextConfig(vocab_size=len(tokenizer.vocab), hidden_size=e.text_hidden_size,
                            intermediate_size=2 * e.text_hidden_size, projection_dim=e.text_hidden_size,
                            num_hidden_layers=e.text_layers, num_attention_heads=e.text_heads,
                            max_position_embeddings=e.max_length, pad_token_id=tokenizer.pad_token_id,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return TextParts(tokenizer, CLIPTextModel(config, rngs=nnx.Rngs(e.text_seed)))


def noise_schedule(cfg) -> discrete_euler.DiscreteEulerConfig:
    if cfg.edit.scheduler:
        return discrete_euler.DiscreteEulerConfig.from_folder(storage.path(cfg.edit.scheduler))
    return SD_SCHEDULER


def alphas_cumprod(schedule: discrete_euler.DiscreteEulerConfig) -> np.ndarray:
    """ᾱ_t for t = 0 … T − 1 (σ_t² = (1 − ᾱ_t)/ᾱ_t)."""
    return (1.0 / (1.0 + discrete_euler.train_sigmas(schedule).astype(np.float64) ** 2)).astype(np.float32)


def check_parts(cfg, autoencoder, text: TextParts) -> None:
    """The UNet, the autoencoder and the text encoder fit together (before any compile)."""
    unet = model_config(cfg)
    latent = autoencoder.config.latent_channels
    if unet.in_channels != 2 * latent or unet.out_channels != latent:
        raise UserError(f"the editing UNet takes {unet.in_channels} channels in and {unet.out_channels} out; the "
                        f"autoencoder gives {latent}-channel latents (in = 2·{latent}: noisy latent ‖ input image "
                        f"latent; out = {latent})")
    width = text.encoder.config.hidden_size
    if any(d != width for d in unet.context_dims):
        raise UserError(f"the UNet's cross_attention_dim {unet.cross_attention_dim} does not match the text "
                        f"encoder's hidden size {width}")
    factor = autoencoder.config.downsampling_factor
    if cfg.height % factor or cfg.width % factor:
        raise UserError(f"height/width {cfg.height}×{cfg.width} must be multiples of the autoencoder's factor {factor}")


# =============================================================================================
# The batch
# =============================================================================================
def edit_batch_shardings(mesh) -> dict:
    """Every array of the editing batch split over the batch axes."""
    return {k: shd.batch_sharding(mesh, n) for k, n in BATCH_RANKS.items()}


def make_triplet_data(cfg, per_host_batch: int, text: TextParts):
    """The loader of edit.triplets (data/edit_triplets.py), its instructions tokenised by the text encoder's
    tokenizer."""
    from mvd_jax.data.edit_triplets import TripletLoader, read_triplets

    tokenize = lambda instruction: text.tokenizer([instruction]).input_ids[0]
    return TripletLoader(read_triplets(cfg.edit.triplets), tokenize, height=cfg.height, width=cfg.width,
                         batch_size=per_host_batch, seed=cfg.train.seed)


def make_encode(cfg, encoders, mesh):
    """Jitted (encoder state, raw batch, step) → the model batch: latents x0 of the edited images
    (× scaling_factor), image_latents c_I of the inputs, text c_T of the instructions, empty_text ∅ (the empty
    prompt's states, per example). The raw batch is a triplet loader's {"input", "edited", "ids"} or the video
    loader's {"video": (B, T, H, W, 3)}, whose B·T frames get programmatic edits."""
    autoencoder, text = encoders
    graphdef, _ = nnx.split((autoencoder, text.encoder))
    ids = jnp.asarray(edit_pairs.instruction_ids(text.tokenizer))  # (E + 1, L): the instructions, then ""
    n_edits = ids.shape[0] - 1
    scale = autoencoder.config.scaling_factor
    batch_sh = edit_batch_shardings(mesh)
    base_key = jax.random.key(cfg.train.seed + 7)

    def encode(state, raw, step):
        ae, encoder = nnx.merge(graphdef, state)
        if "video" in raw:  # programmatic edits of every frame
            frames = raw["video"].reshape(-1, *raw["video"].shape[2:])
            which = jax.random.randint(jax.random.fold_in(base_key, step), (frames.shape[0],), 0, n_edits)
            states = encoder(ids).last_hidden_state  # (E + 1, L, D)
            edited, text, empty = edit_pairs.apply_edits(frames, which), states[which], states[-1:]
        else:  # triplets: their own images and instructions
            frames, edited = raw["input"], raw["edited"]
            text = encoder(raw["ids"]).last_hidden_state
            empty = encoder(ids[-1:]).last_hidden_state
        return {"latents": ae.encode_mode(edited) * scale, "image_latents": ae.encode_mode(frames), "text": text,
                "empty_text": jnp.broadcast_to(empty, (frames.shape[0], *empty.shape[1:]))}

    return jax.jit(encode, out_shardings=batch_sh)


def noisy(batch, key, abar):
    """(x_t, ε, t): t ~ U{0 … T−1} per example, x_t = √ᾱ_t x0 + √(1 − ᾱ_t) ε."""
    x0 = batch["latents"].astype(jnp.float32)
    k_t, k_e = jax.random.split(key)
    t = jax.random.randint(k_t, (x0.shape[0],), 0, abar.shape[0])
    eps = jax.random.normal(k_e, x0.shape, jnp.float32)
    a = abar[t][:, None, None, None]
    return jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * eps, eps, t


def unet_input(x_t, image_latents):
    return jnp.concatenate([x_t, image_latents.astype(x_t.dtype)], axis=-1)


# =============================================================================================
# Phase instruct_pix2pix: the editing UNet's own loss
# =============================================================================================
def instruct_pix2pix_loss(unet, batch, key, *, abar, cond_dropout: float, dtype=jnp.float32):
    """(loss, aux): ‖ε_θ(x_t ‖ c_I′, t, c_T′) − ε‖² with c_I′, c_T′ dropped as InstructPix2Pix drops them."""
    k_noise, k_drop = jax.random.split(key)
    x_t, eps, t = noisy(batch, k_noise, abar)
    u = jax.random.uniform(k_drop, (x_t.shape[0],))
    drop_text = u < 2 * cond_dropout
    drop_image = (u >= cond_dropout) & (u < 3 * cond_dropout)
    text = jnp.where(drop_text[:, None, None], batch["empty_text"], batch["text"])
    image = jnp.where(drop_image[:, None, None, None], 0.0, batch["image_latents"])
    pred = unet(unet_input(x_t, image).astype(dtype), t.astype(jnp.float32), text.astype(dtype))
    loss = jnp.mean(jnp.square(pred.astype(jnp.float32) - eps))
    return loss, {}


def build_instruct_pix2pix_programs(cfg, unet_abstract, mesh, encoders) -> Programs:
    t = cfg.train
    codec = ParamCodec(unet_abstract)
    tx, schedule = make_optimizer(cfg.optimizer)
    dtype = jnp.bfloat16 if t.dtype == "bfloat16" else jnp.float32
    form = attention_kernel.form_for_mesh(t.attention, mesh)
    abar = jnp.asarray(alphas_cumprod(noise_schedule(cfg)))

    def loss_on(params_train, frozen, batch, key, step):
        unet = codec.merge({**frozen, **params_train})
        unet.remat = t.remat
        attention_kernel.set_form(unet, form)
        return instruct_pix2pix_loss(unet, batch, key, abar=abar, cond_dropout=cfg.edit.cond_dropout, dtype=dtype)

    return build_loss_programs(cfg, codec, list(codec.keys), mesh, tx, schedule, loss_on,
                               make_encode(cfg, encoders, mesh), edit_batch_shardings(mesh))



# =============================================================================================
# The editing UNet: fresh, from a folder, or from a run
# =============================================================================================
def load_editing_unet(cfg, source: str, log=print) -> UNet2DConditionModel:
    """The config's editing UNet (no guidance embedding) with the weights of `source`: "" fresh from
    train.seed; a pipeline / unet/ folder; a run of an editing phase (its latest EMA weights, or raw with
    init_ema False; a guidance_distill run gives its student: its guidance weights are then an error)."""
    from mvd_jax.train import stages

    config = model_config(cfg)
    if not source:
        return UNet2DConditionModel(config, rngs=nnx.Rngs(cfg.train.seed))
    if stages.is_run_dir(source):
        run_cfg = stages.read_run_config(source)
        phase = run_cfg.get("train", {}).get("phase")
        if phase != "instruct_pix2pix":
            raise UserError(f"{source} is a {phase!r} run; an editing UNet to start from comes from an "
                            "'instruct_pix2pix' run, an InstructPix2Pix pipeline folder or its unet/")
        params, _, step = stages.read_run_params(source, use_ema=bool(cfg.init_ema))
        unet = stages.module_from_params(ParamCodec(nnx.eval_shape(lambda: UNet2DConditionModel(
            config, rngs=nnx.Rngs(0)))), params, source)
        log(f"editing UNet from {source} (step {step}, {'EMA' if cfg.init_ema else 'raw'} weights)")
        return unet
    from mvd_jax.convert.diffusers_unet2d import load_unet2d

    return load_unet2d(storage.path(source), config)


# =============================================================================================
# Sampling an edit (the phases' sample sheets and evaluations)
# =============================================================================================
def euler_edit(eps_fn, noise, schedule, steps: int):
    """Deterministic Euler sampling of an edit (the pipeline's loop with the `euler` sampler, so two models
    compare from the same noise without ancestral draws): eps_fn(scaled x, timestep) → ε̃."""
    config = dataclasses.replace(schedule, kind="euler")
    plan = discrete_euler.plan(config, steps)
    x = noise * plan.init_noise_sigma
    for i in range(steps):
        sigma, sigma_next = jnp.float32(plan.sigmas[i]), jnp.float32(plan.sigmas[i + 1])
        eps = eps_fn(discrete_euler.scale_input(x, sigma), jnp.float32(plan.timesteps[i]))
        x = discrete_euler.step(config, x, eps, sigma, sigma_next)
    return x


def guided_eps(unet, x, image_latents, t, text, empty, s_image, s_text):
    """InstructPix2Pix's 3-pass guidance in one batch: (ε̃, ε(x, c_I, c_T)) with
    ε̃ = ε(x,0,∅) + s_I·(ε(x,c_I,∅) − ε(x,0,∅)) + s_T·(ε(x,c_I,c_T) − ε(x,c_I,∅)); s_I, s_T scalars or (N,)."""
    n = x.shape[0]
    inputs = jnp.concatenate([unet_input(x, image_latents), unet_input(x, image_latents),
                              unet_input(x, jnp.zeros_like(image_latents))])
    timesteps = jnp.tile(jnp.broadcast_to(jnp.asarray(t, jnp.float32), (n,)), 3)
    out = unet(inputs.astype(x.dtype), timesteps, jnp.concatenate([text, empty, empty]).astype(x.dtype))
    full, image_only, uncond = jnp.split(out.astype(jnp.float32), 3)
    s_i = jnp.broadcast_to(jnp.asarray(s_image, jnp.float32), (n,))[:, None, None, None]
    s_t = jnp.broadcast_to(jnp.asarray(s_text, jnp.float32), (n,))[:, None, None, None]
    return uncond + s_i * (image_only - uncond) + s_t * (full - image_only), full


def decode_to_unit(autoencoder, latents):
    """Latents (× scaling_factor) → images in [0, 1]."""
    images = autoencoder.decode(latents / autoencoder.config.scaling_factor)
    return np.clip(np.asarray(images, np.float32) / 2 + 0.5, 0, 1)


def write_sheet(workdir, step: int, columns: list[np.ndarray]):
    """workdir/samples/step_N.png: one row per example, the columns side by side (each (N, H, W, 3) in [0, 1])."""
    from PIL import Image

    rows = np.concatenate([np.concatenate(list(c), axis=0) for c in columns], axis=1)  # (N·H, C·W, 3)
    path = workdir / "samples" / f"step_{step:07d}.png"
    with storage.local_file_for(path) as local:
        Path(local).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rows * 255).round().astype(np.uint8)).save(local)
    return path


def sample_examples(batch, count: int = 4):
    """The first `count` examples of a (global) batch (their edits as drawn for it), as arrays on the host."""
    host = {k: np.asarray(jax.device_get(v)) for k, v in batch.items()}
    return {k: jnp.asarray(v[:count]) for k, v in host.items()}


def write_teacher_sheet(cfg, programs, state, frozen, autoencoder, batch, workdir, step):
    """instruct_pix2pix's sample: input | target edit | the model's guided edit (edit.sample_* settings)."""
    from mvd_jax.train.metrics import psnr

    e = cfg.edit
    unet = programs.codec.merge({**jax.device_get(frozen), **jax.device_get(state["ema"])})
    ex = sample_examples(batch)
    noise = jax.random.normal(jax.random.key(cfg.train.seed + 3), ex["latents"].shape)
    schedule = noise_schedule(cfg)
    graphdef, st = nnx.split(unet)

    @jax.jit
    def run(st, ex, noise):
        model = nnx.merge(graphdef, st)
        return euler_edit(lambda x, t: guided_eps(model, x, ex["image_latents"], t, ex["text"], ex["empty_text"],
                                                  e.sample_image_guidance, e.sample_text_guidance)[0],
                          noise, schedule, e.sample_steps)

    edited = run(st, ex, noise)
    inputs = decode_to_unit(autoencoder, ex["image_latents"] * autoencoder.config.scaling_factor)
    target, out = decode_to_unit(autoencoder, ex["latents"]), decode_to_unit(autoencoder, edited)
    value = float(psnr(out * 2 - 1, target * 2 - 1))
    return write_sheet(workdir, step, [inputs, target, out]), value
