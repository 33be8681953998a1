"""FLOP counting against PyTorch's FlopCounterMode, and the efficiency table against the paper."""
import json
import subprocess
import sys

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


def test_tables_reproduce_the_paper_svd_rows():
    out = subprocess.run([sys.executable, "-m", "mvd_jax.tables", "--format=json"], capture_output=True, text=True,
                         check=True)
    rows = {r["config"]: r for r in json.loads(out.stdout)}
    for name, paper in [("svd_1024x576", 45.43), ("svd_512x256", 8.60)]:
        r = rows[name]
        assert r["params"] == 1_524_623_082
        assert r["frames"] == 14 and r["paper_tflops"] == paper
        assert abs(r["tflops"] / paper - 1) < 0.03, r
    assert (rows["svd_1024x576"]["width"], rows["svd_1024x576"]["height"]) == (1024, 576)
    assert (rows["svd_512x256"]["width"], rows["svd_512x256"]["height"]) == (512, 256)
