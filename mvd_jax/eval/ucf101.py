"""FVD on UCF-101 by the protocol MobileVD follows (SF-V's): first frame in, 14 frames out, 320×240.

    python -m mvd_jax.eval.ucf101 --ucf_root UCF-101/ --checkpoint SVD_PIPELINE_DIR \\
        [--config configs/paper/X.py] --fps 7|25 --num_videos N --out DIR \\
        [--steps 25] [--frames 14] [--height 256 --width 512] [--seed 0] [--name ROW]

The protocol, with the choices the papers leave open (MobileVD §7 item 9) made and written down:

* Videos: `ucf_root` in UCF-101's layout (ROOT/ClassName/v_ClassName_gGG_cCC.avi, any video suffix).
  N are picked deterministically: classes sorted by name, each class's videos sorted by name, then
  taken round-robin over the classes (the 1st video of every class, then the 2nd, …) until N are
  usable. A video is unusable when it cannot be decoded or is too short for the real clip (7 fps needs
  47 frames at 25 fps); it is skipped, counted and named in the result. The order's prefix does not
  depend on N, so a run with more videos extends a run with fewer.
* Real clip: `frames` frames of the same video at the requested rate, starting at frame 0: frame
  i = round(i · native_fps / fps) (from native 25 fps: stride 25/7 ≈ 3.57 for 7 fps, consecutive
  frames for 25 fps; the time-based rule also serves the few 29.97 fps videos).
* Conditioning: the video's first frame (= the real clip's first frame), whole and uncropped. The
  pipeline resizes it to the generation size (PIL Lanczos, as diffusers) and CLIP sees the original.
  We resize rather than crop 4:3 → 2:1 because the generated video is resized back to 320×240 for
  FVD: resize both ways and the generated content has the real clips' geometry; a centre crop would
  come back vertically stretched and zoomed, a difference FVD would charge to the model.
* Generation: ImageToVideo (mvd_jax.diffusion.pipeline) with fps conditioning = `--fps`, motion bucket
  127, noise augmentation 0.02, `--steps` Euler steps and frame-wise guidance 1 → 3 (no guidance,
  one UNet evaluation per step, when `--steps 1`, the distilled model's setting). Video i of the
  selection uses seed SeedSequence([seed, i]) (independent streams; the same video gets the same
  noise in every run). Written to OUT/generated/<Class>/<video>.mp4 (H.264, CRF 17) at the
  generation size and `--fps`; each file appears only when complete, and existing files are not
  regenerated, so an interrupted run resumes where it stopped.
* FVD: real clips and the decoded generated videos are resized to 320×240 (PIL bilinear,
  anti-aliased), then fvd.py: TF1-bilinear to 224×224, [−1, 1], I3D logits, unbiased covariances,
  float64 Fréchet distance. The generated side is read back from the mp4s, so the result depends
  only on what is on disk (a resumed run gives the same number as an uninterrupted one).

`--config` builds the UNet from the checkpoint's weights with that config's MobileVD options
(collapsed cross-attention, multiscaling, pruning, funnels, low rank — UNetConfig's MOBILEVD_KEYS;
the architecture itself comes from the checkpoint's unet/config.json), and its frames/height/width
become the defaults. Options that change parameter shapes (pruning, funnels, low rank) need a
checkpoint trained with them; with one that lacks them the command refuses. `--name` labels the
result for `python -m mvd_jax.tables --results` (default: the config's file name).

OUT/settings.json holds the protocol settings of the run; rerunning into the same OUT with different
settings is refused (it would mix videos from two protocols). OUT/result.json: the FVD and every
setting, the video ids, skipped videos, I3D details and software versions.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from mvd_jax.errors import ArgumentParser, UserError, cli_main

FVD_SIZE = (320, 240)  # (width, height) the protocol resizes both sides to
# MobileVD options that add, remove or reshape parameters: a checkpoint must have been trained with them.
SHAPE_CHANGING = ("pruned_temporal_blocks", "funnel_factor", "funnel_target", "funnels_merged", "low_rank_factor")
PROTOCOL = "UCF-101 FVD, SF-V/MobileVD protocol (mvd_jax.eval.ucf101)"


# ---- which videos, which frames ---------------------------------------------------------------
def round_robin(root) -> list[Path]:
    """Every video under `root`, classes (first folder level) round-robin, names sorted."""
    from mvd_jax.data.video_decode import list_videos

    root = Path(root)
    by_class: dict[str, list[Path]] = {}
    for path in list_videos(root):
        rel = path.relative_to(root)
        by_class.setdefault(rel.parts[0] if len(rel.parts) > 1 else "", []).append(path)
    lists = [sorted(by_class[c]) for c in sorted(by_class)]
    longest = max((len(v) for v in lists), default=0)
    return [v[k] for k in range(longest) for v in lists if k < len(v)]


def clip_indices(native_fps: float, fps: int, frames: int) -> list[int]:
    """Frame i of the real clip is the native frame nearest to time i / fps (halves round up)."""
    return [int(math.floor(i * native_fps / fps + 0.5)) for i in range(frames)]


def video_id(root, path) -> str:
    """'ClassName/v_ClassName_g01_c01': the path below the root, without the suffix."""
    return Path(path).relative_to(root).with_suffix("").as_posix()


def video_seed(seed: int, index: int) -> int:
    """The sampling seed of the index-th selected video: an independent 32-bit stream per (seed, index)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def read_real_clip(path, fps: int, frames: int) -> np.ndarray:
    """uint8 (frames, H, W, 3) of the video at `fps` from frame 0 (VideoReadError if unusable)."""
    from mvd_jax.data.video_decode import probe, read_frames

    info = probe(path)
    return read_frames(path, clip_indices(info.fps, fps, frames))


