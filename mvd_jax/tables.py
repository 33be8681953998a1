"""Efficiency table: parameters and TFLOPs per UNet forward for paper configs; with measured FVDs.

    python -m mvd_jax.tables                       # every config in configs/paper/
    python -m mvd_jax.tables --configs=configs/paper/svd_512x256.py --format=json
    python -m mvd_jax.tables --results RUNS/       # + UCF-101 FVDs, the paper's numbers beside ours
    python -m mvd_jax.tables --decoders            # SVD's VAE decoder vs the tiny decoder, per clip
    python -m mvd_jax.tables --clockwork           # TFLOPs per sampled clip under Clockwork's clock schedule
    python -m mvd_jax.tables --movie               # MoViE: TFLOPs per edited frame, stage by stage

Nothing is materialised: the UNet is built with `nnx.eval_shape` and its forward traced on
ShapeDtypeStructs. `tflops` is the paper's convention (2 × multiply-adds of every conv and matmul,
attention included, counted from the jaxpr); `xla_tflops` is XLA's cost analysis of the same jitted
forward, which also counts elementwise ops but skips conv taps that fall on padding.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mvd_jax.settings import load_config, unet_config
from mvd_jax.convert.diffusers_unet import abstract_unet
from mvd_jax.errors import UserError, cli_main
from mvd_jax.eval.flops import count_flops

PAPER_CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "paper")
# Default row order: the paper's Table 2 progression, then the ablations of Tables 3–6.
PAPER_ORDER = ["svd_1024x576", "svd_512x256", "xattn", "temporal_ms", "pruned_70", "mobilevd", "mobilevd_hd",
               "spatial_ms", "spatial_temporal_ms", "funnels_r025", "funnels_r050", "funnels_r075",
               "funnels_conv_r050", "lowrank_r050", "lowrank_r025", "pruned_80", "pruned_90", "l1_pruned_70"]


def _paper_configs() -> list[str]:
    found = sorted(glob.glob(os.path.join(PAPER_CONFIG_DIR, "*.py")))
    rank = {name: i for i, name in enumerate(PAPER_ORDER)}
    stem = lambda p: os.path.splitext(os.path.basename(p))[0]
    return sorted(found, key=lambda p: (rank.get(stem(p), len(rank)), stem(p)))


def unet_row(config, name: str | None = None) -> dict:
    """One table row: params and FLOPs of one UNet forward at the config's video size.

    `name` (default: config.name) labels the row; the CLI uses the config file's stem.
    """
    cfg = unet_config(config)
    scale = config.get("vae_scale_factor", 8)
    if config.height % scale or config.width % scale:
        raise UserError(f"{name or config.name}: height/width ({config.height}×{config.width}) must be multiples of {scale}")
    b, t, h, w = config.get("batch", 1), config.frames, config.height // scale, config.width // scale

    graphdef, state = nnx.split(abstract_unet(cfg))
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(nnx.merge(graphdef, state), nnx.Param)))

    def forward(state, sample, timestep, context, added_time_ids):
        return nnx.merge(graphdef, state)(sample, timestep, context, added_time_ids)

    f32 = jnp.float32
    args = (state,
            jax.ShapeDtypeStruct((b, t, h, w, cfg.in_channels), f32),
            jax.ShapeDtypeStruct((b,), f32),
            jax.ShapeDtypeStruct((b, 1, cfg.context_dims[0]), f32),
            jax.ShapeDtypeStruct((b, cfg.num_added_time_ids), f32))
    flops = count_flops(forward, *args)
    paper = config.get("paper", {}) or {}
    return {"config": name or config.name, "frames": t, "height": config.height, "width": config.width, "batch": b,
            "params": params, "tflops": flops["flops"] / 1e12, "xla_tflops": flops["xla_flops"] / 1e12,
            "paper_tflops": paper.get("tflops")}


def format_table(rows: list[dict]) -> str:
    head = ["config", "frames", "size (W×H)", "params", "TFLOPs", "XLA TFLOPs", "paper TFLOPs", "vs paper"]
    lines = []
    for r in rows:
        p = r["paper_tflops"]
        lines.append([r["config"], str(r["frames"]), f"{r['width']}×{r['height']}", f"{r['params']:,}",
                      f"{r['tflops']:.2f}", f"{r['xla_tflops']:.2f}", f"{p:.2f}" if p else "-",
                      f"{100 * (r['tflops'] / p - 1):+.1f}%" if p else "-"])
    widths = [max(len(x) for x in col) for col in zip(head, *lines)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    note = ("TFLOPs per UNet forward, batch as configured: 2·MACs of all convs and matmuls (attention included), "
            "the paper's convention; XLA's cost analysis beside it.")
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, lines), "", note])


# ---- decoders: SVD's temporal VAE decoder vs the tiny decoder (MobileVD Table 9) ------------------------
DECODER_SIZES = ((512, 256), (1024, 576))  # (width, height): MobileVD's and SVD's
DECODER_FRAMES = 14
DECODER_LATENCY = os.path.join(os.path.dirname(os.path.dirname(PAPER_CONFIG_DIR)), "bench", "results",
                               "decoder_latency.json")


def decoder_models() -> dict:
    """name → abstract decoder module with the VAE's `decode(z, num_frames)`: SVD's VAE (its config's defaults)
    and the phone's tiny decoder (configs/stages/tiny_decoder.py's layout: TAESD + temporal mixing)."""
    from mvd_jax.convert.diffusers_tiny_autoencoder import abstract_tiny_autoencoder
    from mvd_jax.convert.diffusers_vae import abstract_vae
    from mvd_jax.models.tiny_autoencoder import TinyAutoencoderConfig
    from mvd_jax.models.vae import VAEConfig

    return {"svd_vae_decoder": abstract_vae(VAEConfig()),
            "tiny_decoder": abstract_tiny_autoencoder(TinyAutoencoderConfig(temporal_mixing=True))}


def decoder_row(name: str, model, *, frames: int, height: int, width: int) -> dict:
    """Params of the decoder half and FLOPs of decoding one clip of `frames` latents (one decode call)."""
    f = model.config.downsampling_factor
    if height % f or width % f:
        raise UserError(f"{name}: {width}×{height} is not a multiple of the decoder's factor {f}")
    graphdef, state = nnx.split(model)
    params = sum(int(np.prod(v.shape)) for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
                 if path[0] == "decoder")

    def decode(state, z):
        return nnx.merge(graphdef, state).decode(z, frames)

    z = jax.ShapeDtypeStruct((frames, height // f, width // f, model.config.latent_channels), jnp.float32)
    flops = count_flops(decode, state, z)
    return {"decoder": name, "frames": frames, "height": height, "width": width, "params": params,
            "tflops": flops["flops"] / 1e12, "xla_tflops": flops["xla_flops"] / 1e12}


def decoder_rows(latency_file: str | None = DECODER_LATENCY) -> list[dict]:
    """Both decoders at both sizes, each with its share of SVD's decoder FLOPs at the same size and, where
    bench/decoder_latency.py measured it, its LiteRT CPU latency."""
    latency = {}
    if latency_file and os.path.isfile(latency_file):
        with open(latency_file) as fh:
            for r in json.load(fh)["rows"]:
                latency[(r["decoder"], r["width"], r["height"])] = r
    rows, models = [], decoder_models()
    for w, h in DECODER_SIZES:
        size_rows = [decoder_row(n, m, frames=DECODER_FRAMES, height=h, width=w) for n, m in models.items()]
        base = size_rows[0]["tflops"]
        for r in size_rows:
            r["vs_svd_decoder"] = r["tflops"] / base
            measured = latency.get((r["decoder"], w, h))
            r["litert_cpu_ms_per_frame"] = measured["litert_fp32_ms_per_frame"] if measured else None
            r["latency_source"] = measured["source"] if measured else None
        rows += size_rows
    return rows


def format_decoder_table(rows: list[dict]) -> str:
    head = ["decoder", "frames", "size (W×H)", "params", "TFLOPs / clip", "XLA TFLOPs", "vs SVD decoder",
            "LiteRT CPU ms / frame"]
    lines = [[r["decoder"], str(r["frames"]), f"{r['width']}×{r['height']}", f"{r['params']:,}", f"{r['tflops']:.2f}",
              f"{r['xla_tflops']:.2f}", f"{100 * r['vs_svd_decoder']:.1f}%",
              f"{r['litert_cpu_ms_per_frame']:.0f}" if r["litert_cpu_ms_per_frame"] else "-"] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *lines)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    sources = sorted({r["latency_source"] for r in rows if r["latency_source"]})
    note = ("TFLOPs to decode one 14-frame clip (paper convention, as the UNet table); params of the decoder "
            "half. Latency: " + ("; ".join(sources) if sources else "not measured (bench/decoder_latency.py)"))
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, lines), "", note])


# ---- Clockwork: TFLOPs per sampled clip under the clock schedule (issue 23) ------------------------------
CLOCKWORK_CONFIGS = ("svd_512x256", "svd_1024x576")  # configs/paper/ rows the Clockwork table runs
CLOCKWORK_STEPS = 25
CLOCKWORK_CLOCKS = (2, 4)
CLOCKWORK_ADAPTORS = ("identity", "resnet", "spatiotemporal")


def clockwork_rows(specs: list[str] | None = None, *, steps: int = CLOCKWORK_STEPS, clocks=CLOCKWORK_CLOCKS,
                   adaptors=CLOCKWORK_ADAPTORS, cut_level: int = 1, guidance: bool = True) -> list[dict]:
    """Per config (default: SVD at 512×256 and 1024×576) the plain sampler and each adaptor at each clock: the
    UNet's (and adaptor's) TFLOPs to sample one clip with `steps` Euler steps, with guidance (each step one
    evaluation of 2 clips). Counted from the jaxprs of the split UNet's parts (eval/flops.split_flops); the
    sampler's adaptors are abstract fresh ones (models/clockwork.py), so their FLOPs are a trained one's."""
    from mvd_jax.eval.flops import clock_flops, split_flops
    from mvd_jax.models.clockwork import ClockworkConfig, abstract_adaptor

    specs = specs or [os.path.join(PAPER_CONFIG_DIR, name + ".py") for name in CLOCKWORK_CONFIGS]
    rows = []
    for spec in specs:
        config, name = load_config(spec), _stem(spec)
        cfg = unet_config(config)
        scale = config.get("vae_scale_factor", 8)
        b = config.get("batch", 1)
        modules = [abstract_adaptor(ClockworkConfig.for_unet(cfg, kind, cut_level)) for kind in adaptors]
        split = split_flops(abstract_unet(cfg), batch=b * (2 if guidance else 1), frames=config.frames,
                            height=config.height // scale, width=config.width // scale, cut_level=cut_level,
                            adaptors=modules)
        base = {"config": name, "frames": config.frames, "height": config.height, "width": config.width, "batch": b,
                "steps": steps, "guidance": guidance, "cut_level": cut_level,
                "low_share": split["low"] / split["forward"]}
        plain = clock_flops(split, 0.0, steps=steps, clock=1)
        rows.append({**base, "adaptor": "none (plain)", "adaptor_params": 0, "clock": 1, "full_steps": steps,
                     "adaptor_tflops": 0.0, "tflops": plain["total"] / 1e12, "plain_tflops": plain["plain"] / 1e12,
                     "saving": plain["saving"]})
        for kind, module, adaptor_flops in zip(adaptors, modules, split["adaptors"]):
            params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))
            for clock in clocks:
                n = clock_flops(split, adaptor_flops, steps=steps, clock=clock)
                rows.append({**base, "adaptor": kind, "adaptor_params": params, "clock": clock,
                             "full_steps": n["full_steps"], "adaptor_tflops": adaptor_flops / 1e12,
                             "tflops": n["total"] / 1e12, "plain_tflops": n["plain"] / 1e12, "saving": n["saving"]})
    return rows


def format_clockwork_table(rows: list[dict]) -> str:
    head = ["config", "size (W×H)", "adaptor", "params", "clock", "full steps", "TFLOPs / clip", "vs plain"]
    lines = [[r["config"], f"{r['width']}×{r['height']}", r["adaptor"], f"{r['adaptor_params']:,}", str(r["clock"]),
              f"{r['full_steps']}/{r['steps']}", f"{r['tflops']:.1f}",
              f"{100 * (r['tflops'] / r['plain_tflops'] - 1):+.1f}%"] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *lines)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    r0 = rows[0] if rows else {}
    shares = ", ".join(sorted({f"{r['config']} {100 * r['low_share']:.1f} %" for r in rows}))
    note = (f"TFLOPs of the UNet and adaptor to sample one {r0.get('frames', 14)}-frame clip: {r0.get('steps')} Euler "
            f"steps{', each one evaluation of 2 clips (guidance)' if r0.get('guidance') else ''}; the full UNet on "
            f"the first step and every clock-th, the adaptor between (cut_level {r0.get('cut_level')}). Paper "
            f"convention (2·MACs of convs and matmuls). Share of the low-resolution part in one forward: {shares}. "
            f"Clockwork's paper: −32 % for SD's UNet at 8 steps.")
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, lines), "", note])


# ---- MoViE: TFLOPs per edited frame (issue 24) ------------------------------------------------------------
# MoViE's Table 1 (mobilevd_paper.md §6.1), TFLOPs per frame at 480×480: stage → (UNet, autoencoder, steps,
# UNet passes per step, paper TFLOPs per frame). The paper: base UNet ≈ 600 GFLOPs per pass, SD's VAE 3.2 TFLOPs
# per frame, TAESD −92.6 %; Mobile-Pix2Pix −12 % of the UNet (attention removed at the highest resolution).
MOVIE_STAGES = (
    ("base (InstructPix2Pix)", "base", "vae", 10, 3, 21.31),
    ("+ Mobile-Pix2Pix (+ TAESD)", "mobile", "taesd", 10, 3, 16.10),
    ("+ multimodal guidance distillation", "distilled", "taesd", 10, 1, 5.50),
    ("+ adversarial step distillation", "distilled", "taesd", 1, 1, 0.76),
)
MOVIE_SIZE = (480, 480)  # MoViE's TGVE evaluation size (height, width)


def movie_rows(height: int = MOVIE_SIZE[0], width: int = MOVIE_SIZE[1], *, xla: bool = True) -> list[dict]:
    """MoViE's stages: TFLOPs of one edited frame (UNet passes + the autoencoder's encode and decode), counted from
    the jaxprs of SD-1.5's InstructPix2Pix UNet (its Mobile-Pix2Pix form, and that with the guidance embedding of
    multimodal guidance distillation: one pass per step), SD's VAE and TAESD, all abstract.
    xla: also XLA's cost analysis of each UNet pass (lowers the full-size UNet: seconds)."""
    from mvd_jax.convert.diffusers_sd_vae import abstract_sd_vae
    from mvd_jax.convert.diffusers_tiny_autoencoder import abstract_tiny_autoencoder
    from mvd_jax.convert.diffusers_unet2d import abstract_unet2d
    from mvd_jax.eval.flops import jaxpr_flops
    from mvd_jax.models.attention_kernel import ATTENTION_CORE_SCOPE
    from mvd_jax.models.sd_vae import SDVAEConfig
    from mvd_jax.models.tiny_autoencoder import TinyAutoencoderConfig
    from mvd_jax.models.unet2d_config import UNet2DConditionConfig

    f = 8  # SD's VAE and TAESD both downsample 8×
    if height % f or width % f:
        raise UserError(f"height and width must be multiples of {f}, got {height}×{width}")
    image = jax.ShapeDtypeStruct((1, height, width, 3), jnp.float32)
    latent = jax.ShapeDtypeStruct((1, height // f, width // f, 4), jnp.float32)
    unets, autoencoders = {}, {}
    for kind, config in (("base", UNet2DConditionConfig.instruct_pix2pix()),
                         ("mobile", UNet2DConditionConfig.instruct_pix2pix(drop_top_attention=True)),
                         ("distilled", UNet2DConditionConfig.instruct_pix2pix(drop_top_attention=True,
                                                                               guidance_scales=2))):
        unet = abstract_unet2d(config)
        graphdef, state = nnx.split(unet)
        inputs = (jax.ShapeDtypeStruct((1, height // f, width // f, config.in_channels), jnp.float32),
                  jax.ShapeDtypeStruct((1,), jnp.float32),
                  jax.ShapeDtypeStruct((1, 77, config.cross_attention_dim), jnp.float32))
        if config.guidance_scales:  # the student reads [s_I, s_T]
            inputs += (jax.ShapeDtypeStruct((1, config.guidance_scales), jnp.float32),)
        forward = lambda st, x, t, c, *g, graphdef=graphdef: nnx.merge(graphdef, st)(
            x, t, c, guidance=g[0] if g else None)
        jaxpr = jax.make_jaxpr(forward)(state, *inputs)
        flops = count_flops(forward, state, *inputs) if xla else {"flops": jaxpr_flops(jaxpr), "xla_flops": float("nan")}
        core = jaxpr_flops(jaxpr, scope=ATTENTION_CORE_SCOPE)
        params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(unet, nnx.Param)))
        unets[kind] = {"tflops": flops["flops"] / 1e12, "xla_tflops": flops["xla_flops"] / 1e12, "params": params,
                       "core_tflops": core / 1e12}
    for kind, module in (("vae", abstract_sd_vae(SDVAEConfig())), ("taesd", abstract_tiny_autoencoder(TinyAutoencoderConfig()))):
        graphdef, state = nnx.split(module)
        enc = jaxpr_flops(jax.make_jaxpr(lambda st, x: nnx.merge(graphdef, st).encode_mode(x))(state, image))
        dec = jaxpr_flops(jax.make_jaxpr(lambda st, z: nnx.merge(graphdef, st).decode(z))(state, latent))
        autoencoders[kind] = (enc + dec) / 1e12
    rows = []
    for stage, unet, ae, steps, passes, paper in MOVIE_STAGES:
        u = unets[unet]
        without_core = u["tflops"] - u["core_tflops"]  # what DeepSpeed's profiler (MoViE's count) sees
        rows.append({"stage": stage, "unet": unet, "unet_params": u["params"], "unet_tflops_per_pass": u["tflops"],
                     "unet_attention_core_tflops_per_pass": u["core_tflops"],
                     "unet_xla_tflops_per_pass": u["xla_tflops"], "steps": steps, "passes_per_step": passes,
                     "autoencoder": ae, "autoencoder_tflops": autoencoders[ae],
                     "tflops_per_frame": steps * passes * u["tflops"] + autoencoders[ae],
                     "tflops_per_frame_without_attention_core": steps * passes * without_core + autoencoders[ae],
                     "paper_tflops_per_frame": paper, "height": height, "width": width})
    return rows


def format_movie_table(rows: list[dict]) -> str:
    head = ["stage", "UNet params", "UNet TFLOPs/pass", "steps × passes", "autoencoder (TFLOPs)", "TFLOPs/frame",
            "w/o attention core", "paper"]
    lines = [[r["stage"], f"{r['unet_params'] / 1e6:.1f} M",
              f"{r['unet_tflops_per_pass']:.3f} ({r['unet_tflops_per_pass'] - r['unet_attention_core_tflops_per_pass']:.3f})",
              f"{r['steps']} × {r['passes_per_step']}", f"{r['autoencoder']} ({r['autoencoder_tflops']:.2f})",
              f"{r['tflops_per_frame']:.2f}", f"{r['tflops_per_frame_without_attention_core']:.2f}",
              f"{r['paper_tflops_per_frame']:.2f}"] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *lines)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    base, mobile = rows[0], rows[1]
    bare = lambda r: r["unet_tflops_per_pass"] - r["unet_attention_core_tflops_per_pass"]
    note = (f"MoViE per edited {base['width']}×{base['height']} frame: UNet passes (3 with 3-way guidance) × steps + "
            f"the autoencoder's encode and decode; 2·MACs of convs and matmuls counted from the jaxpr. In brackets and "
            f"in 'w/o attention core': without attention's q·kᵀ and p·v matmuls, which MoViE's profiler (DeepSpeed "
            f"0.15.2) does not see inside fused attention — the paper's ≈ 0.600 TFLOPs per base pass is that count. "
            f"Mobile-Pix2Pix changes the UNet by {100 * (mobile['unet_tflops_per_pass'] / base['unet_tflops_per_pass'] - 1):+.1f} % "
            f"({100 * (bare(mobile) / bare(base) - 1):+.1f} % without the attention core; paper: −12 %). XLA's cost "
            f"analysis per pass: base {base['unet_xla_tflops_per_pass']:.3f}, mobile {mobile['unet_xla_tflops_per_pass']:.3f}.")
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, lines), "", note])


