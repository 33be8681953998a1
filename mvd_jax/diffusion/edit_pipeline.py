"""MoViE's video editing loop: InstructPix2Pix (SD-1.5 with the input image's latent as 4 extra UNet input
channels) run on every frame, the frames tied together by cross-frame attention (models/unet2d_condition.py:
every frame's self-attention reads the keys and values of one anchor frame, the video's middle one).

Per frame it is diffusers' `StableDiffusionInstructPix2PixPipeline`:
    image latent  c_I = VAE posterior mode of the frame (in [−1, 1]), NOT scaled by scaling_factor
    text          c_T = CLIP text encoder's last hidden state of the prompt; ∅ = that of ""
    start         x = ε · init_noise_sigma (the scheduler's)
    each step     ε(x, c_I, c_T), ε(x, c_I, ∅), ε(x, 0, ∅) in one batch (UNet input: scale_input(x) ‖ image latent)
                  ε̃ = ε(x,0,∅) + s_T·(ε(x,c_I,c_T) − ε(x,c_I,∅)) + s_I·(ε(x,c_I,∅) − ε(x,0,∅))
                  x ← scheduler step (diffusion/discrete_euler.py; the folder's scheduler, Euler ancestral for
                      timbrooks/instruct-pix2pix)
    output        VAE decode of x / scaling_factor, [−1, 1] → uint8
With s_I = s_T = 1 the guidance is off and one UNet pass per step is run (ε(x, c_I, c_T) only).
A guidance-distilled UNet (train/guidance_distill.py; unet.config.guidance_scales = 2) runs one pass per step at
any scales: it reads [s_I, s_T] and returns ε̃ itself (`VideoEditor.from_distilled_run`).

Frames go through the UNet in groups of `batch_frames`: the anchor frame and batch_frames − 1 others, the anchor
placed at the group's middle position (the UNet's anchor index), so every frame of a long video sees the same
anchor while memory stays that of one group. The anchor's own update is taken from the first group (it
attends only to itself, so every group computes the same for it). Groups are split over the devices of the
mesh (batch_frames must divide by their count).
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mvd_jax.diffusion import discrete_euler
from mvd_jax.diffusion.pipeline import jitted_method
from mvd_jax.errors import UserError
from mvd_jax.models.unet2d_condition import anchor_index

PIPELINE_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


@dataclasses.dataclass(frozen=True)
class EditOptions:
    steps: int = 10  # MoViE's step count
    image_guidance_scale: float = 1.5  # s_I (diffusers' default)
    text_guidance_scale: float = 7.5  # s_T
    seed: int = 0
    batch_frames: int = 8  # frames per UNet batch, the anchor included (× 3 with guidance)
    cross_frame: bool = True  # False: every frame edited on its own (plain InstructPix2Pix per frame)

    @property
    def guided(self) -> bool:
        return not (self.image_guidance_scale == 1.0 and self.text_guidance_scale == 1.0)


def check_edit_folder(folder) -> Path:
    """The folder, if it is an InstructPix2Pix pipeline folder; a UserError naming what is missing otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"checkpoint folder not found: {folder}")
    missing = [d + "/" for d in PIPELINE_PARTS if not (folder / d).is_dir()]
    if missing:
        raise UserError(f"{folder} is not an InstructPix2Pix pipeline folder: it has no {', '.join(missing)}")
    return folder


def check_options(o: EditOptions, frames: int, height: int, width: int, vae_scale: int, devices: int = 1) -> None:
    if o.steps < 1:
        raise UserError(f"steps must be ≥ 1, got {o.steps}")
    if o.image_guidance_scale < 0 or o.text_guidance_scale < 0:
        raise UserError("guidance scales must be ≥ 0")
    if o.batch_frames < 1 or o.batch_frames % devices:
        raise UserError(f"batch_frames must be a positive multiple of the {devices} device(s), got {o.batch_frames}")
    if o.cross_frame and frames > 1 and o.batch_frames < 2:
        raise UserError("cross-frame attention needs batch_frames ≥ 2 (the anchor and at least one other frame)")
    if frames < 1:
        raise UserError("the video has no frames")
    if height % vae_scale or width % vae_scale:
        raise UserError(f"frame size {height}×{width} must be multiples of {vae_scale} (the VAE's downsampling "
                        f"factor); resize the video (--height/--width)")


def frame_groups(frames: int, batch_frames: int, cross_frame: bool) -> tuple[np.ndarray, int]:
    """Index arrays of the UNet batches: (groups, batch_frames) frame indices, and the anchor frame.

    With cross-frame attention each group holds the anchor (at index anchor_index(batch_frames)) and up to
    batch_frames − 1 other frames; the last group is topped up by repeating its frames (their results are
    written once). Without it, groups are plain consecutive frames (topped up the same way)."""
    anchor = anchor_index(frames)
    if not cross_frame or frames == 1:
        others, per = np.arange(frames), batch_frames
    else:
        others, per = np.array([f for f in range(frames) if f != anchor]), batch_frames - 1
    groups = []
    for start in range(0, len(others), per):
        chunk = list(others[start:start + per])
        chunk += [chunk[i % len(chunk)] for i in range(per - len(chunk))]  # top up to a fixed shape
        if cross_frame and frames > 1:
            chunk.insert(anchor_index(batch_frames), anchor)
        groups.append(chunk)
    return np.array(groups, np.int32), anchor


