"""The pure functions that go to the phone, one per component, like AI Hub's own video-diffusion models:

    unet_step          noise (B,T,h,w,C), cond_latent (B,h,w,C), image_embeds (B,D), added_time_ids (B,3)
                       → x0 (B,T,h,w,C): the distilled model's single step, EDM preconditioning folded in
    vae_decoder        latents (1,T,h,w,C) as the UNet returns them → frames (1,T,H,W,3) in [0, 1]
    vae_encoder        image (1,H,W,3) in [−1, 1] (already noise-augmented) → cond_latent (1,h,w,C)
    clip_image_encoder image (1,H,W,3) in [−1, 1] → image_embeds (1,D); SVD's CLIP preprocessing folded in

All shapes are static (TFLite and AI Hub want fixed shapes; polymorphic shapes would also need shape
assertions that TF 2.21's StableHLO reader does not take). Everything is channels-last (NHWC), float32:
bf16 graphs do not legalise to TFLite, and fp16 comes from the converter.

Each function is `fn(params, *inputs) -> {output name: array}` with the module's parameters as an explicit
argument (a list of arrays), so jax2tf can pass them in as tf.Variables (tflite.py) instead of baking
multi-GB constants into the traced program, and the JAX reference runs the very same function.

The one step (samplers.single_step_sample) is x̂0 = c_skip·x + c_out·F(c_in·x, c_noise) at x = σ_max·noise.
Here it is written with the σ products folded on the host in float64:

    F input = concat((σ·c_in)·noise, cond)      x̂0 = (σ·c_skip)·noise + c_out·F(…)

so no tensor in the graph carries σ_max·noise (≈ ±2800 at σ_max = 700): the same function, without the
range that fp16 arithmetic on a phone GPU or an int8 quantiser would have to cover.

Each function carries random inputs (`sampler`, what the converter's int8 calibration also draws from) and,
when the export reads a training run's data, real ones (`real_inputs`, from one clip: `clip_real_inputs`);
verification runs both (verify.py).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mvd_jax.diffusion import edm
from mvd_jax.errors import UserError
from mvd_jax.models import attention_kernel


@dataclasses.dataclass(frozen=True)
class Input:
    name: str
    shape: tuple[int, ...]
    doc: str = ""
    dtype: str = "float32"


@dataclasses.dataclass
class ExportFunction:
    """One component: `fn(params, *inputs)` → {output name: array}, its parameters and its input specs."""

    name: str  # file stem and TFLite signature key's meaning, e.g. "unet_step"
    fn: Callable
    params: list  # NumPy float32 arrays, the module's parameter leaves in tree order
    inputs: tuple[Input, ...]
    outputs: tuple[str, ...]
    sampler: Callable[[np.random.Generator], dict]  # realistic random inputs
    real_inputs: dict | None = None  # inputs from real data (clip_real_inputs), set with set_real_inputs
    _jitted: Any = dataclasses.field(default=None, repr=False)
    _kept: list = dataclasses.field(default_factory=list, repr=False)  # [(inputs, outputs)], keep_references
    _num_params: int = dataclasses.field(default=0, repr=False)

    def __post_init__(self):
        self._num_params = int(sum(p.size for p in self.params))

    @property
    def num_params(self) -> int:
        return self._num_params

    def sample_inputs(self, seed: int = 0) -> dict[str, np.ndarray]:
        return self.sampler(np.random.default_rng(seed))

    def set_real_inputs(self, inputs: dict | None) -> None:
        """Real inputs (by input name) for verification beside the random ones; None removes them. Their
        names, shapes and dtypes must be the function's."""
        if inputs is None:
            self.real_inputs = None
            return
        if set(inputs) != {i.name for i in self.inputs}:
            raise UserError(f"{self.name}: real inputs {sorted(inputs)} are not its inputs "
                            f"{sorted(i.name for i in self.inputs)}")
        real = {}
        for i in self.inputs:
            x = np.asarray(inputs[i.name], i.dtype)
            if x.shape != i.shape:
                raise UserError(f"{self.name}: real input {i.name} has shape {x.shape}, the function takes {i.shape}")
            if not np.all(np.isfinite(x)):
                raise UserError(f"{self.name}: real input {i.name} is not finite")
            real[i.name] = x
        self.real_inputs = real

    def reference(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The JAX outputs for `inputs` (a dict by input name), as NumPy: computed, or kept from
        `keep_references` for the very same input arrays."""
        for kept_inputs, outputs in self._kept:
            if kept_inputs.keys() == inputs.keys() and all(np.array_equal(kept_inputs[k], inputs[k]) for k in inputs):
                return outputs
        if self.params is None:
            raise RuntimeError(f"{self.name}: its parameters were released (release_params) and these inputs' "
                               "outputs were not kept (keep_references)")
        if self._jitted is None:
            self._jitted = jax.jit(self.fn)
        args = [jnp.asarray(inputs[i.name], i.dtype) for i in self.inputs]
        return {k: np.asarray(v) for k, v in self._jitted(self.params, *args).items()}

    def verification_sets(self, seed: int = 0) -> list[dict[str, np.ndarray]]:
        """The input sets verification runs: the random one of `seed`, then the real one when set."""
        return [self.sample_inputs(seed)] + ([self.real_inputs] if self.real_inputs is not None else [])

    def keep_references(self, seed: int = 0) -> None:
        """Computes and keeps the JAX outputs of `verification_sets(seed)`, so that the parameters can be
        released before the converter runs (a 1 B-parameter UNet: 4 GB less at the export's peak)."""
        self._kept = [(inputs, self.reference(inputs)) for inputs in self.verification_sets(seed)]

    def release_params(self) -> None:
        """Drops the parameters and the compiled reference; `reference` then answers only the kept inputs."""
        self.params, self._jitted = None, None

    def check(self) -> None:
        """Traces the function on abstract inputs: a shape the model cannot take fails here, as a UserError,
        before any conversion work."""
        args = [jax.ShapeDtypeStruct(i.shape, i.dtype) for i in self.inputs]
        try:
            out = jax.eval_shape(self.fn, self.params, *args)
        except (ValueError, TypeError) as e:
            raise UserError(f"{self.name}: the model does not take inputs "
                            f"{', '.join(f'{i.name} {i.shape}' for i in self.inputs)}: {e}") from None
        if tuple(out) != self.outputs:
            raise AssertionError(f"{self.name} returns {tuple(out)}, declared {self.outputs}")


def _split(module, keep: Callable[[str], bool] | None = None):
    """(rebuild(params) → module, params as a list of float32 NumPy arrays). The rebuilt module computes
    attention in XLA's batched form (BATCH_MATMUL, SOFTMAX on the phone): never the CPU form's loops, which
    would become TFLite WHILE loops, nor an accelerator kernel's custom call. The form is part of the
    graph definition, so every trace of the function — the JAX reference, the TFLite conversion — sees it.

    `keep(path)` (a dotted parameter path, e.g. "down_blocks.0.resnets.0.spatial_res_block.conv1.kernel")
    selects the parameters of a function that runs only part of the module (a link of the UNet chain,
    unet_chain.py); the others become 0-d placeholders, so a part that reached for one fails while tracing."""
    _to_device_arrays(module)
    graphdef, state = nnx.split(module)
    copy = attention_kernel.set_form(nnx.merge(graphdef, state), attention_kernel.XLA)  # same arrays, not copied
    graphdef, state = nnx.split(copy)
    with_paths, treedef = jax.tree_util.tree_flatten_with_path(state)
    kept = [keep is None or keep(dotted_name(path)) for path, _ in with_paths]
    params = [np.asarray(leaf, np.float32) for (_, leaf), k in zip(with_paths, kept) if k]
    placeholder = np.zeros((), np.float32)

    def rebuild(p):
        p = iter(p)
        leaves = [next(p) if k else placeholder for k in kept]
        return nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))

    return rebuild, params


