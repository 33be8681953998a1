"""Image → video with an SVD-style model: diffusers' StableVideoDiffusionPipeline, in JAX.

    image embedding: the input image through SVD's CLIP preprocessing (anti-aliased resize to 224²,
        CLIP mean/std) and the image encoder → one context token (1, 1, D);
    conditioning latent: the image resized to H×W (PIL Lanczos, as diffusers' VaeImageProcessor), plus
        noise_aug_strength·N(0, I), through the VAE encoder; the posterior mode, NOT multiplied by the
        scaling factor; repeated over the T frames and concatenated to the noisy latents by the UNet;
    added time ids: [fps − 1, motion_bucket_id, noise_aug_strength];
    sampling: Euler over Karras σ with frame-wise guidance (samplers.euler_sample), one compiled loop;
        `steps=1` is the one-step path the adversarially distilled model uses; with a Clockwork adaptor
        and `clock` N > 1 the full UNet runs every N-th step only (samplers.clockwork_euler_sample);
    decoding: latents / scaling_factor through the temporal VAE decoder, `decode_chunk_size` frames at
        a time (each chunk is its own clip, as in diffusers), then (x + 1)/2 clipped to [0, 1].

The three models come from an SVD diffusers folder (unet/, vae/, image_encoder/) through
mvd_jax.convert, or are passed in (e.g. a trained MobileVD UNet with an SVD VAE and encoder).
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from mvd_jax.diffusion import edm, samplers
from mvd_jax.errors import UserError
from mvd_jax.models.clip_vision import preprocess_for_clip
from mvd_jax.models.clockwork import clockwork_parts
from mvd_jax.models.vae import decode_chunked

PIPELINE_PARTS = ("unet", "vae", "image_encoder")


@dataclasses.dataclass(frozen=True)
class SampleOptions:
    num_frames: int = 14
    height: int = 576
    width: int = 1024
    steps: int = 25
    min_guidance_scale: float = 1.0
    max_guidance_scale: float = 3.0  # guidance is off when ≤ 1 (one UNet evaluation per step)
    fps: int = 7
    motion_bucket_id: int = 127
    noise_aug_strength: float = 0.02
    decode_chunk_size: int | None = None  # frames per VAE decode call; None = all at once
    seed: int = 0
    clock: int = 1  # Clockwork: the full UNet every `clock` steps, the pipeline's adaptor between (1: always)


def jitted_method(module, method: str, static_argnums: tuple[int, ...] = ()):
    """A jitted `module.method(*args)`. The module's state is an argument, not baked in as constants,
    so compiling stays fast for large models; `static_argnums` index `args` (e.g. a chunk length)."""
    graphdef, state = nnx.split(module)

    def run(state, *args):
        return getattr(nnx.merge(graphdef, state), method)(*args)

    jitted = jax.jit(run, static_argnums=tuple(i + 1 for i in static_argnums))
    return lambda *args: jitted(state, *args)


def check_pipeline_folder(folder) -> Path:
    """The folder, if it holds unet/, vae/ and image_encoder/; a UserError naming what is missing otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"checkpoint folder not found: {folder}")
    missing = [d + "/" for d in PIPELINE_PARTS if not (folder / d).is_dir()]
    if missing:
        raise UserError(f"{folder} is not an SVD pipeline folder: it has no {', '.join(missing)}")
    return folder


def check_options(o: SampleOptions, vae_scale: int) -> None:
    """UserError for sizes the VAE cannot produce and for non-positive counts."""
    if o.height < 1 or o.width < 1 or o.height % vae_scale or o.width % vae_scale:
        raise UserError(f"height and width must be positive multiples of {vae_scale} (the VAE's "
                        f"downsampling factor), got {o.height}×{o.width}")
    if o.num_frames < 1 or o.steps < 1:
        raise UserError(f"frames and steps must be ≥ 1, got {o.num_frames} frames, {o.steps} steps")
    if o.decode_chunk_size is not None and o.decode_chunk_size < 1:
        raise UserError(f"decode_chunk_size must be ≥ 1, got {o.decode_chunk_size}")
    if isinstance(o.clock, bool) or not isinstance(o.clock, int) or o.clock < 1:
        raise UserError(f"clock must be an integer ≥ 1, got {o.clock!r}")