class VideoEditor:
    """unet (an InstructPix2Pix UNet2DConditionModel, cross_frame_attention on), vae (SD's AutoencoderKL),
    text_encoder + tokenizer (CLIP), scheduler (DiscreteEulerConfig)."""

    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler: discrete_euler.DiscreteEulerConfig,
                 mesh: jax.sharding.Mesh | None = None):
        if not unet.config.cross_frame_attention:
            raise UserError("the editing UNet needs cross_frame_attention=True (VideoEditor.from_folder sets it)")
        if unet.config.in_channels != 2 * vae.config.latent_channels:
            raise UserError(f"the UNet takes {unet.config.in_channels} input channels; InstructPix2Pix needs "
                            f"2 × the VAE's {vae.config.latent_channels} latent channels")
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.scheduler = scheduler
        self.mesh = mesh or jax.sharding.Mesh(np.array(jax.devices()), ("data",))
        self.timings: dict[str, float] = {}
        self._eps = self._build_eps()
        self._encode = jitted_method(vae, "encode_mode")
        self._decode = jitted_method(vae, "decode")
        self._text = jitted_method(text_encoder, "__call__")

    @classmethod
    def from_distilled_run(cls, run_dir) -> "VideoEditor":
        """The student of a guidance_distill run (its latest EMA weights, cross-frame attention on) with the
        autoencoder, text encoder and noise schedule that run was trained with."""
        from mvd_jax.train import edit_training, guidance_distill

        unet, cfg, _ = guidance_distill.read_student(run_dir, cross_frame_attention=True)
        text = edit_training.build_text_parts(cfg)
        return cls(unet, edit_training.build_autoencoder(cfg), text.encoder, text.tokenizer,
                   edit_training.noise_schedule(cfg))

    @classmethod
    def from_folder(cls, folder, *, unet=None, dtype=jnp.float32) -> "VideoEditor":
        """From a diffusers StableDiffusionInstructPix2PixPipeline folder; `unet` replaces its UNet."""
        from mvd_jax.convert.diffusers_sd_vae import load_sd_vae
        from mvd_jax.convert.diffusers_unet2d import load_unet2d, resolve_config
        from mvd_jax.convert.transformers_clip_text import load_text_encoder
        from mvd_jax.data.clip_tokenizer import CLIPTokenizer

        folder = check_edit_folder(folder)
        if unet is None:
            config = json.loads((folder / "unet" / "config.json").read_text())
            config = dataclasses.replace(resolve_config(config), cross_frame_attention=True)
            unet = load_unet2d(folder / "unet", config, dtype=dtype)
        return cls(unet, load_sd_vae(folder / "vae", dtype=dtype), load_text_encoder(folder / "text_encoder", dtype=dtype),
                   CLIPTokenizer.from_folder(folder / "tokenizer"), discrete_euler.DiscreteEulerConfig.from_folder(folder))

    # ---- the pieces ---------------------------------------------------------------------------------
    def encode_prompt(self, prompt: str):
        """(1, L, D) text states of the prompt and of "" (the unconditional branch)."""
        tokens = self.tokenizer([prompt, ""])
        # SD-1.5's pipelines pass no attention mask (the padding is part of the conditioning it was trained on)
        states = self._text(jnp.asarray(tokens.input_ids)).last_hidden_state
        return states[:1], states[1:]

    @property
    def distilled(self) -> bool:
        """The UNet reads the guidance scales: one pass per step at any scales."""
        return bool(self.unet.config.guidance_scales)

    def _build_eps(self):
        graphdef, state = nnx.split(self.unet)
        distilled = self.distilled
        frames_axis = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec("data"))

        @jax.jit(static_argnames=("num_frames", "guided"))
        def eps(state, x, image_latents, timestep, sigma, text, empty, scales, *, num_frames, guided):
            """ε̃ for one group (G, h, w, c) of frames."""
            unet = nnx.merge(graphdef, state)
            g = x.shape[0]
            x = jax.lax.with_sharding_constraint(x, frames_axis)
            scaled = discrete_euler.scale_input(x, sigma)
            if distilled:  # the student returns the guided ε̃ for the scales it is given
                inputs = jnp.concatenate([scaled, image_latents], -1)
                return unet(inputs, timestep, jnp.broadcast_to(text, (g,) + text.shape[1:]), num_frames=num_frames,
                            guidance=scales)
            if not guided:
                inputs = jnp.concatenate([scaled, image_latents], -1)
                return unet(inputs, timestep, jnp.broadcast_to(text, (g,) + text.shape[1:]), num_frames=num_frames)
            # the three branches (c_I, c_T), (c_I, ∅), (0, ∅) as diffusers orders them; each branch's frames are
            # whole groups, so cross-frame attention never mixes branches
            inputs = jnp.concatenate([jnp.concatenate([scaled] * 3), jnp.concatenate(
                [image_latents, image_latents, jnp.zeros_like(image_latents)])], -1)
            context = jnp.concatenate([jnp.broadcast_to(t, (g,) + t.shape[1:]) for t in (text, empty, empty)])
            full, image_only, uncond = jnp.split(unet(inputs, timestep, context, num_frames=num_frames), 3)
            return uncond + scales[1] * (full - image_only) + scales[0] * (image_only - uncond)

        return lambda *args, **kw: eps(state, *args, **kw)

    # ---- the loop -----------------------------------------------------------------------------------
    def __call__(self, video: np.ndarray, prompt: str, o: EditOptions = EditOptions(), **kw) -> np.ndarray:
        """video (F, H, W, 3) uint8 → the edited video, (F, H, W, 3) uint8 (keywords: edit_latents')."""
        x = self.edit_latents(video, prompt, o, **kw)
        t0 = time.perf_counter()
        frames = self.decode(x, o.batch_frames)
        self.timings["decoding"] = time.perf_counter() - t0
        return frames

    def decode(self, latents, batch: int = 8) -> np.ndarray:
        """Denoised latents (F, h, w, c) → uint8 frames, `batch` frames per VAE call."""
        z = jnp.asarray(latents) / self.vae.config.scaling_factor
        decoded = jnp.concatenate([self._decode(z[g]) for g in _chunks(z.shape[0], batch)])
        return np.asarray(jnp.clip(jnp.round((decoded + 1.0) * 127.5), 0, 255)).astype(np.uint8)

    def edit_latents(self, video: np.ndarray, prompt: str, o: EditOptions = EditOptions(), *, latents=None,
                     step_noise=None, on_step=None):
        """video (F, H, W, 3) uint8 → the denoised latents (F, h, w, c) (diffusers' output_type="latent").

        latents (F, h, w, c) and step_noise(i) → (F, h, w, c), unit normal, replace the seeded draws (tests
        compare with diffusers on the same noise); on_step(i) is called after each step."""
        video = np.asarray(video)
        if video.ndim != 4 or video.shape[-1] != 3:
            raise UserError(f"expected a video of shape (frames, height, width, 3), got {video.shape}")
        f, height, width = video.shape[:3]
        scale = self.vae.config.downsampling_factor
        check_options(o, f, height, width, scale, self.mesh.devices.size)
        groups, anchor = frame_groups(f, o.batch_frames, o.cross_frame)
        num_frames = o.batch_frames if (o.cross_frame and f > 1) else 1
        t0 = time.perf_counter()

        text, empty = self.encode_prompt(prompt)
        pixels = jnp.asarray(video, jnp.float32) / 127.5 - 1.0
        image_latents = jnp.concatenate([self._encode(pixels[g]) for g in _chunks(f, o.batch_frames)])
        plan = discrete_euler.plan(self.scheduler, o.steps)
        key = jax.random.key(o.seed)
        shape = image_latents.shape[:3] + (self.vae.config.latent_channels,)
        if latents is None:
            key, sub = jax.random.split(key)
            latents = jax.random.normal(sub, shape)
        x = jnp.asarray(latents, jnp.float32) * plan.init_noise_sigma
        scales = jnp.asarray([o.image_guidance_scale, o.text_guidance_scale], jnp.float32)
        self.timings["encoding"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        for i in range(o.steps):
            timestep, sigma = jnp.float32(plan.timesteps[i]), jnp.float32(plan.sigmas[i])
            eps, anchor_eps = jnp.zeros_like(x), None
            for g in groups:
                out = self._eps(x[g], image_latents[g], timestep, sigma, text, empty, scales,
                                num_frames=num_frames, guided=o.guided)
                eps = eps.at[g].set(out)  # topped-up repeats write the same value twice
                if anchor_eps is None:
                    anchor_eps = out[anchor_index(num_frames)]
            if num_frames > 1:  # the anchor's ε from the first group (see the module docstring)
                eps = eps.at[anchor].set(anchor_eps)
            noise = None
            if self.scheduler.kind == "euler_ancestral":
                if step_noise is not None:
                    noise = jnp.asarray(step_noise(i), jnp.float32)
                else:
                    key, sub = jax.random.split(key)
                    noise = jax.random.normal(sub, shape)
            x = discrete_euler.step(self.scheduler, x, eps, sigma, jnp.float32(plan.sigmas[i + 1]), noise)
            if on_step is not None:
                on_step(i)
        x.block_until_ready()
        self.timings["denoising"] = time.perf_counter() - t0
        return x


def _chunks(n: int, size: int):
    return [np.arange(s, min(s + size, n)) for s in range(0, n, size)]
