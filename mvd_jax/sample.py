"""Turn a picture into a video with an SVD-style model.

    python -m mvd_jax.sample --checkpoint SVD_DIR --image in.png --out out.mp4 \\
        [--steps 25 | --steps 1] [--frames 14] [--height 576 --width 1024] [--fps 7] \\
        [--motion_bucket_id 127] [--noise_aug_strength 0.02] [--seed 0] [--decode_chunk_size 8] \\
        [--decoder tiny:RUN_OR_FOLDER] [--clockwork identity|RUN_DIR [--clock 2] [--cut_level 1]]

SVD_DIR is a diffusers StableVideoDiffusionPipeline folder (unet/, vae/, image_encoder/). `--unet` takes
the UNet from elsewhere: a trainer run directory (its latest checkpoint's EMA weights, e.g. an
adversarial run sampled with --steps 1) or a diffusers unet folder; the VAE and CLIP stay SVD_DIR's.
`--decoder tiny:X` decodes with a tiny autoencoder instead of the VAE: X is a decoder_distill run directory
(train/decoder_distill.py) or a diffusers AutoencoderTiny folder (e.g. TAESD's weights). The output
is mp4 (H.264) or, with a .gif name, a gif; it appears only when complete. Guidance: the scale rises
over frames from --min_guidance_scale to --max_guidance_scale (default 3.0 with several steps; with
--steps 1, the distilled model's setting, the default is 1.0: no guidance, one UNet evaluation).
A guidance-distilled UNet (`--unet` of a guidance_distill run, train/guidance_distill.py) reads the scale
itself: one UNet evaluation per step with the ramp 1 → --max_guidance_scale.
`--clockwork` samples with Clockwork Diffusion (models/clockwork.py): the full UNet on the first step and every
--clock-th step, on the others the UNet's high-resolution parts around an adaptor that estimates the
low-resolution features from the previous step's — `identity` (reuse them; the cut below UNet level
--cut_level − 1, default 1: below the top level) or a clockwork run directory's trained adaptor. It then prints
the UNet's TFLOPs per generated clip, beside the plain sampler's.
Everything is checked (paths, image, sizes) before any model is loaded.
"""
from __future__ import annotations

import sys
import time

from mvd_jax import settings
from mvd_jax.errors import ArgumentParser, UserError, cli_main


def _open_image(path):
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
        image.load()
        return image
    except FileNotFoundError:
        raise UserError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"cannot read image {path}: {e}") from None


def _load_unet(path):
    from mvd_jax import storage
    from mvd_jax.convert import load_unet
    from mvd_jax.train.stages import is_run_dir, read_run_unet

    if is_run_dir(path):
        return read_run_unet(path, use_ema=True)[0]
    if not storage.path(path).exists():
        raise UserError(f"--unet {path} is neither a trainer run directory nor a diffusers unet folder")
    return load_unet(path)


def _load_decoder(spec: str):
    """`vae` → None (the VAE's own decoder); `tiny:X` → the tiny autoencoder of run directory / folder X."""
    if spec == "vae":
        return None
    from mvd_jax.train.decoder_distill import load_tiny_decoder

    return load_tiny_decoder(spec, takes="'vae' or 'tiny:RUN_DIR_OR_FOLDER'")


def parser() -> ArgumentParser:
    """The command's options; each number's `type=` is its rule (mvd_jax/settings.py), checked while parsing."""
    p = ArgumentParser(prog="python -m mvd_jax.sample", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="SVD diffusers folder with unet/, vae/, image_encoder/")
    p.add_argument("--unet", default=None, help="a trainer run directory or a diffusers unet/ folder to use instead "
                   "of SVD_DIR/unet")
    p.add_argument("--image", required=True)
    p.add_argument("--out", required=True, help="output .mp4 or .gif")
    p.add_argument("--steps", type=settings.POSITIVE, default=25)
    p.add_argument("--frames", type=settings.POSITIVE, default=14)
    p.add_argument("--height", type=settings.POSITIVE, default=576)
    p.add_argument("--width", type=settings.POSITIVE, default=1024)
    p.add_argument("--fps", type=settings.POSITIVE, default=7, help="frame rate (conditioning: fps − 1)")
    p.add_argument("--motion_bucket_id", type=settings.Int(0), default=127)
    p.add_argument("--noise_aug_strength", type=settings.Float(min=0), default=0.02)
    p.add_argument("--min_guidance_scale", type=settings.Float(min=0), default=1.0)
    p.add_argument("--max_guidance_scale", type=settings.Float(min=0), default=None,
                   help="default: 3.0, or 1.0 (no guidance) with --steps 1")
    p.add_argument("--decode_chunk_size", type=settings.POSITIVE, default=None)
    p.add_argument("--seed", type=settings.SEED, default=0)
    p.add_argument("--decoder", default="vae", help="'vae' (default) or 'tiny:RUN_DIR_OR_FOLDER': a tiny "
                                                    "autoencoder (decoder_distill run, AutoencoderTiny folder)")
    p.add_argument("--clockwork", default=None, help="Clockwork Diffusion: 'identity' (reuse the low-resolution "
                   "features) or a clockwork run directory (its trained adaptor)")
    p.add_argument("--clock", type=settings.POSITIVE, default=None,
                   help="with --clockwork: the full UNet every N steps and on the first (default 2)")
    p.add_argument("--cut_level", type=settings.POSITIVE, default=None,
                   help="with --clockwork identity: where the UNet is cut (1, default: below the top level)")
    return p