# ---- quality: measured FVDs beside the paper's -------------------------------------------------------
# The paper's UCF-101 FVDs by row (Tables 1–8; mobilevd_paper.md §3): row → (config, NFE, FVD at 25 fps,
# FVD at 7 fps, source). Two Table 2 rows share a config with another row because only the weights
# differ (finetuned / adversarially distilled); ucf101.py's `--name` picks the row. The ablations
# (Tables 3–6) report the 25-fps FVD only and start from the 1-step adversarially finetuned model.
PAPER_FVD = {
    "svd_1024x576": ("svd_1024x576", 50, 140, 149, "Tables 1, 2 and 8, SVD 1024×576"),
    "svd_512x256": ("svd_512x256", 50, 366, 476, "Table 2, SVD 512×256 zero-shot"),
    "svd_512x256_ft": ("svd_512x256", 50, 194, 196, "Table 2, + low-resolution finetuning"),
    "xattn": ("xattn", 50, 194, 196, "Table 2, + optimized cross-attention"),
    "xattn_adv": ("xattn", 1, 133, 168, "Table 2, + adversarial finetuning"),
    "temporal_ms": ("temporal_ms", 1, 139, 156, "Table 2, + temporal multiscaling (Table 3: 138)"),
    "pruned_70": ("pruned_70", 1, 127, 150, "Tables 2 and 6, + temporal block pruning"),
    "mobilevd": ("mobilevd", 1, 149, 171, "Tables 1 and 2, MobileVD (+ channel funneling)"),
    "mobilevd_hd": ("mobilevd_hd", 1, 126, 184, "Tables 7 and 8, MobileVD-HD"),
    "spatial_ms": ("spatial_ms", 1, 145, None, "Table 3, spatial ms."),
    "spatial_temporal_ms": ("spatial_temporal_ms", 1, 163, None, "Table 3, spatial + temporal ms."),
    "funnels_r025": ("funnels_r025", 1, 155, None, "Table 4, CSI 0.25"),
    "funnels_r050": ("funnels_r050", 1, 132, None, "Tables 4 and 5, funnels 0.5"),
    "funnels_r075": ("funnels_r075", 1, 145, None, "Table 4, CSI 0.75"),
    "funnels_conv_r050": ("funnels_conv_r050", 1, 139, None, "Table 5, funnels (convolutions) 0.5"),
    "lowrank_r050": ("lowrank_r050", 1, 142, None, "Table 5, truncated SVD 0.5"),
    "lowrank_r025": ("lowrank_r025", 1, 130, None, "Table 5, truncated SVD 0.25"),
    "pruned_80": ("pruned_80", 1, 245, None, "Table 6, our method 80 %"),
    "pruned_90": ("pruned_90", 1, 201, None, "Table 6, our method 90 %"),
    "l1_pruned_70": ("l1_pruned_70", 1, 207, None, "Table 6, L1 regularization 70 %"),
}
RESULT_KIND = "mvd_jax.eval.ucf101"
QUALITY_COLUMNS = ["row", "config", "nfe", "paper_nfe", "fvd_25fps", "videos_25fps", "paper_fvd_25fps",
                   "fvd_7fps", "videos_7fps", "paper_fvd_7fps", "tflops", "paper_tflops", "params", "paper_source"]


