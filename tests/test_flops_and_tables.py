"""FLOP counting against PyTorch's FlopCounterMode, and the efficiency table against the paper."""
import jax
import jax.numpy as jnp
import pytest
import torch
from flax import nnx
from torch.utils.flop_counter import FlopCounterMode

import oracle
from mvd_jax.convert.diffusers_unet import abstract_unet
from mvd_jax.eval.flops import count_flops, jaxpr_flops
from mvd_jax.models import UNetConfig


@pytest.mark.parametrize("name,b,t,h,w", [("svd_like", 2, 3, 8, 16), ("tiny", 1, 5, 9, 13)])
def test_unet_flops_equal_torch_flop_counter(diffusers_unets, name, b, t, h, w):
    torch_model, _ = diffusers_unets(name)
    torch_model.set_default_attn_processor()  # bmm attention, which FlopCounterMode counts (CPU SDPA it does not)
    cfg = oracle.SMALL_CONFIGS[name]
    inputs = {k: torch.from_numpy(v) for k, v in oracle.random_inputs(cfg, b, t, h, w).items()}
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        torch_model(**inputs)

    graphdef, state = nnx.split(abstract_unet(UNetConfig.from_dict(cfg)))
    S = jax.ShapeDtypeStruct
    args = (state, S((b, t, h, w, 8), jnp.float32), S((b,), jnp.float32),
            S((b, 1, cfg["cross_attention_dim"]), jnp.float32), S((b, 3), jnp.float32))
    flops = count_flops(lambda st, *a: nnx.merge(graphdef, st)(*a), *args)
    assert flops["flops"] == counter.get_total_flops()
    assert 0.8 < flops["xla_flops"] / flops["flops"] < 1.25  # XLA's view of the same program, for orientation


def test_jaxpr_flops_multiplies_scan_bodies():
    def f(x, ws):
        return jax.lax.scan(lambda c, w: (c @ w, None), x, ws)[0]

    x, ws = jnp.ones((3, 4)), jnp.ones((5, 4, 4))
    assert jaxpr_flops(jax.make_jaxpr(f)(x, ws)) == 5 * 2 * 3 * 4 * 4


def test_decoder_flops_equal_torch_flop_counter():
    """The decoder table's counts: the tiny decoder against diffusers' AutoencoderTiny and SVD's temporal VAE
    decoder against AutoencoderKLTemporalDecoder, both under FlopCounterMode, on small random configs."""
    from diffusers import AutoencoderKLTemporalDecoder, AutoencoderTiny

    from mvd_jax.convert.diffusers_tiny_autoencoder import abstract_tiny_autoencoder
    from mvd_jax.convert.diffusers_vae import abstract_vae
    from mvd_jax.models.tiny_autoencoder import TinyAutoencoderConfig
    from mvd_jax.models.vae import VAEConfig
    from mvd_jax.tables import decoder_row

    tiny = dict(encoder_block_out_channels=(16, 16, 16), decoder_block_out_channels=(24, 24, 24),
                num_encoder_blocks=(1, 1, 1), num_decoder_blocks=(2, 1, 1), latent_channels=4)
    vae = dict(block_out_channels=(32, 64), layers_per_block=2, latent_channels=4,
               down_block_types=("DownEncoderBlock2D",) * 2)
    frames, h, w = 3, 6, 10
    for torch_model, ours, decode in (
            (AutoencoderTiny(**tiny), abstract_tiny_autoencoder(TinyAutoencoderConfig(**tiny)),
             lambda m, z: m.decode(z)),
            (AutoencoderKLTemporalDecoder(**vae), abstract_vae(VAEConfig(**vae)),
             lambda m, z: m.decode(z, num_frames=frames))):
        factor = ours.config.downsampling_factor
        if hasattr(torch_model, "set_default_attn_processor"):
            torch_model.set_default_attn_processor()  # bmm attention, which FlopCounterMode counts (CPU SDPA it does not)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            decode(torch_model.eval(), torch.zeros(frames, 4, h, w))
        row = decoder_row("x", ours, frames=frames, height=h * factor, width=w * factor)
        assert round(row["tflops"] * 1e12) == counter.get_total_flops(), type(torch_model).__name__
        decoder_params = sum(p.numel() for n, p in torch_model.named_parameters() if n.startswith("decoder."))
        assert row["params"] == decoder_params