def select_videos(root, n: int, fps: int, frames: int) -> tuple[list[dict], list[dict]]:
    """The first `n` usable videos in round-robin order: ([{id, path, native_fps}], skipped)."""
    import contextlib

    from tqdm import tqdm

    from mvd_jax.data.video_decode import VideoReadError, probe, read_frames
    from mvd_jax.eval.fvd import prefetch

    order = round_robin(root)
    if len(order) < n:
        raise UserError(f"asked for {n} videos but {root} holds only {len(order)}")

    def check(path):
        info = probe(path)
        read_frames(path, clip_indices(info.fps, fps, frames))  # decodes what the FVD will use: catches broken files
        return info.fps

    chosen, skipped = [], []
    with tqdm(total=n, desc="selecting", unit="video") as bar, contextlib.closing(prefetch(check, order)) as results:
        for path, result in results:
            if isinstance(result, VideoReadError):
                skipped.append({"id": video_id(root, path), "reason": result.reason})
                continue
            if isinstance(result, Exception):
                raise result
            chosen.append({"id": video_id(root, path), "path": str(path), "native_fps": result})
            bar.update(1)
            if len(chosen) == n:
                break
    if len(chosen) < n:
        first = f"; first skipped: {skipped[0]['id']}: {skipped[0]['reason']}" if skipped else ""
        raise UserError(f"{root}: only {len(chosen)} usable videos of {len(order)} for {frames} frames at "
                        f"{fps} fps, {n} asked{first}")
    return chosen, skipped


# ---- the model ------------------------------------------------------------------------------------
# The last pipeline built, by (checkpoint, MobileVD options): a process that calls main() again (a
# notebook running the 7 and the 25 fps variants) reuses the loaded and compiled models.
# The key includes every file's size and time, so a checkpoint changed on disk is loaded again.
_LAST_PIPELINE: dict = {}


def cached_pipeline(folder: Path, config, config_name: str | None):
    files = sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.resolve().rglob("*") if p.is_file())
    key = (json.dumps(files), json.dumps(mobilevd_options(config) if config else None, default=str))
    if key not in _LAST_PIPELINE:
        _LAST_PIPELINE.clear()
        _LAST_PIPELINE[key] = build_pipeline(folder, config, config_name)
    return _LAST_PIPELINE[key]