def load_results(folder) -> dict[tuple[str, int], dict]:
    """(row name, fps) → result, from every ucf101 result.json under `folder` (recursive)."""
    from pathlib import Path

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"results folder not found: {folder}")
    found: dict[tuple[str, int], dict] = {}
    for path in sorted(folder.rglob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            print(f"note: skipping {path} (not readable JSON)", file=sys.stderr)
            continue
        if not isinstance(data, dict) or data.get("kind") != RESULT_KIND:
            continue  # settings, selections, FVD-only results: not table rows
        missing = [k for k in ("name", "fps", "fvd", "nfe", "videos_used") if k not in data]
        if missing:
            raise UserError(f"{path} is an incomplete ucf101 result: no {', '.join(missing)}")
        key = (str(data["name"]), int(data["fps"]))
        if key in found:
            raise UserError(f"two results for row {key[0]!r} at {key[1]} fps: {found[key]['_path']} and {path}; "
                            f"keep one or give one a different --name")
        found[key] = {**data, "_path": str(path)}
    if not found:
        raise UserError(f"no UCF-101 results (result.json of python -m mvd_jax.eval.ucf101) under {folder}")
    return found


def quality_rows(results: dict[tuple[str, int], dict], efficiency: dict[str, dict]) -> list[dict]:
    """One row per paper row whose config is in `efficiency` and per measured row name, paper order
    first; our FVD at 25 and 7 fps beside the paper's, TFLOPs and params from `efficiency` (config → row)."""
    names = [n for n, v in PAPER_FVD.items() if v[0] in efficiency]
    names += sorted({n for n, _ in results} - set(names), key=lambda n: (n not in PAPER_FVD, n))
    rows = []
    for name in names:
        measured = {fps: results.get((name, fps)) for fps in (25, 7)}
        any_result = next((r for r in measured.values() if r), None)
        paper = PAPER_FVD.get(name)
        config = paper[0] if paper else (any_result or {}).get("config")
        eff = efficiency.get(config) or {}
        nfes = sorted({r["nfe"] for r in measured.values() if r})
        rows.append({
            "row": name, "config": config,
            "nfe": "/".join(map(str, nfes)) or None, "paper_nfe": paper[1] if paper else None,
            "fvd_25fps": measured[25]["fvd"] if measured[25] else None,
            "videos_25fps": measured[25]["videos_used"] if measured[25] else None,
            "paper_fvd_25fps": paper[2] if paper else None,
            "fvd_7fps": measured[7]["fvd"] if measured[7] else None,
            "videos_7fps": measured[7]["videos_used"] if measured[7] else None,
            "paper_fvd_7fps": paper[3] if paper else None,
            "tflops": eff.get("tflops"), "paper_tflops": eff.get("paper_tflops"), "params": eff.get("params"),
            "paper_source": paper[4] if paper else None,
        })
    return rows


def format_quality_markdown(rows: list[dict]) -> str:
    num = lambda v, f="{:.1f}": "–" if v is None else f.format(v)
    fvd = lambda v, n: "–" if v is None else f"{v:.1f} (n={n})"
    head = ["row", "config", "NFE", "paper NFE", "FVD 25 fps", "paper", "FVD 7 fps", "paper", "TFLOPs",
            "paper TFLOPs", "params"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["row"], r["config"] or "–", r["nfe"] or "–", num(r["paper_nfe"], "{}"),
                 fvd(r["fvd_25fps"], r["videos_25fps"]), num(r["paper_fvd_25fps"], "{}"),
                 fvd(r["fvd_7fps"], r["videos_7fps"]), num(r["paper_fvd_7fps"], "{}"),
                 num(r["tflops"], "{:.2f}"), num(r["paper_tflops"], "{:.2f}"), num(r["params"], "{:,}")]
        lines.append("| " + " | ".join(cells) + " |")
    note = ("FVD on UCF-101 (python -m mvd_jax.eval.ucf101; n = videos). The paper does not state its number "
            "of videos; FVD falls as n grows, so compare at equal n only. TFLOPs per UNet forward (2·MACs).")
    return "\n".join(lines + ["", note])


def write_quality_csv(rows: list[dict], path) -> None:
    import csv

    def write(f):
        writer = csv.DictWriter(f, QUALITY_COLUMNS)
        writer.writeheader()
        writer.writerows({k: ("" if r[k] is None else r[k]) for k in QUALITY_COLUMNS} for r in rows)

    _atomic_write(path, write)


def _atomic_write(path, write) -> None:
    import tempfile

    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".table.", dir=directory)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _efficiency_for(results, specs: list[str] | None) -> dict[str, dict]:
    """config name → efficiency row: the chosen configs (default: configs/paper/), plus the configs of
    measured rows (from configs/paper/ or the path the result recorded)."""
    chosen = {_stem(s): s for s in (specs or _paper_configs())}
    for r in results.values():
        name = PAPER_FVD[r["name"]][0] if r["name"] in PAPER_FVD else r.get("config")
        if not name or name in chosen:
            continue
        for candidate in (os.path.join(PAPER_CONFIG_DIR, name + ".py"), r.get("config_path")):
            if candidate and os.path.isfile(candidate.partition(":")[0]):
                chosen[name] = candidate
                break
    return {name: unet_row(load_config(spec), name=name) for name, spec in chosen.items()}


