"""Oracle tests of the SD-1.5 / InstructPix2Pix UNet (models/unet2d_condition.py) and MoViE's two options.

(a) A tiny diffusers UNet2DConditionModel with every parameter random, saved with save_pretrained and loaded
    by `load_unet2d`, equals diffusers to 1e-5 relative L2 (float32): batch 2, non-square 8×12 latents, a
    7-token text, a different timestep per element. The linear proj_in/proj_out layout (use_linear_projection)
    is checked on one Transformer2DModel against diffusers'.
(b) Cross-frame attention: one Attention module against a float64 NumPy evaluation of
    softmax(Q_f K_aᵀ/√d) V_a with the middle anchor; the anchor frame's output is plain self-attention's;
    at UNet level, num_frames = 1 is the plain UNet (the same program), and num_frames = 3 matches diffusers
    with an attention processor that gives every frame the middle frame's keys and values — its anchor
    frames equal the plain UNet's outputs for those frames.
(c) drop_top_attention: the base checkpoint loads with exactly the top-level attentions dropped (the rest loads
    strictly into diffusers' UNet with DownBlock2D / UpBlock2D at the top level, too), the parameter count falls
    by exactly their sizes, the output shape is right; any other mismatch still fails, naming the tensor. (The
    mobile UNet is made of the blocks (a) checks: DownBlock2D and UpBlock2D are already in the tiny UNet.)

Kept small for the suite's time budget (≈ 20 s): one module-scoped oracle, two UNet compiles.
"""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import Transformer2DModel as TorchTransformer2D
from diffusers import UNet2DConditionModel as TorchUNet2D
from diffusers.models.attention_processor import AttnProcessor
from flax import nnx

import oracle
from mvd_jax.convert.diffusers_unet2d import expected_parameters, load_unet2d, unet2d_from_tensors
from mvd_jax.errors import UserError
from mvd_jax.models.attention import Attention
from mvd_jax.models.tensors import CheckpointMismatchError, load_module
from mvd_jax.models.unet2d_condition import Transformer2DModel, anchor_index, cross_frame_attention
from mvd_jax.models.unet2d_config import UNet2DConditionConfig

TOL = 1e-5
TINY = dict(
    block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, cross_attention_dim=32, sample_size=8,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=(2, 4),  # diffusers' name for the head count: head widths 16 (top level) and 16 (mid block)
    in_channels=8, out_channels=4)
B, H, W, TEXT = 2, 8, 12, 7
FRAMES = 3  # cross-frame test: 2 videos of 3 frames, anchor 1


def _nhwc(x):
    return jnp.asarray(np.ascontiguousarray(x.transpose(0, 2, 3, 1)))


# XLA:CPU's compile of each tiny UNet is most of this file's time; without LLVM's optimisation passes it is
# 30–60 % shorter (measured here). The same float32 operations: the tolerances are unaffected.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _compiled(fn, *args):
    return jax.jit(fn).lower(*args).compile(FAST_COMPILE)(*args)


def _forward(model, sample, timestep, context, num_frames=1):
    """The JAX UNet on diffusers-layout inputs (one compile per call); diffusers-layout output."""
    graphdef, state = nnx.split(model)
    fn = lambda st, s, t, c: nnx.merge(graphdef, st)(s, t, c, num_frames=num_frames)
    out = _compiled(fn, state, _nhwc(sample), jnp.asarray(timestep), jnp.asarray(context))
    return np.asarray(out).transpose(0, 3, 1, 2)


def _param_count(model) -> int:
    return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The oracle's tiny torch forwards take ~20 ms on one thread, but up to seconds on two threads that
    spin-wait for each other on a busy machine; restored after this file."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def oracle_unet(tmp_path_factory):
    """(torch model, folder, inputs, diffusers' output, our loaded model, our output)."""
    torch.manual_seed(0)
    model = oracle.randomize_parameters(TorchUNet2D(**TINY).eval(), 1)
    folder = tmp_path_factory.mktemp("unet2d") / "unet"
    model.save_pretrained(folder)
    rng = np.random.default_rng(0)
    inputs = dict(sample=rng.standard_normal((B, TINY["in_channels"], H, W)).astype(np.float32),
                  timestep=np.array([981, 37]),
                  context=rng.standard_normal((B, TEXT, TINY["cross_attention_dim"])).astype(np.float32))
    with torch.no_grad():
        expected = model(torch.from_numpy(inputs["sample"]), torch.from_numpy(inputs["timestep"]),
                         torch.from_numpy(inputs["context"])).sample.numpy()
    ours = load_unet2d(folder)
    return model, folder, inputs, expected, ours, _forward(ours, **inputs)


