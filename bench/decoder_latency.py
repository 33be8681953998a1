"""CPU latency of the two latent decoders a phone can run after MobileVD's UNet step: SVD's temporal VAE
decoder (SVD's config, random weights: the cost does not depend on them) and the tiny decoder
(configs/stages/tiny_decoder.py's layout: TAESD + temporal mixing), each exported as the exporter exports
`vae_decoder` / `vae_decoder_tiny` (jax2tf → TFLite fp32, verified against JAX with LiteRT) and timed with
LiteRT (XNNPACK) beside the JAX jit of the same function; `python -m mvd_jax.tables --decoders` reads the
result for its latency column.

    JAX_PLATFORMS=cpu .venv/bin/python bench/decoder_latency.py --out bench/results/decoder_latency.json
        [--width 512 --height 256] [--frames 2] [--warmup 1 --steps 3] [--threads N]

`autoencoder_params` in the JSON counts the whole autoencoder the export function holds (encoder too); the
.tflite keeps only what the decoder uses (its size says so). A call decodes `--frames` frames (one decode chunk: diffusers' pipeline decodes SVD's 14 frames in chunks,
and both decoders' cost is linear in frames); the table reports milliseconds per frame = median call / frames.
Timing as bench/litert_vs_jax.py: warm-up calls first, then rounds that call every side once with a pause
before each, medians reported.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
from flax import nnx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from litert_vs_jax import CORES, JaxSide, LiteRTSide, export_or_reuse  # noqa: E402

from mvd_jax.export import functions as F  # noqa: E402
from mvd_jax.models.tiny_autoencoder import TinyAutoencoder, TinyAutoencoderConfig  # noqa: E402
from mvd_jax.models.vae import AutoencoderKLTemporalDecoder, VAEConfig  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--frames", type=int, default=2, help="frames per decode call")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--pause", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=CORES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args()

    decoders = {"svd_vae_decoder": AutoencoderKLTemporalDecoder(VAEConfig(), rngs=nnx.Rngs(0)),
                "tiny_decoder": TinyAutoencoder(TinyAutoencoderConfig(temporal_mixing=True), rngs=nnx.Rngs(0))}
    rows = []
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="decoder_latency_") as folder:
        for name, model in decoders.items():
            f = model.config.downsampling_factor
            fn = F.vae_decoder(model, frames=args.frames, latent_height=args.height // f,
                               latent_width=args.width // f, name=f"{name}_bench")
            record = export_or_reuse(fn, ["fp32"], Path(folder), args.seed, reuse=False)["fp32"]
            inputs = fn.sample_inputs(args.seed)
            jax.clear_caches()
            sides = [JaxSide(fn, inputs), LiteRTSide(fn, "fp32", Path(record["path"]), inputs, args.threads, True)]
            for s in sides:
                s.warmup_s = [s() for _ in range(args.warmup)]
            for i in range(args.steps):
                for s in sides[i % 2:] + sides[:i % 2]:
                    time.sleep(args.pause)
                    s.times_s.append(s())
            jax_ms, lite_ms = (1000 * statistics.median(s.times_s) for s in sides)
            rows.append(dict(decoder=name, width=args.width, height=args.height, frames_per_call=args.frames,
                             autoencoder_params=fn.num_params, jax_ms_per_call=jax_ms, litert_fp32_ms_per_call=lite_ms,
                             litert_fp32_ms_per_frame=lite_ms / args.frames, jax_ms_per_frame=jax_ms / args.frames,
                             export_rel_l2=record["export_rel_l2"], convert_s=record["convert_s"],
                             size_mib=record["size_bytes"] / 2**20,
                             source=f"bench/decoder_latency.py, LiteRT fp32 XNNPACK {args.threads} threads, "
                                    f"{args.frames}-frame calls, median of {args.steps}"))
            print(f"{name}: LiteRT fp32 {lite_ms:.0f} ms, JAX {jax_ms:.0f} ms per {args.frames}-frame call "
                  f"({record['size_bytes'] / 2**20:.1f} MiB .tflite, export rel L2 {record['export_rel_l2']:.1e})",
                  flush=True)
            del sides, fn
    result = dict(cores=CORES, threads=args.threads, load_average_before=load, rows=rows,
                  command=" ".join(sys.argv))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