def _to_device_arrays(module) -> None:
    """Replaces the module's NumPy leaves (a checkpoint loader's) by JAX arrays in place, one at a time. A jitted
    call copies NumPy arguments into new device buffers on every call — 4 GB more for a 1 B-parameter UNet
    while its reference outputs are computed — where JAX arrays are passed as they are; converting leaf by
    leaf lets each NumPy array go as soon as its copy exists (measured: export/README.md)."""
    for _, node in nnx.iter_graph(module):
        if isinstance(node, nnx.Variable) and isinstance(node.get_value(), np.ndarray):
            node.set_value(jnp.asarray(node.get_value()))


def dotted_name(path) -> str:
    """A pytree path of an nnx state as the dotted parameter name ("conv_in.kernel")."""
    keys = [getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path]
    return ".".join(str(k) for k in keys if k != "value")


# ---- the UNet ----------------------------------------------------------------------------------------
def prepare_unet(unet, *, gate_keep: int | None = None):
    """The inference form of a trained MobileVD UNet: funnels folded into the weights (exact) and temporal
    blocks dropped by learned gates removed physically (the top `gate_keep` stay, as the stage that ends
    gate learning would do). Blocks already named in `pruned_temporal_blocks` were never built."""
    from mvd_jax.models.funnels import merge_funnels

    c = unet.config
    if c.temporal_gating is not None:
        if gate_keep is None:
            raise UserError("this UNet still learns temporal gates; export it from its run directory (whose "
                            "train.gate_keep says how many blocks stay) or prune it first (prune_from_gates)")
        from mvd_jax.models.gates import prune_temporal_blocks
        from mvd_jax.train.stages import learned_pruning

        unet = prune_temporal_blocks(unet, names=learned_pruning(unet, gate_keep))
    if unet.config.funnel_factor is not None and not unet.config.funnels_merged:
        unet = merge_funnels(unet)
    return unet