class ImageToVideo:
    """Holds the three models; `__call__` turns one image into frames (T, H, W, 3) in [0, 1]."""

    def __init__(self, unet, vae, image_encoder, decoder=None, adaptor=None):
        """`decoder`: what turns latents into frames (default the VAE; e.g. a tiny autoencoder distilled from
        it, models/tiny_autoencoder.py, with the same latents and factor). `adaptor`: a Clockwork adaptor
        (models/clockwork.py) that options with clock > 1 run between the full UNet's steps."""
        if adaptor is not None:
            adaptor.config.check_unet(unet.config)
        self.unet, self.vae, self.image_encoder, self.adaptor = unet, vae, image_encoder, adaptor
        self.decoder = decoder if decoder is not None else vae
        self.vae_scale = vae.config.downsampling_factor
        self.timings: dict[str, float] = {}
        self._on_step = None  # the current progress callback; read by the compiled loop via _step_hook
        self._encode_image = jitted_method(image_encoder, "__call__")
        self._encode_latent = jitted_method(vae, "encode_mode")
        self._decode = jitted_method(self.decoder, "decode", static_argnums=(1,))
        self._samplers: dict = {}

    @classmethod
    def from_folder(cls, folder, unet=None, decoder=None, adaptor=None) -> "ImageToVideo":
        """The pipeline of an SVD folder; `unet` (a loaded UNet, e.g. a trained stage's) replaces its unet/,
        `decoder` (a loaded tiny autoencoder) the VAE's decoder; `adaptor`: a Clockwork adaptor for the UNet,
        or a function of the UNet's config that returns one (the identity adaptor needs the UNet first)."""
        from mvd_jax.convert import load_unet
        from mvd_jax.convert.diffusers_vae import load_vae
        from mvd_jax.convert.transformers_clip import load_image_encoder

        folder = check_pipeline_folder(folder)
        vae = load_vae(folder / "vae")
        if unet is None:
            unet = load_unet(folder / "unet")
        latent = vae.config.latent_channels
        if unet.config.in_channels != 2 * latent or unet.config.out_channels != latent:
            raise UserError(f"the UNet takes {unet.config.in_channels} channels in and {unet.config.out_channels} out; "
                            f"the VAE of {folder} gives {latent}-channel latents")
        if decoder is not None:
            from mvd_jax.train.decoder_distill import check_matches_teacher

            check_matches_teacher(decoder.config, vae.config, "the decoder")
        if callable(adaptor) and not isinstance(adaptor, nnx.Module):
            adaptor = adaptor(unet.config)
        return cls(unet, vae, load_image_encoder(folder / "image_encoder"), decoder, adaptor)

    def check_options(self, o: SampleOptions):
        check_options(o, self.vae_scale)
        if o.clock > 1 and self.adaptor is None:
            raise UserError(f"clock {o.clock} needs a Clockwork adaptor (ImageToVideo(..., adaptor=...))")
        if self.unet.config.guidance_scales and (o.min_guidance_scale != 1.0 or o.clock > 1):
            raise UserError("a guidance-distilled UNet samples its frame-wise guidance in one pass per step from a "
                            f"ramp starting at 1 (min_guidance_scale 1, got {o.min_guidance_scale}) and without a "
                            "Clockwork clock")

    def condition(self, image: Image.Image, o: SampleOptions, image_noise=None):
        """(conditioning latent (1, h, w, C), image embedding (1, 1, D), added time ids (1, 3))."""
        rgb = image.convert("RGB")
        original = _to_unit_range(np.asarray(rgb))[None]  # (1, H0, W0, 3) in [-1, 1]
        embeds = self._encode_image(preprocess_for_clip(jnp.asarray(original)))[:, None, :]
        resized = _to_unit_range(np.asarray(rgb.resize((o.width, o.height), Image.LANCZOS)))[None]
        if image_noise is None:
            image_noise = jax.random.normal(jax.random.fold_in(jax.random.key(o.seed), 1), resized.shape)
        noisy = jnp.asarray(resized) + o.noise_aug_strength * jnp.asarray(image_noise, jnp.float32)
        latent = self._encode_latent(noisy)
        ids = jnp.asarray([[o.fps - 1, o.motion_bucket_id, o.noise_aug_strength]], jnp.float32)
        return latent, embeds, ids

    def _step_hook(self, i):
        if self._on_step is not None:
            self._on_step(int(i))

    def _sampler(self, o: SampleOptions):
        """The jitted sampling loop of these options: run(state, noise, cond, embeds, ids), where state is the
        UNet's (clock 1) or the UNet's and the adaptor's (clock > 1)."""
        key = (o.steps, o.min_guidance_scale, o.max_guidance_scale, o.clock)
        if key not in self._samplers:
            graphdef, _ = nnx.split(self.unet if o.clock == 1 else (self.unet, self.adaptor))
            sigmas = edm.karras_sigmas(o.steps)
            loop_options = dict(min_scale=o.min_guidance_scale, max_scale=o.max_guidance_scale, on_step=self._step_hook)

            distilled = bool(self.unet.config.guidance_scales)
            if distilled:  # a guidance-distilled UNet: one pass per step, told the ramp's top scale
                loop_options.update(min_scale=1.0, max_scale=1.0)

            @jax.jit
            def run(state, noise, cond, embeds, ids):
                if o.clock == 1:
                    model = nnx.merge(graphdef, state)
                    if distilled:
                        top = jnp.full((noise.shape[0], 1), o.max_guidance_scale, jnp.float32)
                        fn = lambda *a: model(*a, guidance=top)
                    else:
                        fn = lambda *a: model(*a)
                    return samplers.euler_sample(fn, noise, sigmas, cond, embeds, ids, **loop_options)
                parts = clockwork_parts(*nnx.merge(graphdef, state))
                return samplers.clockwork_euler_sample(parts, noise, sigmas, cond, embeds, ids, clock=o.clock,
                                                       **loop_options)

            self._samplers[key] = run
        return self._samplers[key]

    def _sampler_state(self, o: SampleOptions):
        return nnx.state(self.unet) if o.clock == 1 else nnx.state((self.unet, self.adaptor))

    def sample_latents(self, cond_latent, embeds, ids, o: SampleOptions, noise=None):
        """Denoised latents (1, T, h, w, C); the whole step loop is one compiled program."""
        h, w = cond_latent.shape[1:3]
        if noise is None:
            noise = jax.random.normal(jax.random.key(o.seed), (1, o.num_frames, h, w, self.unet.config.out_channels))
        cond = jnp.repeat(cond_latent[:, None], o.num_frames, axis=1)
        return self._sampler(o)(self._sampler_state(o), jnp.asarray(noise, jnp.float32), cond, embeds, ids)

    def decode(self, latents, o: SampleOptions):
        """Frames (T, H, W, 3) in [0, 1] from the latents (1, T, h, w, C) of one video."""
        z = latents[0] / self.decoder.config.scaling_factor
        frames = decode_chunked(self._decode, z, o.decode_chunk_size)
        return jnp.clip(frames / 2 + 0.5, 0.0, 1.0)

    def __call__(self, image: Image.Image, o: SampleOptions, *, noise=None, image_noise=None, on_step=None):
        """`noise` (1, T, h, w, C) and `image_noise` (1, H, W, 3) default to draws from `o.seed`."""
        self.check_options(o)
        self._on_step = on_step
        try:
            t0 = time.perf_counter()
            cond, embeds, ids = jax.block_until_ready(self.condition(image, o, image_noise))
            t1 = time.perf_counter()
            latents = jax.block_until_ready(self.sample_latents(cond, embeds, ids, o, noise))
            jax.effects_barrier()  # every progress callback has run
            t2 = time.perf_counter()
            frames = np.asarray(self.decode(latents, o))
            t3 = time.perf_counter()
        finally:
            self._on_step = None
        self.timings = {"conditioning": t1 - t0, "sampling": t2 - t1, "decoding": t3 - t2}
        return frames


def _to_unit_range(pixels: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) → float32 in [-1, 1], with diffusers' arithmetic (x/255, then ·2 − 1)."""
    return (pixels.astype(np.float32) / 255.0) * 2.0 - 1.0
