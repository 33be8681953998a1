"""Follow a run's multi-step sample step by step — how issue 26's noise was found (a model that returns
its input at low σ leaves the noise of σ ≈ 1 in the video).

    python bench/sample_trace.py --run runs/demo --clips 8 --steps 12 [--videos demo:heldout] [--raw]

On real clips' conditioning: (1) the denoiser's x0 error (RMS against the clip's latents, in pixel-latent
units, i.e. divided by the autoencoder's scaling factor) at fixed σ, beside the error of simply copying the
conditioning frame; error ≈ σ at low σ means the model hands back its noisy input. (2) the Euler trajectory
from σ_max: per level σ, the x0 error of the prediction and the spread of x (the data's spread is printed
first). (3) the decoded sample's PSNR / sharpness / motion against the real clips and the still reference.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mvd_jax.data.encode import encode_clips  # noqa: E402
from mvd_jax.diffusion import edm  # noqa: E402
from mvd_jax.eval import sample_quality as q  # noqa: E402
from mvd_jax.train.stages import read_run_unet  # noqa: E402
from mvd_jax.train.trainer import build_autoencoder  # noqa: E402

PROBE_SIGMAS = (0.05, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 100.0, 700.0)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True)
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--videos", default=None, help="where the clips come from (default: the run's data)")
    p.add_argument("--raw", action="store_true", help="the raw weights instead of the EMA")
    args = p.parse_args()

    unet, cfg, step = read_run_unet(args.run, use_ema=not args.raw)
    clips = q.real_clips(cfg, args.clips, 0, args.videos)
    real = q.to_uint8(clips["video"])
    autoencoder, image_encoder = build_autoencoder(cfg)
    scale = autoencoder.config.scaling_factor
    b, t = args.clips, cfg.frames
    batch = encode_clips(autoencoder, image_encoder, jnp.asarray(clips["video"]), jnp.asarray(clips["fps"]),
                         jnp.asarray(clips["motion_bucket_id"]), jnp.full((b,), 0.02, jnp.float32),
                         jax.random.split(jax.random.key(0), b))
    cond = jnp.repeat(batch["cond_latent"][:, None], t, axis=1)
    x0 = batch["latents"]
    graphdef, state = nnx.split(unet)

    @jax.jit
    def denoise(state, x, sigma):
        model = nnx.merge(graphdef, state)
        return edm.denoise(lambda *a: model(*a), x, sigma, cond, batch["image_embeds"], batch["added_time_ids"])

    def err(d):
        return float(jnp.sqrt(jnp.mean((d - x0) ** 2))) / scale

    print(f"{args.run} step {step} ({'raw' if args.raw else 'EMA'} weights), {b} clips; latent spread "
          f"{float(jnp.std(x0)):.3f} (×{scale:g}); copying the conditioning frame: x0 error "
          f"{float(jnp.sqrt(jnp.mean((cond * scale - x0) ** 2))) / scale:.3f}")
    key = jax.random.key(1)
    row = []
    for s in PROBE_SIGMAS:
        noise = jax.random.normal(jax.random.fold_in(key, int(s * 100)), x0.shape)
        row.append(f"σ {s:g}: {err(denoise(state, x0 + s * noise, jnp.float32(s))):.3f}")
    print("x0 error at fixed σ (pixel-latent units):", "; ".join(row))

    sigmas = edm.karras_sigmas(args.steps)
    x = jax.random.normal(jax.random.key(5), x0.shape) * np.sqrt(sigmas[0] ** 2 + 1)  # as euler_sample
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        d = denoise(state, x, s)
        print(f"  Euler level {i}: σ {float(s):9.4g}  x0 error {err(d):.3f}  spread of x {float(jnp.std(x)):.3f}")
        x = x + (s_next - s) * (x - d) / s
    frames = np.stack([q.to_uint8(autoencoder.decode(x[i] / scale, t)) for i in range(b)])
    rp = q.pixel_statistics(real)
    print(f"{args.steps}-step sample:", q.describe(q.scores(frames[None], real, rp)))
    print("first frame held still:", q.describe(q.scores(q.still_video(real)[None], real, rp)))


if __name__ == "__main__":
    main()