def one_step_constants(sigma_max: float) -> dict[str, float]:
    """σ·c_in, σ·c_skip, c_out and c_noise at σ = sigma_max: edm.py's formulas, in float64 NumPy (edm.py's
    functions use jnp, which computes in float32)."""
    s = np.float64(sigma_max)
    root = np.sqrt(s * s + 1.0)
    return dict(in_scale=float(s / root), skip_scale=float(s / (s * s + 1.0)), out_scale=float(-s / root),
                c_noise=float(0.25 * np.log(s)))


def one_step_inputs(k: dict, noise, cond_latent, image_embeds, added_time_ids) -> tuple:
    """The UNet's arguments (sample, timestep, encoder_hidden_states, added_time_ids) for the single step at
    the σ of `k` (one_step_constants)."""
    b, t = noise.shape[:2]
    cond = jnp.broadcast_to(cond_latent[:, None], (b, t, *cond_latent.shape[1:]))
    x = jnp.concatenate([k["in_scale"] * noise, cond], axis=-1)
    return x, jnp.full((b,), k["c_noise"], jnp.float32), image_embeds[:, None, :], added_time_ids


def one_step_output(k: dict, noise, v):
    """x̂0 from the UNet's output `v` (EDM's skip connection at σ_max, folded as in the module docstring)."""
    return k["skip_scale"] * noise + k["out_scale"] * v


