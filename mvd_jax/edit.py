"""Edit a video with a text instruction: MoViE's zero-shot video editing with InstructPix2Pix.

    python -m mvd_jax.edit --checkpoint IP2P_DIR --video in.mp4 --prompt "make it snowy" --out out.mp4 \\
        [--steps 10] [--image-guidance 1.5] [--text-guidance 7.5] [--frames N] [--height H --width W] \\
        [--seed 0] [--batch_frames 8] [--no_cross_frame]

    python -m mvd_jax.edit --distilled RUN_DIR --video in.mp4 --prompt "make it red" --out out.mp4 [...]

IP2P_DIR is a diffusers StableDiffusionInstructPix2PixPipeline folder (unet/, vae/, text_encoder/, tokenizer/,
scheduler/; e.g. timbrooks/instruct-pix2pix). Every frame is edited by InstructPix2Pix with 3-way classifier-free
guidance (image scale s_I, text scale s_T; both 1: one UNet pass per step), its self-attention reading the keys
and values of the video's middle frame (MoViE's cross-frame attention; --no_cross_frame: each frame on its own).
Frames go through the UNet --batch_frames at a time (the anchor included), split over the devices.
--distilled RUN_DIR: the student of a guidance_distill run (train/guidance_distill.py) with the autoencoder,
text encoder and schedule that run was trained with: ONE UNet pass per step at any --image-guidance /
--text-guidance (it reads the scales) instead of three.
--frames takes the first N frames; --height/--width resize every frame (multiples of 8). The output is mp4
(H.264) or gif at the input's frame rate; it appears only when complete. Everything is checked (paths, video,
sizes) before any model is loaded.
"""
from __future__ import annotations

import sys
import time

from mvd_jax import settings
from mvd_jax.errors import ArgumentParser, UserError, cli_main


def parser() -> ArgumentParser:
    """The command's options; each number's `type=` is its rule (mvd_jax/settings.py), checked while parsing."""
    p = ArgumentParser(prog="python -m mvd_jax.edit", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", help="InstructPix2Pix diffusers folder")
    p.add_argument("--distilled", help="a guidance_distill run directory: its 1-pass student and parts")
    p.add_argument("--video", required=True)
    p.add_argument("--prompt", required=True, help="the edit instruction, e.g. 'make it snowy'")
    p.add_argument("--out", required=True, help="output .mp4 or .gif")
    p.add_argument("--steps", type=settings.POSITIVE, default=10)
    p.add_argument("--image-guidance", "--image_guidance", dest="image_guidance", type=settings.Float(min=0),
                   default=1.5, help="s_I: how closely the edit keeps the input frame")
    p.add_argument("--text-guidance", "--text_guidance", dest="text_guidance", type=settings.Float(min=0),
                   default=7.5, help="s_T: how strongly the instruction is followed")
    p.add_argument("--frames", type=settings.POSITIVE, default=None, help="edit the first N frames (default: all)")
    p.add_argument("--height", type=settings.POSITIVE, default=None, help="resize frames to this height")
    p.add_argument("--width", type=settings.POSITIVE, default=None, help="resize frames to this width")
    p.add_argument("--seed", type=settings.SEED, default=0)
    p.add_argument("--batch_frames", type=settings.POSITIVE, default=8,
                   help="frames per UNet batch, the anchor frame included (×3 with guidance)")
    p.add_argument("--no_cross_frame", action="store_true", help="edit every frame on its own")
    return p


def read_input_video(path, frames: int | None, height: int | None, width: int | None):
    """(F, H, W, 3) uint8 frames and the frame rate; resized when height/width are given."""
    import numpy as np
    from PIL import Image

    from mvd_jax.data.video_decode import probe, read_frames

    info = probe(path, count_frames=True)
    n = info.num_frames if frames is None else min(frames, info.num_frames)
    if n < 1:
        raise UserError(f"{path}: no decodable frames")
    video = read_frames(path, range(n))
    if height is not None or width is not None:
        h, w = height or video.shape[1], width or video.shape[2]
        video = np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.BICUBIC)) for f in video])
    return video, info.fps


@cli_main
def main(argv=None):
    args = parser().parse_args(argv)
    from mvd_jax.compile_cache import enable_persistent_cache

    enable_persistent_cache()

    from tqdm import tqdm

    from mvd_jax.convert.diffusers_sd_vae import read_sd_vae_config
    from mvd_jax.diffusion.edit_pipeline import EditOptions, VideoEditor, check_edit_folder, check_options
    from mvd_jax.video_io import check_output_path, write_video

    # fail before any model work: output path, folder, video, sizes
    out = check_output_path(args.out)
    if (args.checkpoint is None) == (args.distilled is None):
        raise UserError("give exactly one of --checkpoint IP2P_DIR (an InstructPix2Pix pipeline folder) and "
                        "--distilled RUN_DIR (a guidance_distill run)")
    if args.distilled:
        from mvd_jax.train.guidance_distill import check_distilled_run

        vae_factor = settings.latent_geometry(check_distilled_run(args.distilled))[0]
    else:
        folder = check_edit_folder(args.checkpoint)
        vae_factor = read_sd_vae_config(folder / "vae").downsampling_factor
    options = EditOptions(steps=args.steps, image_guidance_scale=args.image_guidance,
                          text_guidance_scale=args.text_guidance, seed=args.seed, batch_frames=args.batch_frames,
                          cross_frame=not args.no_cross_frame)
    video, fps = read_input_video(args.video, args.frames, args.height, args.width)
    import jax

    check_options(options, video.shape[0], video.shape[1], video.shape[2], vae_factor, jax.device_count())

    t0 = time.perf_counter()
    editor = VideoEditor.from_distilled_run(args.distilled) if args.distilled else VideoEditor.from_folder(folder)
    load_s = time.perf_counter() - t0
    with tqdm(total=args.steps, desc="editing", unit="step") as bar:
        edited = editor(video, args.prompt, options, on_step=lambda i: bar.update(1))
    t1 = time.perf_counter()
    write_video(out, edited, max(1, round(fps)))
    times = {"loading": load_s, **editor.timings, "writing": time.perf_counter() - t1}
    print(f"wrote {out} ({edited.shape[0]} frames, {edited.shape[2]}×{edited.shape[1]}; {args.steps} steps, "
          f"s_I {args.image_guidance}, s_T {args.text_guidance}"
          f"{', distilled: 1 UNet pass per step' if editor.distilled else ''}, "
          f"{'cross-frame attention' if options.cross_frame else 'frames on their own'}, seed {args.seed})")
    print("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in times.items()))


if __name__ == "__main__":
    main(sys.argv[1:])
