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