def unet_step(unet, *, frames: int, latent_height: int, latent_width: int, batch: int = 1,
              sigma_max: float = edm.SIGMA_MAX) -> ExportFunction:
    """The distilled single step (samplers.single_step_sample) of a UNet in inference form (prepare_unet)."""
    c = unet.config
    if c.temporal_gating is not None or (c.funnel_factor is not None and not c.funnels_merged):
        raise UserError("unet_step takes a UNet in inference form: call prepare_unet first")
    rebuild, params = _split(unet)
    k = one_step_constants(sigma_max)
    latent = c.out_channels
    context_dim = c.context_dims[0]
    ids = c.num_added_time_ids

    def fn(params, noise, cond_latent, image_embeds, added_time_ids):
        return {"x0": one_step_output(k, noise, rebuild(params)(*one_step_inputs(k, noise, cond_latent, image_embeds,
                                                                               added_time_ids)))}

    def sampler(rng):
        motion = rng.uniform(60, 200, (batch, 1))
        return dict(
            noise=rng.standard_normal((batch, frames, latent_height, latent_width, latent)).astype(np.float32),
            cond_latent=rng.standard_normal((batch, latent_height, latent_width, latent)).astype(np.float32),
            image_embeds=rng.standard_normal((batch, context_dim)).astype(np.float32),
            # fps − 1, motion bucket, noise augmentation (then any further ids a config adds)
            added_time_ids=np.concatenate([np.full((batch, 1), 6.0), motion, np.full((batch, 1), 0.02),
                                           rng.uniform(0, 1, (batch, max(ids - 3, 0)))], axis=1)[:, :ids]
            .astype(np.float32))

    f = ExportFunction("unet_step", fn, params, (
        Input("noise", (batch, frames, latent_height, latent_width, latent), "unit Gaussian noise"),
        Input("cond_latent", (batch, latent_height, latent_width, latent),
              "VAE mode of the noise-augmented first frame (not scaled)"),
        Input("image_embeds", (batch, context_dim), "CLIP image embedding of the first frame"),
        Input("added_time_ids", (batch, ids), "fps − 1, motion_bucket_id, noise_aug_strength"),
    ), ("x0",), sampler)
    f.check()
    return f


# ---- the autoencoder ---------------------------------------------------------------------------------
def vae_decoder(vae, *, frames: int, latent_height: int, latent_width: int, name: str = "vae_decoder") -> ExportFunction:
    """Latents as the UNet returns them (scaled) → frames in [0, 1]; the decoder's temporal layers mix the
    `frames` frames of this call (a chunk, as diffusers' decode_chunk_size). `vae` may be any autoencoder with
    the VAE's decode interface: the tiny autoencoder (models/tiny_autoencoder.py) is `vae_decoder_tiny`."""
    rebuild, params = _split(vae)
    scale = float(vae.config.scaling_factor)
    latent = vae.config.latent_channels

    def fn(params, latents):
        model = rebuild(params)
        b, t, h, w, c = latents.shape
        x = model.decode(latents.reshape(b * t, h, w, c) / scale, t)
        return {"frames": jnp.clip(x / 2 + 0.5, 0.0, 1.0).reshape(b, t, *x.shape[1:])}

    def sampler(rng):
        return dict(latents=(scale * rng.standard_normal((1, frames, latent_height, latent_width, latent)))
                    .astype(np.float32))

    f = ExportFunction(name, fn, params,
                       (Input("latents", (1, frames, latent_height, latent_width, latent), "x0 of unet_step"),),
                       ("frames",), sampler)
    f.check()
    return f


def vae_encoder(vae, *, height: int, width: int) -> ExportFunction:
    """The conditioning latent: the posterior mode of the (noise-augmented) first frame, unscaled."""
    rebuild, params = _split(vae)

    def fn(params, image):
        return {"cond_latent": rebuild(params).encode_mode(image)}

    f = ExportFunction("vae_encoder", fn, params,
                       (Input("image", (1, height, width, 3), "RGB in [−1, 1] plus noise_aug_strength·N(0, I)"),),
                       ("cond_latent",), lambda rng: dict(image=_random_image(rng, height, width)))
    f.check()
    return f


# ---- the image encoder -------------------------------------------------------------------------------
def clip_image_encoder(encoder, *, height: int, width: int) -> ExportFunction:
    """The image embedding of the first frame at the video's size: SVD's anti-aliased resize to 224² and
    CLIP normalisation (two constant matrices for a static input size) followed by the encoder."""
    from mvd_jax.models.clip_vision import preprocess_for_clip

    rebuild, params = _split(encoder)

    def fn(params, image):
        return {"image_embeds": rebuild(params)(preprocess_for_clip(image))}

    f = ExportFunction("clip_image_encoder", fn, params,
                       (Input("image", (1, height, width, 3), "RGB in [−1, 1]"),),
                       ("image_embeds",), lambda rng: dict(image=_random_image(rng, height, width)))
    f.check()
    return f