def build_pipeline(folder: Path, config, config_name: str | None):
    """ImageToVideo from an SVD pipeline folder; with a config, the UNet gets its MobileVD options."""
    from mvd_jax.diffusion.pipeline import ImageToVideo

    if config is None:
        return ImageToVideo.from_folder(folder)

    from mvd_jax.convert import CheckpointMismatchError
    from mvd_jax.convert.diffusers_unet import read_unet_checkpoint, unet_from_tensors
    from mvd_jax.convert.diffusers_vae import load_vae
    from mvd_jax.convert.transformers_clip import load_image_encoder
    from mvd_jax.models.unet_config import UNetConfig

    tensors, cfg, _ = read_unet_checkpoint(folder / "unet")
    wanted = mobilevd_options(config)
    try:
        cfg = dataclasses.replace(cfg, **wanted)
        unet = unet_from_tensors(tensors, cfg, source=str(folder / "unet"))
    except CheckpointMismatchError as e:
        shaped = sorted(k for k in SHAPE_CHANGING if wanted[k] != getattr(UNetConfig, k))
        raise UserError(f"config {config_name}: its options {shaped or sorted(wanted)} change the UNet's "
                        f"parameters and {folder / 'unet'} was not trained with them (train this row first, or "
                        f"pass its trained checkpoint); {str(e).splitlines()[0]}") from None
    except UserError as e:
        raise UserError(f"config {config_name} does not fit {folder / 'unet'}: {e}") from None
    return ImageToVideo(unet, load_vae(folder / "vae"), load_image_encoder(folder / "image_encoder"))


def mobilevd_options(config) -> dict:
    """The MobileVD fields of a config's model section (UNetConfig.MOBILEVD_KEYS)."""
    from mvd_jax.settings import unet_config
    from mvd_jax.models.unet_config import MOBILEVD_KEYS

    model = unet_config(config)
    return {k: getattr(model, k) for k in MOBILEVD_KEYS}


# ---- the run --------------------------------------------------------------------------------------
def check_resume(out: Path, settings: dict) -> bool:
    """True if OUT holds a run with these settings; UserError if it holds one with others."""
    path = out / "settings.json"
    if not path.is_file():
        if any((out / "generated").rglob("*.mp4")):
            raise UserError(f"{out / 'generated'} holds videos but {out} has no settings.json, so how they were "
                            f"made is unknown; use an empty --out")
        return False
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise UserError(f"{path} is not valid JSON; remove it or choose another --out") from None
    diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
    if diff:
        raise UserError(f"{out} holds a run with other settings ({', '.join(f'{k}: {old.get(k)!r} → {settings.get(k)!r}' for k in diff[:3])}"
                        f"{' …' if len(diff) > 3 else ''}); use another --out")
    return True


def _settings_jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=lambda x: list(x) if isinstance(x, tuple) else str(x)))