def _clockwork_options(args) -> int:
    """The clock of the parsed options (1: no Clockwork), after checking they go together."""
    if args.clockwork is None:
        for name in ("clock", "cut_level"):
            if getattr(args, name) is not None:
                raise UserError(f"--{name} needs --clockwork identity|RUN_DIR")
        return 1
    if args.steps < 2:
        raise UserError("--clockwork needs --steps ≥ 2: the first step always runs the full UNet")
    from mvd_jax.train.clockwork_distill import check_adaptor_spec

    check_adaptor_spec(args.clockwork)
    return 2 if args.clock is None else args.clock


def _print_flops(pipe, args, clock: int, max_scale: float) -> None:
    """The UNet's TFLOPs per clip (paper convention, eval/flops.py) with this clock and with the plain sampler."""
    from mvd_jax.eval.flops import clockwork_flops

    f = pipe.vae_scale
    n = clockwork_flops(pipe.unet, pipe.adaptor, batch=1, frames=args.frames, height=args.height // f,
                        width=args.width // f, steps=args.steps, clock=clock, guidance=max_scale > 1)
    print(f"UNet TFLOPs per clip: {n['total'] / 1e12:.2f} (Clockwork {args.clockwork} adaptor, clock {clock}: full "
          f"UNet on {n['full_steps']} of {n['steps']} steps; plain sampler {n['plain'] / 1e12:.2f}, "
          f"saving {100 * n['saving']:.1f} %)")


@cli_main
def main(argv=None):
    args = parser().parse_args(argv)
    from mvd_jax.compile_cache import enable_persistent_cache

    enable_persistent_cache()  # a repeated run loads its compiled programs instead of recompiling

    from tqdm import tqdm

    from mvd_jax.convert.diffusers_vae import read_vae_config
    from mvd_jax.diffusion.pipeline import ImageToVideo, SampleOptions, check_options, check_pipeline_folder
    from mvd_jax.video_io import check_output_path, write_video

    # fail before any model work: the output path, the sizes the VAE can make, then the image
    out = check_output_path(args.out)
    max_scale = args.max_guidance_scale if args.max_guidance_scale is not None else (3.0 if args.steps > 1 else 1.0)
    clock = _clockwork_options(args)
    options = SampleOptions(num_frames=args.frames, height=args.height, width=args.width, steps=args.steps,
                            min_guidance_scale=args.min_guidance_scale, max_guidance_scale=max_scale,
                            fps=args.fps, motion_bucket_id=args.motion_bucket_id,
                            noise_aug_strength=args.noise_aug_strength, decode_chunk_size=args.decode_chunk_size,
                            seed=args.seed, clock=clock)
    folder = check_pipeline_folder(args.checkpoint)
    check_options(options, read_vae_config(folder / "vae").downsampling_factor)
    image = _open_image(args.image)

    t0 = time.perf_counter()
    adaptor = None
    if args.clockwork is not None:
        from mvd_jax.train.clockwork_distill import load_adaptor

        adaptor = lambda unet_config: load_adaptor(args.clockwork, unet_config, cut_level=args.cut_level)
    pipe = ImageToVideo.from_folder(folder, unet=_load_unet(args.unet) if args.unet else None,
                                    decoder=_load_decoder(args.decoder), adaptor=adaptor)
    load_s = time.perf_counter() - t0

    with tqdm(total=args.steps, desc="denoising", unit="step") as bar:
        frames = pipe(image, options, on_step=lambda i: bar.update(1))
    t1 = time.perf_counter()
    write_video(out, frames, args.fps)
    write_s = time.perf_counter() - t1

    times = {"loading": load_s, **pipe.timings, "writing": write_s}
    guidance = f"guidance {args.min_guidance_scale}→{max_scale}" if max_scale > 1 else "no guidance"
    clockwork = f", Clockwork {args.clockwork} clock {clock}" if args.clockwork is not None else ""
    print(f"wrote {out} ({frames.shape[0]} frames, {frames.shape[2]}×{frames.shape[1]}, {args.fps} fps; "
          f"{args.steps} steps{clockwork}, {guidance}, seed {args.seed})")
    print("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in times.items()))
    if args.clockwork is not None:
        _print_flops(pipe, args, clock, max_scale)


if __name__ == "__main__":
    main(sys.argv[1:])