def _random_image(rng, height: int, width: int) -> np.ndarray:
    """A smooth random picture in [−1, 1] (bilinear blow-up of an 8×8 grid, plus a little pixel noise):
    closer to a photograph's statistics than white noise, which no encoder ever sees."""
    coarse = rng.uniform(-1, 1, (8, 8, 3))
    ys, xs = np.linspace(0, 7, height), np.linspace(0, 7, width)
    y0, x0 = np.minimum(ys.astype(int), 6), np.minimum(xs.astype(int), 6)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    img = ((1 - fy) * (1 - fx) * coarse[y0][:, x0] + (1 - fy) * fx * coarse[y0][:, x0 + 1]
           + fy * (1 - fx) * coarse[y0 + 1][:, x0] + fy * fx * coarse[y0 + 1][:, x0 + 1])
    img = img + 0.02 * rng.standard_normal(img.shape)
    return np.clip(img, -1, 1)[None].astype(np.float32)


# ---- real inputs -------------------------------------------------------------------------------------
def clip_real_inputs(vae, image_encoder, clip: dict, *, frames: int, decode_chunk: int, seed: int = 0,
                     noise_aug_strength: float = 0.02) -> dict[str, dict[str, np.ndarray]]:
    """{function name: its inputs} from ONE real clip (a VideoClipLoader batch of 1: `video` (1,T,H,W,3) in
    [−1, 1], `fps`, `motion_bucket_id`), encoded as training encodes it (data.encode.encode_clips, the
    conditioning frame augmented with `noise_aug_strength`, its noise from clip_keys(seed, [0])):

        unet_step           unit Gaussian noise (seeded), the clip's cond_latent, image_embeds, added_time_ids
        vae_decoder         the clip's latents of its first `decode_chunk` frames, scaled (as unet_step's x0)
        vae_encoder, clip_image_encoder   the clip's first frame in [−1, 1]
    """
    from mvd_jax.data.encode import ClipEncoder, clip_keys

    video = np.asarray(clip["video"], np.float32)
    if video.ndim != 5 or video.shape[0] != 1 or video.shape[1] < decode_chunk:
        raise UserError(f"a real clip of shape (1, ≥{decode_chunk}, H, W, 3) is needed, got {video.shape}")
    # only the frames the decoder takes are encoded: the VAE encodes frame by frame, cond and CLIP see frame 0
    batch = dict(video=video[:, :decode_chunk], fps=np.asarray(clip["fps"]),
                 motion_bucket_id=np.asarray(clip["motion_bucket_id"]))
    encoded = ClipEncoder(vae, image_encoder, devices=jax.local_devices()[:1])(
        batch, noise_aug_strength, clip_keys(seed, [0]))
    latents = np.asarray(encoded["latents"], np.float32)
    # the noise from its own stream: not the random set's noise (sampler, default_rng(seed)) again
    noise = np.random.default_rng((seed, 1)).standard_normal((1, frames, *latents.shape[2:])).astype(np.float32)
    first = video[:, 0]
    return dict(
        unet_step=dict(noise=noise, cond_latent=np.asarray(encoded["cond_latent"], np.float32),
                       image_embeds=np.asarray(encoded["image_embeds"][:, 0], np.float32),
                       added_time_ids=np.asarray(encoded["added_time_ids"], np.float32)),
        vae_decoder=dict(latents=latents),
        vae_decoder_tiny=dict(latents=latents),
        vae_encoder=dict(image=first),
        clip_image_encoder=dict(image=first))


COMPONENTS = ("unet", "vae_decoder", "vae_encoder", "clip", "vae_decoder_tiny")