def test_decoder_table_tiny_decoder_is_under_a_tenth_of_svds():
    from mvd_jax.tables import decoder_rows, format_decoder_table

    rows = decoder_rows(latency_file=None)
    by = {(r["decoder"], r["width"]): r for r in rows}
    assert by[("tiny_decoder", 512)]["vs_svd_decoder"] < 0.10
    assert by[("svd_vae_decoder", 512)]["tflops"] > 4.34  # SVD's decoder costs more than MobileVD's UNet step
    assert by[("svd_vae_decoder", 512)]["params"] == by[("svd_vae_decoder", 1024)]["params"]
    assert "tiny_decoder" in format_decoder_table(rows)


def test_unet2d_flops_equal_torch_flop_counter():
    """The InstructPix2Pix UNet's count (attention included) equals PyTorch's FlopCounterMode on diffusers' twin."""
    from diffusers import UNet2DConditionModel

    from movie_oracle import IP2P_UNET
    from mvd_jax.convert.diffusers_unet2d import abstract_unet2d
    from mvd_jax.models.unet2d_config import UNet2DConditionConfig

    torch_model = UNet2DConditionModel(**IP2P_UNET).eval()
    torch_model.set_default_attn_processor()  # bmm attention, which FlopCounterMode counts
    b, h, w, L = 2, 6, 10, 7
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        torch_model(torch.zeros(b, 8, h, w), torch.tensor([5.0, 500.0]), torch.zeros(b, L, 32))
    graphdef, state = nnx.split(abstract_unet2d(UNet2DConditionConfig.from_dict(IP2P_UNET)))
    S = jax.ShapeDtypeStruct
    fn = lambda st, *a: nnx.merge(graphdef, st)(*a)
    args = (state, S((b, h, w, 8), jnp.float32), S((b,), jnp.float32), S((b, L, 32), jnp.float32))
    assert jaxpr_flops(jax.make_jaxpr(fn)(*args)) == counter.get_total_flops()


def test_movie_table_reproduces_movie_table_1():
    """MoViE's Table 1 TFLOPs per 480×480 frame, from our full-size SD-1.5 InstructPix2Pix UNet, SD's VAE and
    TAESD (abstract): counted as MoViE's profiler counts (without attention's q·kᵀ and p·v), every stage within
    1.5 % of the paper; the base UNet ≈ 0.600 TFLOPs per pass; Mobile-Pix2Pix −12 %; the guidance-distilled
    student's one pass costs the Mobile-Pix2Pix pass plus < 0.1 % (its guidance embedding), a third of a guided step."""
    from mvd_jax.tables import format_movie_table, movie_rows

    rows = movie_rows(xla=False)  # the paper-convention count only: no lowering of the full-size UNet
    print("\n" + format_movie_table(rows))
    for r in rows:
        assert abs(r["tflops_per_frame_without_attention_core"] / r["paper_tflops_per_frame"] - 1) < 0.015, r["stage"]
    bare = [r["unet_tflops_per_pass"] - r["unet_attention_core_tflops_per_pass"] for r in rows[:2]]
    assert 0.59 < bare[0] < 0.61 and -0.13 < bare[1] / bare[0] - 1 < -0.11
    assert rows[0]["unet_attention_core_tflops_per_pass"] > 0.05  # the core is counted in the main column
    mobile, distilled = rows[1], rows[2]
    assert 0 < distilled["unet_tflops_per_pass"] / mobile["unet_tflops_per_pass"] - 1 < 1e-3
    assert distilled["unet_params"] > mobile["unet_params"]
    step = lambda r: r["passes_per_step"] * r["unet_tflops_per_pass"]
    assert 2.99 < step(mobile) / step(distilled) < 3.0