# ---- (a) parity -------------------------------------------------------------------------------------------
def test_unet_matches_diffusers(oracle_unet):
    _, folder, _, expected, ours, got = oracle_unet
    assert json.loads((folder / "config.json").read_text())["_class_name"] == "UNet2DConditionModel"
    assert ours.config.in_channels == 8 and not ours.config.use_linear_projection
    assert got.shape == expected.shape == (B, 4, H, W)
    err = oracle.rel_l2(got, expected)
    assert err <= TOL, f"relative L2 error {err:.2e} > {TOL}"
    assert oracle.rel_l2(got[0], got[1]) > 0.1  # the two elements (timesteps, texts) really differ


def test_linear_projection_transformer_matches_diffusers():
    """use_linear_projection=True (SD-2.x configs): proj_in/proj_out as Linear, (out, in) weights."""
    heads, head_dim, channels, ctx_dim = 2, 12, 24, 20
    torch.manual_seed(2)
    ref = TorchTransformer2D(heads, head_dim, in_channels=channels, cross_attention_dim=ctx_dim, norm_num_groups=4,
                             use_linear_projection=True)
    ref = oracle.randomize_parameters(ref.eval(), 3)
    abstract = nnx.eval_shape(lambda: Transformer2DModel(heads, head_dim, channels, num_layers=1,
                                                         cross_attention_dim=ctx_dim, norm_num_groups=4,
                                                         use_linear_projection=True, rngs=nnx.Rngs(0)))
    tensors = {k: v.numpy() for k, v in ref.state_dict().items()}
    assert tensors["proj_in.weight"].shape == (channels, channels)  # linear, not (out, in, 1, 1)
    ours = load_module(abstract, tensors, source="<torch>", what="Transformer2DModel")
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, channels, 3, 5)).astype(np.float32)
    ctx = rng.standard_normal((2, 6, ctx_dim)).astype(np.float32)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x), encoder_hidden_states=torch.from_numpy(ctx), return_dict=False)[0].numpy()
    got = np.asarray(_compiled(lambda a, c: ours(a, c), _nhwc(x), jnp.asarray(ctx))).transpose(0, 3, 1, 2)
    assert oracle.rel_l2(got, expected) <= TOL


def test_config_keys():
    """Unknown keys and diffusers features this UNet does not implement are clear errors, not defaults."""
    base = UNet2DConditionConfig.from_dict({**TINY, "_class_name": "UNet2DConditionModel"})
    assert base.heads == (2, 4) and base.time_embed_dim == 128
    with pytest.raises(UserError, match="unknown .*'attention_heads'"):
        UNet2DConditionConfig.from_dict({**TINY, "attention_heads": 8})
    with pytest.raises(UserError, match="class_embed_type='timestep'"):
        UNet2DConditionConfig.from_dict({**TINY, "class_embed_type": "timestep"})
    with pytest.raises(UserError, match="not divisible by norm_num_groups"):
        UNet2DConditionConfig.from_dict({**TINY, "norm_num_groups": 12})
    # timbrooks/instruct-pix2pix unet/config.json as published (written by diffusers 0.12)
    published = {
        "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.12.0.dev0", "act_fn": "silu",
        "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False,
        "class_embed_type": None, "cross_attention_dim": 768,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "downsample_padding": 1, "dual_cross_attention": False, "flip_sin_to_cos": True, "freq_shift": 0,
        "in_channels": 8, "layers_per_block": 2, "mid_block_scale_factor": 1,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "norm_eps": 1e-05, "norm_num_groups": 32, "num_class_embeds": None, "only_cross_attention": False,
        "out_channels": 4, "resnet_time_scale_shift": "default", "sample_size": 64,
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "upcast_attention": False, "use_linear_projection": False}
    assert UNet2DConditionConfig.from_dict(published) == UNet2DConditionConfig.instruct_pix2pix()
    # SD-1.5's UNet has 859,520,964 parameters (abstract: shapes only)
    assert sum(int(np.prod(s)) for s in expected_parameters(UNet2DConditionConfig.sd15()).values()) == 859_520_964


