"""How close a guidance-distilled student is to its 3-pass teacher, on frames no run trained on (issue 24;
train/guidance_distill.py).

    python bench/guidance_distill_demo.py --run runs/movie_distill --out bench/results/guidance_distill_demo.json \
        --sheet bench/results/guidance_distill_demo.png

`--run` is a guidance_distill run (configs/demo_movie.py:distill); its checkpoint holds the student (EMA weights)
and the frozen teacher. `--clips` clips from `--videos` (default demo:heldout, the last 30 % of each bundled video,
which the demo never trained on), centre-cropped to the run's size; each clip's first frame is edited twice, with
edits i and i + E/2 of data/edit_pairs.EDITS (clip i), so every edit is seen. Then, against the teacher's
guided ε̃ / edit:

(a) noise predictions: at fixed (s_I, s_T) pairs, over `--draws` random noise levels t ~ U{0 … 999} and noises,
    the relative L2 error ‖M − ε̃‖/‖ε̃‖ of the student's one pass and of the conditional-only model ε(x, c_I, c_T)
    — the student's starting point (its guidance projections start at zero, so it starts as exactly that model);
(b) edits: deterministic Euler with the run's edit.sample_steps from the same noise, at each scale pair of
    --sample-scales: PSNR of the student's and the conditional-only edit against the teacher's (decoded frames in
    [−1, 1]), and of each against the programmatic target;
(c) FLOPs per sampling step (paper convention, from the jaxpr): the teacher's 3 passes vs the student's 1.

Writes JSON to --out (and the sheet: input | target | teacher | student | conditional only, at the first sample
scale pair, for the first 8 examples) and prints a summary.

A run of SVD's variant (guidance.model "svd", configs/demo_guidance.py) is measured the same way on held-out clips
(their conditioning as the trainer encodes it): (a) the relative L2 error ‖D − D̃‖/‖D̃ − x‖ of the student's
denoiser and of the conditional-only one against the teacher's frame-wise guided D̃ (ramp 1 → s, for each s of
--svd-scales) at σ from the training distribution; (b) Euler samples (the run's train.sample_steps) from the same
noise at each s: PSNR of the student's and the conditional-only decode against the teacher's, and of each
against the real clip; (c) FLOPs per step, 2 passes vs 1.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_io import write_json  # noqa: E402


def parse_pairs(text: str) -> list[tuple[float, float]]:
    return [tuple(float(v) for v in pair.split(":")) for pair in text.split(",")]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a guidance_distill run directory")
    p.add_argument("--videos", default="demo:heldout")
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--draws", type=int, default=4, help="noise levels per example for (a)")
    p.add_argument("--scales", default="1:2,1.5:7.5,2:5,3:14", help="s_I:s_T pairs for (a)")
    p.add_argument("--sample-scales", default="1.5:7.5,1.2:3", help="s_I:s_T pairs for (b)")
    p.add_argument("--out", required=True)
    p.add_argument("--sheet", default=None, help="a PNG of the first sample scale pair's edits")
    p.add_argument("--svd-scales", default="1.5,2,3", help="ramp tops s for an SVD run")
    args = p.parse_args(argv)
    from mvd_jax.train import guidance_distill as gd
    from mvd_jax.train.stages import read_run_config

    gd.check_distilled_run(args.run)
    if gd.distils_svd(read_run_config(args.run)):
        return svd_main(args)

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from mvd_jax.data import edit_pairs
    from mvd_jax.eval.flops import jaxpr_flops
    from mvd_jax.eval.sample_quality import real_clips
    from mvd_jax.train import edit_training as et
    from mvd_jax.train import guidance_distill as gd
    from mvd_jax.train.metrics import psnr
    from mvd_jax.train.model_state import PairCodec
    from mvd_jax.train.stages import read_run_params

    params, cfg, step = read_run_params(args.run, use_ema=True)
    student, teacher = PairCodec(*gd.abstract_pair(cfg), gd.TEACHER_PREFIX).merge(params)
    autoencoder, text = et.build_autoencoder(cfg), et.build_text_parts(cfg)
    schedule = et.noise_schedule(cfg)
    abar = jnp.asarray(et.alphas_cumprod(schedule))

    # the examples: clip i's first frame with edits i and i + E/2
    clips = real_clips(cfg, args.clips, args.seed, args.videos)
    frames = jnp.asarray(np.asarray(clips["video"])[:, 0])
    n_edits = len(edit_pairs.EDITS)
    which = np.concatenate([np.arange(args.clips) % n_edits, (np.arange(args.clips) + n_edits // 2) % n_edits])
    frames = jnp.concatenate([frames, frames])
    ids = jnp.asarray(edit_pairs.instruction_ids(text.tokenizer))
    states = text.encoder(ids).last_hidden_state
    scale = autoencoder.config.scaling_factor
    ex = {"latents": autoencoder.encode_mode(edit_pairs.apply_edits(frames, jnp.asarray(which))) * scale,
          "image_latents": autoencoder.encode_mode(frames), "text": states[jnp.asarray(which)],
          "empty_text": jnp.broadcast_to(states[-1:], (frames.shape[0], *states.shape[1:]))}

    # (a) noise predictions
    eps = gd.eps_errors(student, teacher, ex, jax.random.key(args.seed + 11), abar, parse_pairs(args.scales),
                        draws=args.draws)
    eps_rows = [{"s_image": s_i, "s_text": s_t, "student_rel_l2": float(a), "conditional_only_rel_l2": float(b)}
                for (s_i, s_t), (a, b) in eps.items()]

    # (b) edits from the same noise
    graphdef, st = nnx.split((student, teacher))
    noise = jax.random.normal(jax.random.key(args.seed + 3), ex["latents"].shape)

    @jax.jit
    def run(st, s_i, s_t):
        s, t = nnx.merge(graphdef, st)
        return gd.compare_samples(s, t, ex, schedule, steps=cfg.edit.sample_steps, s_image=s_i, s_text=s_t,
                                  noise=noise)

    target = et.decode_to_unit(autoencoder, ex["latents"])
    inputs = et.decode_to_unit(autoencoder, ex["image_latents"] * scale)
    db = lambda a, b: float(psnr(jnp.asarray(a) * 2 - 1, jnp.asarray(b) * 2 - 1))
    sample_rows, sheet = [], None
    for s_i, s_t in parse_pairs(args.sample_scales):
        teacher_x, student_x, cond_x = (et.decode_to_unit(autoencoder, z) for z in run(st, s_i, s_t))
        sample_rows.append({"s_image": s_i, "s_text": s_t, "steps": int(cfg.edit.sample_steps),
                            "student_vs_teacher_psnr_db": db(student_x, teacher_x),
                            "conditional_only_vs_teacher_psnr_db": db(cond_x, teacher_x),
                            "teacher_vs_target_psnr_db": db(teacher_x, target),
                            "student_vs_target_psnr_db": db(student_x, target),
                            "conditional_only_vs_target_psnr_db": db(cond_x, target)})
        if sheet is None:
            sheet = [inputs, target, teacher_x, student_x, cond_x]

    # (c) FLOPs per sampling step, one frame
    one = {k: v[:1] for k, v in ex.items()}
    x = one["latents"]
    teacher_flops = jaxpr_flops(jax.make_jaxpr(lambda x: et.guided_eps(
        teacher, x, one["image_latents"], 500.0, one["text"], one["empty_text"], 1.5, 7.5)[0])(x))
    student_flops = jaxpr_flops(jax.make_jaxpr(lambda x: gd.student_eps(
        student, x, one["image_latents"], 500.0, one["text"], 1.5, 7.5))(x))

    result = {"run": str(args.run), "step": int(step), "videos": args.videos, "examples": int(frames.shape[0]),
              "edits": [edit_pairs.INSTRUCTIONS[i] for i in which],
              "eps": eps_rows, "samples": sample_rows,
              "flops_per_step": {"teacher_3_passes": int(teacher_flops), "student_1_pass": int(student_flops),
                                 "ratio": teacher_flops / student_flops}}
    write_json(args.out, result)
    if args.sheet and sheet is not None:
        from PIL import Image

        grid = np.concatenate([np.concatenate(list(c[:8]), axis=0) for c in sheet], axis=1)  # the first 8 rows
        Path(args.sheet).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((grid * 255).round().astype(np.uint8)).save(args.sheet)
    print(f"run {args.run} step {step}, {frames.shape[0]} held-out frames × edits")
    for r in eps_rows:
        print(f"  ε̃ rel. L2 at s_I {r['s_image']:g}, s_T {r['s_text']:g}: student {r['student_rel_l2']:.3f}, "
              f"conditional only (the start) {r['conditional_only_rel_l2']:.3f}")
    for r in sample_rows:
        print(f"  {r['steps']}-step edit at s_I {r['s_image']:g}, s_T {r['s_text']:g}, PSNR vs teacher: student "
              f"{r['student_vs_teacher_psnr_db']:.2f} dB, conditional only {r['conditional_only_vs_teacher_psnr_db']:.2f} dB"
              f" (vs target: teacher {r['teacher_vs_target_psnr_db']:.2f}, student {r['student_vs_target_psnr_db']:.2f})")
    print(f"  UNet GFLOPs per step and frame: teacher {teacher_flops / 1e9:.3f} (3 passes), student "
          f"{student_flops / 1e9:.3f} (1 pass): {teacher_flops / student_flops:.2f}×")


def svd_main(args):
    import functools

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from mvd_jax.data.encode import encode_clips
    from mvd_jax.diffusion import edm, samplers
    from mvd_jax.eval.flops import jaxpr_flops
    from mvd_jax.eval.sample_quality import real_clips
    from mvd_jax.train import guidance_distill as gd
    from mvd_jax.train.metrics import psnr
    from mvd_jax.train.model_state import PairCodec
    from mvd_jax.train.stages import read_run_params
    from mvd_jax.train.trainer import build_autoencoder

    params, cfg, step = read_run_params(args.run, use_ema=True)
    student, teacher = PairCodec(*gd.abstract_pair(cfg), gd.TEACHER_PREFIX).merge(params)
    clips = real_clips(cfg, args.clips, args.seed, args.videos)
    autoencoder, image_encoder = build_autoencoder(cfg)
    b, t = clips["video"].shape[:2]
    batch = encode_clips(autoencoder, image_encoder, jnp.asarray(clips["video"]), jnp.asarray(clips["fps"]),
                         jnp.asarray(clips["motion_bucket_id"]), jnp.full((b,), 0.02, jnp.float32),
                         jax.random.split(jax.random.key(args.seed), b))
    tops = [float(v) for v in args.svd_scales.split(",")]
    errs = gd.svd_denoiser_errors(student, teacher, batch, jax.random.key(args.seed + 11), tops,
                                  p_mean=cfg.train.p_mean, p_std=cfg.train.p_std, draws=args.draws)
    graphdef, st = nnx.split((student, teacher))
    noise = jax.random.normal(jax.random.key(args.seed + 3), batch["latents"].shape)
    cond = jnp.repeat(batch["cond_latent"][:, None], t, axis=1)
    sigmas = edm.karras_sigmas(int(cfg.train.sample_steps))

    @functools.partial(jax.jit, static_argnums=1)  # guided_denoiser decides on the scale in Python
    def run(st, top):
        s, te = nnx.merge(graphdef, st)
        go = lambda fn, hi: samplers.euler_sample(fn, noise, sigmas, cond, batch["image_embeds"],
                                                  batch["added_time_ids"], min_scale=1.0, max_scale=hi)
        return (go(lambda *a: te(*a), top), go(lambda *a: s(*a, guidance=jnp.full((b, 1), top)), 1.0),
                go(lambda *a: te(*a), 1.0))

    decode = lambda z: jnp.stack([autoencoder.decode(c / autoencoder.config.scaling_factor, t) for c in z])
    real = jnp.asarray(clips["video"])
    rows = []
    for top in tops:
        # guided_denoiser skips CFG at s ≤ 1: the ramp 1 → 1 is the conditional model itself
        teacher_x, student_x, cond_x = (decode(z) for z in run(st, top))
        e = errs[top]
        rows.append({"s": top, "student_rel_l2": float(e[0]), "conditional_only_rel_l2": float(e[1]),
                     "student_vs_teacher_psnr_db": float(psnr(student_x, teacher_x)),
                     "conditional_only_vs_teacher_psnr_db": float(psnr(cond_x, teacher_x)),
                     "teacher_vs_real_psnr_db": float(psnr(teacher_x, real)),
                     "student_vs_real_psnr_db": float(psnr(student_x, real))})
    one = jax.tree.map(lambda x: x[:1], batch)
    c1 = jnp.repeat(one["cond_latent"][:, None], t, axis=1)
    count = lambda fn: jaxpr_flops(jax.make_jaxpr(lambda x: samplers.guided_denoiser(
        fn[0], c1, one["image_embeds"], one["added_time_ids"], 1.0, fn[1])(x, jnp.float32(1.0)))(one["latents"]))
    teacher_flops = count((lambda *a: teacher(*a), 2.0))
    student_flops = count((lambda *a: student(*a, guidance=jnp.full((1, 1), 2.0)), 1.0))
    result = {"run": str(args.run), "step": int(step), "model": "svd", "videos": args.videos, "clips": b,
              "steps": int(cfg.train.sample_steps), "rows": rows,
              "flops_per_step": {"teacher_2_passes": int(teacher_flops), "student_1_pass": int(student_flops),
                                 "ratio": teacher_flops / student_flops}}
    write_json(args.out, result)
    print(f"run {args.run} step {step}, {b} held-out clips, {int(cfg.train.sample_steps)}-step samples")
    for r in rows:
        print(f"  s {r['s']:g}: D̃ rel. error student {r['student_rel_l2']:.3f}, conditional only "
              f"{r['conditional_only_rel_l2']:.3f}; PSNR vs teacher: student {r['student_vs_teacher_psnr_db']:.2f} dB, "
              f"conditional only {r['conditional_only_vs_teacher_psnr_db']:.2f} dB (vs real: teacher "
              f"{r['teacher_vs_real_psnr_db']:.2f}, student {r['student_vs_real_psnr_db']:.2f})")
    print(f"  UNet GFLOPs per step and clip: teacher {teacher_flops / 1e9:.2f} (2 passes), student "
          f"{student_flops / 1e9:.2f} (1 pass): {teacher_flops / student_flops:.2f}×")


if __name__ == "__main__":
    main()