def _stem(spec: str) -> str:
    return os.path.splitext(os.path.basename(spec.partition(":")[0]))[0]


@cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mvd_jax.tables", description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="*", help="config files (file.py[:arg]); default: configs/paper/*.py")
    parser.add_argument("--format", choices=["table", "json"], default="table")
    parser.add_argument("--decoders", action="store_true",
                        help="the decoder table instead: SVD's VAE decoder vs the tiny decoder, per 14-frame clip")
    parser.add_argument("--clockwork", action="store_true",
                        help="the Clockwork table instead: TFLOPs per sampled clip (25 steps, guidance) with the plain "
                             "sampler and with each adaptor at clock 2 and 4; --configs picks the configs (default: "
                             "SVD at 512×256 and 1024×576)")
    parser.add_argument("--movie", action="store_true",
                        help="MoViE's table instead: TFLOPs per edited 480×480 frame for each stage (InstructPix2Pix, "
                             "Mobile-Pix2Pix, guidance distillation, 1 step), beside the paper's Table 1")
    parser.add_argument("--results", default=None,
                        help="folder of ucf101 result.json files: adds FVD columns, the paper's beside ours, and "
                             "writes quality_table.md and quality_table.csv there")
    args = parser.parse_args(argv)
    if args.decoders:
        rows = decoder_rows()
        print(json.dumps(rows, indent=2) if args.format == "json" else format_decoder_table(rows))
        return rows
    if args.clockwork:
        rows = clockwork_rows(args.configs)
        print(json.dumps(rows, indent=2) if args.format == "json" else format_clockwork_table(rows))
        return rows
    if args.movie:
        rows = movie_rows()
        print(json.dumps(rows, indent=2) if args.format == "json" else format_movie_table(rows))
        return rows
    if args.results:
        return _quality_main(args)
    specs = args.configs or _paper_configs()
    if not specs:
        raise UserError(f"no configs given and none found in {PAPER_CONFIG_DIR}")
    rows = [unet_row(load_config(spec), name=_stem(spec)) for spec in specs]
    print(json.dumps(rows, indent=2) if args.format == "json" else format_table(rows))


def _quality_main(args):
    results = load_results(args.results)  # checked before the (slower) efficiency rows
    rows = quality_rows(results, _efficiency_for(results, args.configs))
    md_path = os.path.join(args.results, "quality_table.md")
    csv_path = os.path.join(args.results, "quality_table.csv")
    markdown = format_quality_markdown(rows)
    _atomic_write(md_path, lambda f: f.write(markdown + "\n"))
    write_quality_csv(rows, csv_path)
    print(json.dumps(rows, indent=2) if args.format == "json" else markdown)
    print(f"wrote {md_path} and {csv_path}", file=sys.stderr)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