def parser() -> ArgumentParser:
    """The command's options; each number's `type=` is its rule (mvd_jax/settings.py), checked while parsing."""
    from mvd_jax import settings
    from mvd_jax.eval.i3d import MIN_FRAMES

    p = ArgumentParser(prog="python -m mvd_jax.eval.ucf101", description=__doc__.split("\n")[0])
    p.add_argument("--ucf_root", required=True, help="UCF-101 folder: ROOT/ClassName/v_*.avi")
    p.add_argument("--checkpoint", required=True, help="SVD diffusers pipeline folder (unet/, vae/, image_encoder/)")
    p.add_argument("--config", default=None, help="paper config (file.py[:arg]) whose MobileVD options the UNet gets")
    p.add_argument("--name", default=None, help="row label for the tables (default: the config's file name)")
    p.add_argument("--fps", type=int, required=True, choices=(7, 25), help="frame rate of real clips and fps conditioning")
    p.add_argument("--num_videos", type=settings.Int(2), required=True, help="≥ 2: a covariance needs two videos")
    p.add_argument("--out", required=True, help="run folder: generated/, settings.json, result.json")
    p.add_argument("--steps", type=settings.POSITIVE, default=25)
    p.add_argument("--frames", type=settings.Int(MIN_FRAMES), default=None,
                   help=f"default: the config's frames, else 14 (≥ {MIN_FRAMES}, I3D's temporal receptive field)")
    p.add_argument("--height", type=settings.POSITIVE, default=None, help="default: the config's height, else 256")
    p.add_argument("--width", type=settings.POSITIVE, default=None, help="default: the config's width, else 512")
    p.add_argument("--seed", type=settings.SEED, default=0)
    p.add_argument("--min_guidance_scale", type=settings.Float(min=0), default=1.0)
    p.add_argument("--max_guidance_scale", type=settings.Float(min=0), default=None,
                   help="default 3.0, or 1.0 with --steps 1")
    p.add_argument("--motion_bucket_id", type=settings.Int(0), default=127)
    p.add_argument("--noise_aug_strength", type=settings.Float(min=0), default=0.02)
    p.add_argument("--decode_chunk_size", type=settings.POSITIVE, default=None)
    p.add_argument("--batch_size", type=settings.POSITIVE, default=8, help="videos per I3D batch")
    return p


