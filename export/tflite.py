"""Export a trained MobileVD to TFLite (builtins only, fp32 / fp16), verified against JAX with LiteRT, and
optionally run and profiled on a phone through Qualcomm AI Hub.

    python -m export.tflite --run RUN_DIR --out DIR [--precision fp32,fp16]
        [--components unet,vae_decoder,vae_encoder,clip,vae_decoder_tiny] [--decoder tiny:RUN_OR_FOLDER]
        [--frames T --height H --width W]
        [--decode-chunk N] [--unet-parts N] [--no-real-inputs] [--ai-hub-device "Samsung Galaxy S24"]
    python -m export.tflite --unet RUN_DIR|UNET_DIR [--checkpoint SVD_DIR] --out DIR --frames 14 --height 512 --width 256

Sources. `--run`: a trainer run directory — its latest checkpoint's EMA UNet, and the VAE + CLIP its config
names (SVD's from autoencoder.checkpoint, or the demo's pixel autoencoder and fixed random CLIP); sizes
default to the run's frames/height/width. `--unet`: a run directory or a diffusers unet folder, for the
UNet only; `--checkpoint`: an SVD pipeline folder for the VAE and CLIP (and the UNet when no --unet).
`--decoder tiny:X`: the tiny autoencoder (a decoder_distill run directory or an AutoencoderTiny folder) for the
component vae_decoder_tiny, the phone's cheaper replacement of vae_decoder; a decoder run alone also supplies
the sizes and the real clip (its teacher encodes it).

The UNet is exported in inference form: funnels merged into the weights, temporal blocks pruned by the
config (never built) or by the run's learned gates (removed), the single EDM step folded in
(mvd_jax/export/functions.py). Every `.tflite` is written only after LiteRT reproduced JAX within the
precision's tolerance and its op census held builtins only (mvd_jax/export/verify.py); the table and
OUT/report.json record the numbers.

Memory: each component's JAX outputs for verification are computed first, its graph saved, its weights
released, and a large graph converted in a child process; a UNet above unet_chain.MAX_GRAPH_PARAMS
parameters (MobileVD's 1.01 B, SVD's 1.52 B) goes to the phone as a chain of graphs, `unet_step_partKofN_<p>`,
verified end to end (mvd_jax/export/unet_chain.py; `--unet-parts N` chooses N, 1 forces one graph).

Verification inputs: random ones (each function's sampler, `--seed`) and, when the source is a run
directory (`--run`, or `--unet RUN_DIR`), real ones too: ONE clip of the run's data (its config's
data.videos, or the videos its latent cache was made from), centre crop at the export's size, the first
clip of a `--seed` shuffle, encoded with the exported (else the run's) VAE and CLIP as training encodes it
(functions.clip_real_inputs). If the data cannot be read, one line on stderr says the real-input check was
skipped and why, and the export goes on with random inputs only; `--no-real-inputs` skips it deliberately.

Exit status: 0 all verified; 1 an export failed (no model written for it); 2 bad arguments; 3 the local
export stands but AI Hub could not be used or its job failed.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

from mvd_jax import settings
from mvd_jax.errors import ArgumentParser, UserError, cli_main

COMPONENT_NAMES = {"unet": "unet_step", "vae_decoder": "vae_decoder", "vae_encoder": "vae_encoder",
                   "clip": "clip_image_encoder", "vae_decoder_tiny": "vae_decoder_tiny"}


def _csv(value: str, allowed, what: str) -> list[str]:  # bench/litert_vs_jax.py parses its options with it
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise UserError(f"--{what} takes a comma-separated subset of {', '.join(allowed)}; got {value!r}")
    return list(dict.fromkeys(items))


@dataclasses.dataclass
class Sources:
    unet: object = None
    vae: object = None
    clip: object = None
    tiny: object = None  # the tiny autoencoder (vae_decoder_tiny)
    run_config: object = None  # the run's resolved config, when the UNet comes from a run directory
    gate_keep: int | None = None


def load_sources(args, components) -> Sources:
    """The models the requested components need, each from the source the arguments name."""
    from mvd_jax.train.stages import is_run_dir, read_run_unet

    s = Sources()
    tiny_run = None
    if args.decoder:
        from mvd_jax.train.decoder_distill import tiny_decoder_location

        where, is_run = tiny_decoder_location(args.decoder)
        tiny_run = where if is_run else None
    run = args.run or (args.unet if args.unet and is_run_dir(args.unet) else None) or tiny_run
    if args.run and not is_run_dir(args.run):
        raise UserError(f"--run {args.run} is not a trainer run directory (no checkpoints/config.json)")
    checkpoint = None
    if args.checkpoint:
        from mvd_jax.diffusion.pipeline import check_pipeline_folder

        checkpoint = check_pipeline_folder(args.checkpoint)
    if run:
        from mvd_jax.train.stages import read_run_config

        s.run_config = read_run_config(run)
        s.gate_keep = int(s.run_config.train.get("gate_keep", 0)) or None
    needs_ae = any(c in components for c in ("vae_decoder", "vae_encoder", "clip"))
    if needs_ae:
        if checkpoint is not None:
            from mvd_jax.convert.diffusers_vae import load_vae
            from mvd_jax.convert.transformers_clip import load_image_encoder

            s.vae, s.clip = load_vae(checkpoint / "vae"), load_image_encoder(checkpoint / "image_encoder")
        elif args.run:
            from mvd_jax.train.trainer import build_autoencoder

            s.vae, s.clip = build_autoencoder(s.run_config)
        else:
            raise UserError("exporting the VAE or CLIP needs --run RUN_DIR or --checkpoint SVD_DIR "
                            "(or --components unet)")
    if "unet" in components:
        if run:
            s.unet = read_run_unet(run, use_ema=True)[0]
        elif args.unet:
            from mvd_jax.convert import load_unet

            if not Path(args.unet).exists():
                raise UserError(f"--unet {args.unet} is neither a trainer run directory nor a diffusers unet folder")
            s.unet = load_unet(args.unet)
        elif checkpoint is not None:
            from mvd_jax.convert import load_unet

            s.unet = load_unet(checkpoint / "unet")
        else:
            raise UserError("exporting the UNet needs --run, --unet or --checkpoint")
    if "vae_decoder_tiny" in components:
        if not args.decoder:
            raise UserError("exporting vae_decoder_tiny needs --decoder tiny:RUN_DIR_OR_FOLDER")
        from mvd_jax.train.decoder_distill import load_tiny_decoder

        s.tiny = load_tiny_decoder(args.decoder)
        teacher = s.vae
        if teacher is None and s.run_config is not None:
            from mvd_jax.train.trainer import build_autoencoder

            teacher = build_autoencoder(s.run_config)[0]
        if teacher is not None:
            from mvd_jax.train.decoder_distill import check_matches_teacher

            check_matches_teacher(s.tiny.config, teacher.config, f"--decoder {args.decoder}")
    return s


def geometry(args, s: Sources) -> dict:
    """Frames and pixel/latent sizes: the arguments, else the run's config."""
    cfg = s.run_config
    frames = args.frames or (cfg.frames if cfg is not None else None)
    height = args.height or (cfg.height if cfg is not None else None)
    width = args.width or (cfg.width if cfg is not None else None)
    if not (frames and height and width):
        raise UserError("give --frames, --height and --width (only a --run directory supplies them)")
    if s.vae is not None or s.tiny is not None:
        factor = (s.vae or s.tiny).config.downsampling_factor
    elif cfg is not None:  # the run's VAE, from its config file (latent_geometry)
        from mvd_jax.settings import latent_geometry

        factor = latent_geometry(cfg)[0]
    else:
        factor = 8  # SVD's VAE
    if height % factor or width % factor:
        raise UserError(f"--height/--width {height}×{width} must be multiples of the VAE's factor {factor}")
    chunk = args.decode_chunk or frames
    if not 1 <= chunk <= frames:
        raise UserError(f"--decode-chunk must be in 1..{frames}, got {chunk}")
    return dict(frames=frames, height=height, width=width, latent_height=height // factor,
                latent_width=width // factor, decode_chunk=chunk)


def run_data_entries(cfg):
    """The video entries of a run's data: data.videos, or for a run trained on a latent cache the videos the
    cache was made from (its cache_config.json)."""
    from mvd_jax.data.manifest import VideoEntry, read_entries

    cache = cfg.data.get("cache", "")
    if cache:
        from mvd_jax.data.cache import CONFIG_FILE

        path = Path(cache) / CONFIG_FILE
        if not path.is_file():
            raise UserError(f"the run's latent cache {cache} has no {CONFIG_FILE}")
        return [VideoEntry(v) for v in json.loads(path.read_text())["videos"]]
    return read_entries(cfg.data.videos)


def read_real_clip(cfg, g: dict, seed: int) -> dict:
    """ONE clip of the run's data at the export's size (a VideoClipLoader batch of 1): centre crop, the first
    usable video of a `seed` shuffle, at the run's clip frame rate."""
    from mvd_jax.data.clips import ClipSpec
    from mvd_jax.data.loader import LoaderOptions, VideoClipLoader

    d = cfg.data
    spec = ClipSpec(num_frames=g["frames"], height=g["height"], width=g["width"], fps=d.get("fps") or None,
                    crop="center", default_motion_bucket_id=int(d.get("motion_bucket_id", 127)))
    loader = VideoClipLoader(run_data_entries(cfg), spec, LoaderOptions(
        batch_size=1, seed=seed, num_epochs=1, num_workers=0, read_ahead=0, process_index=0, process_count=1))
    try:
        return next(iter(loader))
    except StopIteration:
        raise UserError(f"no video of the run's data gives a {g['frames']}-frame clip "
                        f"({loader.skips.summary()})") from None


def real_inputs(s: Sources, g: dict, seed: int):
    """({function name: real inputs}, what report.json records about them) for a run-directory source;
    (None, {"skipped": why}) with one line on stderr when the run's data cannot be read or encoded."""
    from mvd_jax.export.functions import clip_real_inputs

    try:
        clip = read_real_clip(s.run_config, g, seed)
        if s.vae is not None and s.clip is not None:
            vae, image_encoder = s.vae, s.clip
        else:  # the UNet alone is exported: the run's own encoders make its conditioning
            from mvd_jax.train.trainer import build_autoencoder

            vae, image_encoder = build_autoencoder(s.run_config)
        inputs = clip_real_inputs(vae, image_encoder, clip, frames=g["frames"], decode_chunk=g["decode_chunk"],
                                  seed=seed)
    except (ValueError, OSError) as e:  # UserError is a ValueError
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        print(f"real-input check skipped: {reason} — verifying on random inputs only", file=sys.stderr)
        return None, dict(skipped=reason)
    source = dict(path=str(clip["path"][0]), start_frame=int(clip["start"][0]), frames=g["frames"],
                  crop="center", fps=float(clip["fps"][0]), motion_bucket_id=int(clip["motion_bucket_id"][0]),
                  seed=seed)
    return inputs, source


def build_functions(components, s: Sources, g: dict, sigma_max: float, unet_parts: int = 0):
    """The components' ExportFunctions, one at a time; the UNet as a unet_chain.UNetChain when it is cut into
    parts (`unet_parts`; 0: as many as unet_chain.MAX_GRAPH_PARAMS asks for)."""
    from mvd_jax.export import functions as F

    if s.unet is not None and s.vae is not None and s.unet.config.out_channels != s.vae.config.latent_channels:
        raise UserError(f"the UNet makes {s.unet.config.out_channels}-channel latents, the VAE takes "
                        f"{s.vae.config.latent_channels}")
    # Built one at a time. Every module is dropped here once its last function exists (this generator's frame
    # must not keep weights alive while the caller converts: it releases a function's weights before the
    # converter runs, and the SVD VAE and CLIP ViT-H are 0.4 + 2.5 GB).
    last_vae = max((i for i, c in enumerate(components) if c in ("vae_decoder", "vae_encoder")), default=-1)
    for i, c in enumerate(components):
        if c == "unet":
            from mvd_jax.export import unet_chain

            unet = F.prepare_unet(s.unet, gate_keep=s.gate_keep)
            s.unet = None
            counts = unet_chain.step_params(unet)
            parts = unet_parts or unet_chain.parts_for(counts, unet_chain.MAX_GRAPH_PARAMS)
            size = dict(frames=g["frames"], latent_height=g["latent_height"], latent_width=g["latent_width"],
                        sigma_max=sigma_max)
            if parts == 1:
                f = F.unet_step(unet, **size)
            else:
                print(f"the UNet ({sum(counts.values()) / 1e6:.1f} M parameters) goes to the phone as a chain of "
                      f"{parts} graphs (export/README.md: memory to convert)", flush=True)
                f = unet_chain.unet_step_chain(unet, parts=parts, **size)
            del unet
        elif c == "vae_decoder":
            f = F.vae_decoder(s.vae, frames=g["decode_chunk"], latent_height=g["latent_height"],
                              latent_width=g["latent_width"])
        elif c == "vae_decoder_tiny":
            f = F.vae_decoder(s.tiny, frames=g["decode_chunk"], latent_height=g["latent_height"],
                              latent_width=g["latent_width"], name="vae_decoder_tiny")
            s.tiny = None
        elif c == "vae_encoder":
            f = F.vae_encoder(s.vae, height=g["height"], width=g["width"])
        elif c == "clip":
            f = F.clip_image_encoder(s.clip, height=g["height"], width=g["width"])
            s.clip = None
        else:
            raise AssertionError(c)
        if i == last_vae:
            s.vae = None
        yield f
        del f


def format_table(reports) -> str:
    from mvd_jax.export.verify import format_census

    rows = [("component", "precision", "params", "rel L2 random", "rel L2 real", "tolerance", "size", "convert",
             "op census", "result")]
    for r in reports:
        rows.append((r.component, r.precision, f"{r.num_params / 1e6:.2f} M",
                     f"{r.worst_random:.2e}" if r.rel_l2 else "—", f"{r.worst_real:.2e}" if r.rel_l2_real else "—",
                     f"{r.tolerance:.0e}" if r.tolerance else "—",
                     f"{r.size_bytes / 2**20:.2f} MiB" if r.size_bytes else "—",
                     f"{r.convert_s:.1f} s" if r.convert_s else "—",
                     format_census(r.census) if r.census else "—",
                     "ok" if r.ok else "FAILED: " + r.error.splitlines()[0]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1] for row in rows)


def parser() -> ArgumentParser:
    """The command's options; each number's and name list's `type=` is its rule (mvd_jax/settings.py), checked
    while parsing."""
    from mvd_jax.export.functions import COMPONENTS
    from mvd_jax.export.tflite import PRECISIONS

    p = ArgumentParser(prog="python -m export.tflite", description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--run", help="trainer run directory: UNet (EMA), VAE and CLIP as its config names them")
    src.add_argument("--unet", help="a trainer run directory or a diffusers unet folder (the UNet only)")
    p.add_argument("--checkpoint", help="SVD pipeline folder (unet/, vae/, image_encoder/) for the VAE and CLIP")
    p.add_argument("--out", required=True, help="output folder for the .tflite files and report.json")
    p.add_argument("--precision", type=settings.Subset(PRECISIONS), default="fp32,fp16",
                   help="comma-separated: fp32, fp16, int8 (default fp32,fp16)")
    p.add_argument("--components", type=settings.Subset(COMPONENTS), default=None,
                   help="comma-separated: unet, vae_decoder, vae_encoder, clip, vae_decoder_tiny (default: all the "
                        "sources allow)")
    p.add_argument("--decoder", default=None, help="tiny:RUN_DIR_OR_FOLDER — the tiny autoencoder for vae_decoder_tiny")
    p.add_argument("--frames", type=settings.POSITIVE, default=None)
    p.add_argument("--height", type=settings.POSITIVE, default=None, help="video height in pixels")
    p.add_argument("--width", type=settings.POSITIVE, default=None, help="video width in pixels")
    p.add_argument("--decode-chunk", type=settings.POSITIVE, default=None, help="frames per VAE decoder call (default: all)")
    p.add_argument("--unet-parts", type=settings.Int(1, also=(0,)), default=0,
                   help="export the UNet as a chain of this many graphs (default 0: one graph up to "
                        "unet_chain.MAX_GRAPH_PARAMS parameters, else as few parts as keep each under it)")
    p.add_argument("--sigma-max", type=settings.Float(min=0, min_open=True), default=None,
                   help="σ of the single step (default 700, SVD's)")
    p.add_argument("--seed", type=settings.SEED, default=0,
                   help="seed of the verification inputs (random and the real clip's)")
    p.add_argument("--no-real-inputs", action="store_true",
                   help="verify on random inputs only (default for a run directory: also on one clip of its data)")
    p.add_argument("--ai-hub-device", default=None, help='run and profile on this AI Hub device, e.g. "Samsung Galaxy S24"')
    return p


@cli_main
def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from mvd_jax.compile_cache import enable_persistent_cache

    enable_persistent_cache()  # a repeated run loads its compiled programs instead of recompiling

    from mvd_jax.export import ExportError
    from mvd_jax.export.tflite import (write_representative, export_chain, export_component, release_memory,
                                      save_graph)

    precisions = args.precision
    if args.components:
        components = args.components
    elif not (args.run or args.unet or args.checkpoint) and args.decoder:
        components = ["vae_decoder_tiny"]
    else:
        components = ["unet"] + (["vae_decoder", "vae_encoder", "clip"] if (args.run or args.checkpoint) else [])
        components += ["vae_decoder_tiny"] if args.decoder else []
    if not (args.run or args.unet or args.checkpoint or args.decoder):
        raise UserError("name the model: --run RUN_DIR, --unet UNET_DIR, --checkpoint SVD_DIR or --decoder tiny:X")
    out = Path(args.out)

    from mvd_jax.diffusion.edm import SIGMA_MAX

    t0 = time.perf_counter()
    sources = load_sources(args, components)
    g = geometry(args, sources)
    print(f"loaded in {time.perf_counter() - t0:.1f} s; exporting {', '.join(components)} at "
          f"{g['frames']}×{g['height']}×{g['width']} (latents {g['latent_height']}×{g['latent_width']}) "
          f"as {', '.join(precisions)} to {out}", flush=True)
    real, real_source = None, None
    if sources.run_config is not None and not args.no_real_inputs:
        t1 = time.perf_counter()
        real, real_source = real_inputs(sources, g, args.seed)
        if real is not None:
            print(f"real inputs from {Path(real_source['path']).name} (frames from {real_source['start_frame']}, "
                  f"centre crop) in {time.perf_counter() - t1:.1f} s", flush=True)
    def progress(line):
        print("    " + line, flush=True)

    reports, functions, specs = [], {}, {}
    for item in build_functions(components, sources, g, args.sigma_max or SIGMA_MAX, args.unet_parts):
        chain = item if hasattr(item, "parts") else None
        f = chain.full if chain else item
        if real is not None:
            try:
                f.set_real_inputs(real[f.name])
            except UserError as e:
                print(f"real-input check skipped for {f.name}: {str(e).splitlines()[0]}", file=sys.stderr)
        # beside the models, not in /tmp (often a RAM disk): a 1 B-parameter UNet's graphs are 4 GB of weights
        out.mkdir(parents=True, exist_ok=True)
        graphs = tempfile.TemporaryDirectory(prefix=f".graphs_{f.name}_", dir=out)
        t1 = time.perf_counter()
        # JAX's outputs first, then the graph(s) on disk; then this process lets go of the weights, before the
        # converter (the larger user of memory) runs
        f.keep_references(args.seed)
        progress(f"{f.name}: JAX outputs for verification in {time.perf_counter() - t1:.1f} s")
        links = chain.parts if chain else [f]
        folders = [save_graph(link, Path(graphs.name) / link.name) for link in links]
        progress(f"{f.name}: graph{'s' if chain else ''} saved ({time.perf_counter() - t1:.1f} s)")
        if chain and "int8" in precisions:  # calibration inputs of each link come from the JAX chain
            for link, folder in zip(links, folders):
                write_representative(link, folder)
        for link in {id(x): x for x in [f, *links]}.values():
            link.release_params()
        del item
        release_memory()
        trace_s = time.perf_counter() - t1
        for precision in precisions:
            try:
                if chain:
                    report = export_chain(chain, precision, out, graphs=folders, seed=args.seed, progress=progress)
                else:
                    report = export_component(f, precision, out, graph=folders[0], seed=args.seed)
            except ExportError as e:
                report = e.report
            report.convert_s += trace_s / len(precisions)
            reports.append(report)
            status = "FAILED"
            if report.ok:
                status = f"rel L2 {report.worst_random:.2e}" + (
                    f" (real {report.worst_real:.2e})" if report.rel_l2_real else "")
            print(f"  {f.name} {precision}: {status} ({report.convert_s:.1f} s convert, {report.verify_s:.1f} s verify)",
                  flush=True)
        graphs.cleanup()
        functions[f.name] = f
        specs[f.name] = dict(inputs=[dict(name=i.name, shape=list(i.shape), dtype=i.dtype, doc=i.doc)
                                     for i in f.inputs], outputs=list(f.outputs))
        if chain:
            specs[f.name]["chain"] = [dict(name=link.name, blocks=list(run), params=link.num_params,
                                           inputs=[dict(name=i.name, shape=list(i.shape), doc=i.doc) for i in link.inputs],
                                           outputs=list(link.outputs))
                                      for link, run in zip(links, chain.steps)]
        del chain, links

    print()
    print(format_table(reports))
    record = dict(geometry=g, real_inputs=real_source, components=specs, models=[dataclasses.asdict(r) for r in reports])
    out.mkdir(parents=True, exist_ok=True)
    failed = [r for r in reports if not r.ok]
    status = 1 if failed else 0

    if args.ai_hub_device and not failed:
        from mvd_jax.export.ai_hub import HubUnavailable, run_chain_on_device

        device_results = []
        for r in reports:
            paths = [part["path"] for part in r.parts] if r.parts else [r.path]
            try:
                result = run_chain_on_device(paths, functions[r.component], r.precision, args.ai_hub_device,
                                             seed=args.seed)
            except HubUnavailable as e:
                print(f"{str(e).splitlines()[0]} — the local export in {out} stands", file=sys.stderr)
                status = 3
                break
            except ExportError as e:
                print(f"AI Hub: {str(e).splitlines()[0]}", file=sys.stderr)
                status = 3
                continue
            device_results.append(dataclasses.asdict(result))
            print(result.line())
        record["ai_hub"] = device_results
    (out / "report.json").write_text(json.dumps(record, indent=2) + "\n")
    if failed:
        print(f"\n{len(failed)} export(s) failed verification; no .tflite was written for them", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