# ---- (b) cross-frame attention ----------------------------------------------------------------------------
def _reference_cross_frame(attn: Attention, x: np.ndarray, num_frames: int) -> np.ndarray:
    """softmax(Q_f K_aᵀ/√d) V_a → to_out, in float64 NumPy, frame by frame."""
    p = lambda v: np.asarray(v[...], np.float64)
    wq, wk, wv = p(attn.to_q.kernel), p(attn.to_k.kernel), p(attn.to_v.kernel)
    wo, bo = p(attn.to_out[0].kernel), p(attn.to_out[0].bias)
    h, d = attn.heads, attn.dim_head
    x = x.astype(np.float64).reshape(-1, num_frames, *x.shape[1:])
    out = np.empty(x.shape[:3] + (wo.shape[1],))
    heads = lambda t: t.reshape(t.shape[0], h, d).transpose(1, 0, 2)  # (N, h·d) → (h, N, d)
    for v in range(x.shape[0]):
        anchor = x[v, num_frames // 2]
        k, val = heads(anchor @ wk), heads(anchor @ wv)
        for f in range(num_frames):
            q = heads(x[v, f] @ wq)
            logits = q @ k.transpose(0, 2, 1) / np.sqrt(d)
            probs = np.exp(logits - logits.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            o = (probs @ val).transpose(1, 0, 2).reshape(x.shape[2], h * d)
            out[v, f] = o @ wo + bo
    return out.reshape(-1, *out.shape[2:])


@pytest.mark.parametrize("num_frames", [5, 4])
def test_cross_frame_attention_formula(num_frames):
    """Odd sizes: 2 videos, 7 tokens, 12 channels, 3 heads of width 5; anchors 2 (of 5) and 2 (of 4)."""
    attn = Attention(12, heads=3, dim_head=5, rngs=nnx.Rngs(num_frames))
    x = np.random.default_rng(num_frames).standard_normal((2 * num_frames, 7, 12)).astype(np.float32)
    got, plain, single = (np.asarray(y) for y in _compiled(
        lambda a: (cross_frame_attention(attn, a, num_frames), attn(a), cross_frame_attention(attn, a, 1)),
        jnp.asarray(x)))
    expected = _reference_cross_frame(attn, x, num_frames)
    assert oracle.rel_l2(got, expected) <= TOL

    # the anchor frame attends to itself: plain self-attention; the others do not
    assert np.array_equal(single, plain)  # one frame per video: plain self-attention
    plain, got = plain.reshape(2, num_frames, 7, -1), got.reshape(2, num_frames, 7, -1)
    a = anchor_index(num_frames)
    assert a == 2
    np.testing.assert_allclose(got[:, a], plain[:, a], rtol=1e-5, atol=1e-6)
    assert oracle.rel_l2(got[:, a - 1], plain[:, a - 1]) > 1e-2


class _MiddleAnchorProcessor:
    """diffusers attention processor for the oracle: self-attention (no encoder states) takes its keys and
    values from the middle frame of each video, copied to every frame; cross-attention is unchanged."""

    def __init__(self, num_frames):
        self.num_frames, self.plain = num_frames, AttnProcessor()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, **kwargs):
        if encoder_hidden_states is None:
            b, n, c = hidden_states.shape
            f = self.num_frames
            anchor = hidden_states.reshape(b // f, f, n, c)[:, f // 2 : f // 2 + 1]
            encoder_hidden_states = anchor.expand(-1, f, -1, -1).reshape(b, n, c)
        return self.plain(attn, hidden_states, encoder_hidden_states, **kwargs)


def test_unet_cross_frame_attention(oracle_unet):
    model, folder, inputs, _, ours, plain_out = oracle_unet
    movie = load_unet2d(folder, cross_frame_attention=True)

    # num_frames = 1 (and the option off) trace to the very program of the plain UNet: equal outputs.
    graph = lambda m, n: str(jax.make_jaxpr(lambda s, t, c: m(s, t, c, num_frames=n))(
        _nhwc(inputs["sample"]), inputs["timestep"], inputs["context"]))
    assert graph(movie, 1) == graph(ours, 1) == graph(ours, 2)

    # 2 videos × 3 frames whose anchors (frame 1) are the two inputs of the parity test
    rng = np.random.default_rng(5)
    n = B * FRAMES
    anchors = np.arange(B) * FRAMES + anchor_index(FRAMES)
    sample = rng.standard_normal((n, *inputs["sample"].shape[1:])).astype(np.float32)
    context = rng.standard_normal((n, *inputs["context"].shape[1:])).astype(np.float32)
    timestep = rng.integers(0, 1000, n)
    sample[anchors], context[anchors], timestep[anchors] = inputs["sample"], inputs["context"], inputs["timestep"]

    got = _forward(movie, sample, timestep, context, num_frames=FRAMES)
    t = lambda a: torch.from_numpy(a)
    with torch.no_grad():
        try:
            model.set_attn_processor(_MiddleAnchorProcessor(FRAMES))
            expected = model(t(sample), t(timestep), t(context)).sample.numpy()
        finally:
            model.set_attn_processor(AttnProcessor())
        plain = model(t(sample), t(timestep), t(context)).sample.numpy()
    assert oracle.rel_l2(got, expected) <= TOL
    assert oracle.rel_l2(expected, plain) > 1e-2  # the anchoring matters on the other frames
    # an anchor sees only itself at every layer: its output is the plain UNet's for that frame
    assert oracle.rel_l2(got[anchors], plain_out) <= TOL


# ---- (c) drop_top_attention --------------------------------------------------------------------------------
def test_drop_top_attention(oracle_unet):
    model, folder, inputs, _, ours, _ = oracle_unet
    base_tensors = {k: v.numpy() for k, v in model.state_dict().items()}
    config = dataclasses.replace(ours.config, drop_top_attention=True)
    prefixes = ("down_blocks.0.attentions.", "up_blocks.1.attentions.")
    assert config.removed_attention_prefixes == prefixes
    dropped = {k: v for k, v in base_tensors.items() if k.startswith(prefixes)}
    assert len(dropped) > 20
    assert set(expected_parameters(config)) == set(base_tensors) - set(dropped)

    # without drop_unused the extra attentions are an error that says what to do
    with pytest.raises(CheckpointMismatchError, match="drop_unused=True") as e:
        load_unet2d(folder, drop_top_attention=True)
    assert f"unexpected {sorted(dropped)[0]}" in str(e.value)

    mobile = load_unet2d(folder, drop_top_attention=True, drop_unused=True)
    assert mobile.down_blocks[0].attentions is None and mobile.up_blocks[-1].attentions is None
    assert len(mobile.mid_block.attentions) == 1
    assert _param_count(ours) - _param_count(mobile) == sum(v.size for v in dropped.values())

    # the same network as diffusers' UNet with DownBlock2D / UpBlock2D at the top level and the remaining weights
    TorchUNet2D(**config.to_diffusers_dict()).load_state_dict(
        {k: torch.from_numpy(v) for k, v in base_tensors.items() if k not in dropped}, strict=True)
    out = jax.eval_shape(lambda *a: mobile(*a), _nhwc(inputs["sample"]), inputs["timestep"], inputs["context"])
    assert out.shape == (B, H, W, 4)

    # drop_unused drops the removed attentions' tensors and nothing else
    kept_attention = "mid_block.attentions.0.proj_in.weight"
    for edit, message in [
        (lambda d: d.pop("down_blocks.0.resnets.0.conv1.weight"), "missing down_blocks.0.resnets.0.conv1.weight"),
        (lambda d: d.pop(kept_attention), f"missing {kept_attention}"),
        (lambda d: d.update({"mid_block.attentions.0.extra": np.zeros(3)}), "unexpected mid_block.attentions.0.extra"),
        (lambda d: d.update({"conv_in.weight": np.zeros((32, 4, 3, 3))}), "wrong shape conv_in.weight"),
    ]:
        tensors = dict(base_tensors)
        edit(tensors)
        with pytest.raises(CheckpointMismatchError, match=message):
            unet2d_from_tensors(tensors, config, drop_unused=True)