@cli_main
def main(argv=None):
    from mvd_jax.eval.i3d import MIN_FRAMES

    args = parser().parse_args(argv)
    from mvd_jax.compile_cache import enable_persistent_cache

    enable_persistent_cache()  # a repeated run loads its compiled programs instead of recompiling

    from mvd_jax.convert.diffusers_vae import read_vae_config
    from mvd_jax.diffusion.pipeline import SampleOptions, check_options, check_pipeline_folder
    from mvd_jax.settings import load_config

    # ---- everything checked before any model or video work -------------------------------------
    root = Path(args.ucf_root)
    if not root.is_dir():
        raise UserError(f"--ucf_root folder not found: {root}")
    folder = check_pipeline_folder(args.checkpoint)
    config = load_config(args.config) if args.config else None
    config_name = Path(args.config.partition(":")[0]).stem if args.config else None
    pick = lambda given, key, default: given if given is not None else (config[key] if config else default)
    frames, height, width = pick(args.frames, "frames", 14), pick(args.height, "height", 256), pick(args.width, "width", 512)
    if frames < MIN_FRAMES:
        raise UserError(f"--frames must be ≥ {MIN_FRAMES} (I3D's temporal receptive field), got {frames}")
    max_scale = args.max_guidance_scale if args.max_guidance_scale is not None else (3.0 if args.steps > 1 else 1.0)
    options = SampleOptions(num_frames=frames, height=height, width=width, steps=args.steps,
                            min_guidance_scale=args.min_guidance_scale, max_guidance_scale=max_scale, fps=args.fps,
                            motion_bucket_id=args.motion_bucket_id, noise_aug_strength=args.noise_aug_strength,
                            decode_chunk_size=args.decode_chunk_size, seed=args.seed)
    check_options(options, read_vae_config(folder / "vae").downsampling_factor)
    name = args.name or config_name or folder.resolve().name
    settings = _settings_jsonable({
        "protocol": PROTOCOL, "ucf_root": str(root.resolve()), "checkpoint": str(folder.resolve()),
        "config": config_name, "config_path": args.config, "name": name,
        "mobilevd_options": mobilevd_options(config) if config else None,
        "fps": args.fps, "num_videos": args.num_videos, "frames": frames, "height": height, "width": width,
        "steps": args.steps, "min_guidance_scale": args.min_guidance_scale, "max_guidance_scale": max_scale,
        "nfe": args.steps * (2 if max_scale > 1 else 1), "motion_bucket_id": args.motion_bucket_id,
        "noise_aug_strength": args.noise_aug_strength, "seed": args.seed,
        "seed_rule": "video i of the selection: numpy SeedSequence([seed, i]).generate_state(1)[0]",
        "decode_chunk_size": args.decode_chunk_size,
    })
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create --out {out}: {e.strerror}") from None
    resumed = check_resume(out, settings)

    from tqdm import tqdm

    from mvd_jax.eval import fvd
    from mvd_jax.video_io import write_video

    t_start = time.perf_counter()
    selection_path = out / "selection.json"
    if resumed and selection_path.is_file():
        selection = json.loads(selection_path.read_text())
        chosen, skipped = selection["videos"], selection["skipped"]
    else:
        chosen, skipped = select_videos(root, args.num_videos, args.fps, frames)
        fvd.write_json_atomic(out / "settings.json", settings)
        fvd.write_json_atomic(selection_path, {"videos": chosen, "skipped": skipped})

    # ---- generation (resumable: a finished video is a file; files appear only when complete) ----
    gen_dir = out / "generated"
    gen_path = lambda v: gen_dir / (v["id"] + ".mp4")
    todo = [i for i, v in enumerate(chosen) if not gen_path(v).is_file()]
    t_gen = time.perf_counter()
    if todo:
        from PIL import Image

        from mvd_jax.data.video_decode import read_frames

        pipe = cached_pipeline(folder, config, config_name)
        with tqdm(total=len(chosen), initial=len(chosen) - len(todo), desc="generating", unit="video") as bar:
            for i in todo:
                v = chosen[i]
                first = read_frames(v["path"], [0])[0]
                video = pipe(Image.fromarray(first), dataclasses.replace(options, seed=video_seed(args.seed, i)))
                gen_path(v).parent.mkdir(parents=True, exist_ok=True)
                write_video(gen_path(v), video, args.fps)
                bar.update(1)
    t_fvd = time.perf_counter()

    # ---- FVD -------------------------------------------------------------------------------------
    from mvd_jax.data.video_decode import read_frames

    extractor = fvd.FeatureExtractor(args.batch_size)
    real_clips = (fvd.resize_frames(read_real_clip(v["path"], args.fps, frames), *FVD_SIZE)
                  for v in tqdm(chosen, desc="I3D real", unit="video"))
    real = extractor.stats(real_clips)
    gen_clips = (fvd.resize_frames(read_frames(gen_path(v), range(frames)), *FVD_SIZE)
                 for v in tqdm(chosen, desc="I3D generated", unit="video"))
    gen = extractor.stats(gen_clips)
    value = fvd.fvd_from_stats(real, gen)
    t_end = time.perf_counter()

    result = {
        "kind": "mvd_jax.eval.ucf101",
        "fvd": value,
        **settings,
        "protocol_details": {
            "selection": "classes sorted, videos sorted within a class, round-robin over classes; first N usable",
            "real_clip": "frame i = round(i * native_fps / fps), i < frames, from frame 0",
            "conditioning": "first frame of the video, uncropped; resized to the generation size by the "
                            "pipeline (PIL Lanczos), original to CLIP",
            "generated_files": "OUT/generated/<id>.mp4, H.264 CRF 17 yuv420p, read back for FVD",
            "fvd_resize": f"{FVD_SIZE[0]}x{FVD_SIZE[1]} (PIL bilinear, anti-aliased), both sides",
            **fvd.protocol_details(),
        },
        "i3d_batch_size": extractor.batch_size,
        "videos_used": len(chosen),
        "video_ids": [v["id"] for v in chosen],
        "videos_skipped": skipped,
        "generated_this_run": len(todo),
        "resumed": resumed,
        "seconds": {"selection": t_gen - t_start, "generation": t_fvd - t_gen, "fvd": t_end - t_fvd},
        "versions": fvd.software_versions(),
    }
    fvd.write_json_atomic(out / "result.json", result)
    print(f"FVD {value:.2f} on {len(chosen)} UCF-101 videos ({frames} frames at {args.fps} fps, {width}×{height}, "
          f"{args.steps} steps; {len(todo)} generated this run, {len(chosen) - len(todo)} reused)")
    print(f"wrote {out / 'result.json'}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
