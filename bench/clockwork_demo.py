"""How good a distilled Clockwork adaptor is, on clips no run trained on (issue 23; train/clockwork_distill.py).

    python bench/clockwork_demo.py --run runs/demo_clockwork --clips 8 \
        --out bench/results/clockwork_demo.json

`--run` is a clockwork run directory (configs/demo_clockwork.py); `--teacher` the run (or UNet folder) it
distilled, default the teacher copy the clockwork run holds itself (its frozen parameters: the same weights; when
both are given they are compared). `--clips` real clips from `--videos` (default demo:heldout, the last 30 % of
each bundled video, which the demo never trained on), centre-cropped to the run's size
(eval/sample_quality.real_clips), give the conditioning — first-frame latent with noise augmentation 0.02, image
embedding, added time ids — as eval/sample_quality.sample_run makes it. Then:

(a) features: the teacher's Euler trajectory from σ_max noise over the run's `clockwork.steps` Karras levels
    (its guidance), and every step pair's squared error of the trained adaptor's estimate of r_out^t and of the
    identity adaptor's (reuse of r_out^{t+1}) — overall, relative to ‖r_out^t‖², and per step;
(b) clips: the full Euler sampler and the clock-N samplers (--clocks, default 2 and 4) with the identity and the
    trained adaptor, all from the same noise; each clock sample's error against the full sampler's, in latent
    space (RMSE; PSNR over the full sample's peak-to-peak range) and decoded (RMSE and PSNR of frames in
    [−1, 1], peak-to-peak 2);
(c) FLOPs (paper convention, eval/flops.clockwork_flops): the UNet's per clip under each clock with each adaptor,
    and the saving against the plain sampler.

Writes JSON to --out and prints a summary. The numbers are for one draw of noise per clip (--noise-seed).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_io import write_json  # noqa: E402


def load_teacher(spec, run_teacher):
    """The UNet `--teacher` names (a run directory's EMA UNet or a UNet folder), checked against the run's copy."""
    from mvd_jax.convert import load_unet
    from mvd_jax.errors import UserError
    from mvd_jax.train.model_state import ParamCodec
    from mvd_jax.train.stages import is_run_dir, read_run_unet

    unet = read_run_unet(spec, use_ema=True)[0] if is_run_dir(spec) else load_unet(spec)
    strip = lambda c: dataclasses.replace(c, num_frames=0)
    if strip(unet.config) != strip(run_teacher.config):
        raise UserError(f"--teacher {spec}: its UNet is not the one the clockwork run distilled")
    mine, theirs = ParamCodec(unet).to_dict(unet), ParamCodec(run_teacher).to_dict(run_teacher)
    same = all(np.array_equal(np.asarray(mine[k]), np.asarray(theirs[k])) for k in mine)
    return unet, same


def errors(x, ref, peak):
    """RMSE and PSNR (dB, over `peak`) of x against ref, per clip then averaged."""
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    mse = np.mean((x - ref) ** 2, axis=tuple(range(1, x.ndim)))
    psnr = 10 * np.log10(np.asarray(peak, np.float64) ** 2 / np.maximum(mse, 1e-20))
    return {"rmse": float(np.mean(np.sqrt(mse))), "psnr_db": float(np.mean(psnr))}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a clockwork run directory")
    p.add_argument("--teacher", default=None, help="the run or UNet folder it distilled (default: its own copy)")
    p.add_argument("--videos", default="demo:heldout")
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--seed", type=int, default=0, help="which clips (start frames) and their conditioning noise")
    p.add_argument("--noise-seed", type=int, default=1, help="the σ_max noise of trajectories and samples")
    p.add_argument("--steps", type=int, default=None, help="Euler steps (default: the run's clockwork.steps)")
    p.add_argument("--clocks", default="2,4")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from mvd_jax.data.encode import encode_clips
    from mvd_jax.diffusion import edm, samplers
    from mvd_jax.eval.flops import clockwork_flops
    from mvd_jax.eval.sample_quality import real_clips
    from mvd_jax.models.clockwork import clockwork_parts, identity_adaptor
    from mvd_jax.train.clockwork_distill import pair_errors, read_clockwork_run, teacher_pairs
    from mvd_jax.train.trainer import build_autoencoder

    t0 = time.perf_counter()
    teacher, adaptor, cfg, step = read_clockwork_run(args.run)
    same_weights = None
    if args.teacher:
        teacher, same_weights = load_teacher(args.teacher, teacher)
    cw = cfg.clockwork
    steps = args.steps or int(cw.steps)
    clocks = [int(c) for c in args.clocks.split(",") if c.strip()]
    guidance = (float(cw.min_guidance_scale), float(cw.max_guidance_scale))
    identity = identity_adaptor(teacher.config, adaptor.config.cut_level)

    # ---- held-out clips → conditioning (as eval/sample_quality.sample_run) -------------------------------
    clips = real_clips(cfg, args.clips, args.seed, args.videos)
    autoencoder, image_encoder = build_autoencoder(cfg)
    b, t = clips["video"].shape[:2]
    batch = encode_clips(autoencoder, image_encoder, jnp.asarray(clips["video"]), jnp.asarray(clips["fps"]),
                         jnp.asarray(clips["motion_bucket_id"]), jnp.full((b,), 0.02, jnp.float32),
                         jax.random.split(jax.random.key(args.seed), b))
    noise = jax.random.normal(jax.random.key(args.noise_seed), batch["latents"].shape)
    cond = jnp.repeat(batch["cond_latent"][:, None], t, axis=1)
    sigmas = edm.karras_sigmas(steps)
    graphdef, state = nnx.split((teacher, adaptor, identity))

    # ---- (a) feature error on the teacher's trajectories ---------------------------------------------------
    @jax.jit
    def features(state, batch, noise):
        unet, adaptor, identity = nnx.merge(graphdef, state)
        pairs = teacher_pairs(unet, batch, jax.random.key(0), sigmas=sigmas, cut_level=adaptor.config.cut_level,
                              min_scale=guidance[0], max_scale=guidance[1], noise=noise)
        learned, reuse = pair_errors(adaptor, pairs)
        norm = jnp.mean(jnp.square(pairs.r_out.astype(jnp.float32)), axis=tuple(range(2, pairs.r_out.ndim)))
        return learned, reuse, norm, pairs.step

    learned, reuse, norm, pair_step = map(np.asarray, features(state, batch, noise))
    feats = {"adaptor_mse": float(learned.mean()), "identity_mse": float(reuse.mean()),
             "ratio": float(learned.mean() / reuse.mean()),
             "adaptor_rel": float(learned.sum() / norm.sum()), "identity_rel": float(reuse.sum() / norm.sum()),
             "per_step": [{"step": int(s), "sigma": float(sigmas[s]), "adaptor_mse": float(a.mean()),
                           "identity_mse": float(r.mean())} for s, a, r in zip(pair_step, learned, reuse)]}

    # ---- (b) clock-N samples against the full sampler, same noise ------------------------------------------
    @jax.jit
    def sample(state, noise, cond, embeds, ids):
        unet, adaptor, identity = nnx.merge(graphdef, state)
        loop = dict(min_scale=guidance[0], max_scale=guidance[1])
        full = samplers.euler_sample(lambda *a: unet(*a), noise, sigmas, cond, embeds, ids, **loop)
        clocked = {(c, name): samplers.clockwork_euler_sample(clockwork_parts(unet, a), noise, sigmas, cond, embeds,
                                                              ids, clock=c, **loop)
                   for c in clocks for name, a in (("identity", identity), ("adaptor", adaptor))}
        return full, clocked

    full, clocked = sample(state, noise, cond, batch["image_embeds"], batch["added_time_ids"])
    scale = autoencoder.config.scaling_factor
    decode = lambda z: np.stack([np.asarray(autoencoder.decode(z[i] / scale, t)) for i in range(b)])
    full_frames = decode(full)
    latent_peak = np.ptp(np.asarray(full).reshape(b, -1), axis=1)
    sampling = {}
    for (c, name), z in clocked.items():
        sampling.setdefault(f"clock_{c}", {})[name] = {
            "latent": errors(z, full, latent_peak), "decoded": errors(decode(z), full_frames, 2.0)}

    # ---- (c) FLOPs per clip --------------------------------------------------------------------------------
    f = autoencoder.config.downsampling_factor
    size = dict(batch=1, frames=cfg.frames, height=cfg.height // f, width=cfg.width // f, steps=steps,
                guidance=guidance[1] > 1)
    flops = {f"clock_{c}": {name: clockwork_flops(teacher, a, clock=c, **size)
                            for name, a in (("identity", identity), ("adaptor", adaptor))} for c in clocks}

    result = {"run": args.run, "step": step, "teacher": args.teacher or f"{args.run} (its frozen copy)",
              "teacher_weights_equal_the_runs": same_weights, "videos": args.videos, "clips": b,
              "frames": cfg.frames, "height": cfg.height, "width": cfg.width, "steps": steps, "guidance": guidance,
              "adaptor": adaptor.config.to_dict(),
              "adaptor_params": int(sum(np.size(x) for x in jax.tree.leaves(nnx.state(adaptor, nnx.Param)))),
              "features": feats, "sampling": sampling, "flops": flops, "seconds": time.perf_counter() - t0}
    print(f"features ({steps}-step trajectories, {b} held-out clips): adaptor MSE {feats['adaptor_mse']:.4g}, "
          f"identity {feats['identity_mse']:.4g} (ratio {feats['ratio']:.3f})")
    for c in clocks:
        s, n = sampling[f"clock_{c}"], flops[f"clock_{c}"]
        print(f"clock {c}: decoded PSNR vs the full sampler — identity {s['identity']['decoded']['psnr_db']:.2f} dB, "
              f"adaptor {s['adaptor']['decoded']['psnr_db']:.2f} dB; FLOPs saved — identity "
              f"{100 * n['identity']['saving']:.1f} %, adaptor {100 * n['adaptor']['saving']:.1f} %")
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
