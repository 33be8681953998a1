"""Learned pruning of temporal blocks (MobileVD §2(e), Fig. 4, Table 6).

SVD's UNet has 38 temporal blocks: 22 temporal res-blocks and 16 temporal transformer blocks. Each is
blended with its spatial counterpart by a learned α (AlphaBlender): out = α·x_s + (1−α)·x_t. A 0/1
gate z_i per block switches the temporal branch:

    out_i = x_s + z_i·(1 − α_i)·(x_t − x_s)          (z_i = 1: the SVD block; z_i = 0: spatial only)

The paper states only "a zero-one gate multiplier is sampled to each temporal block during training"
and that, unlike L1 regularisation, the method controls the number of removed blocks explicitly. The
formulas are our reconstruction (documented choices):

* importance logits q_i (learned, one per block);
* inclusion probabilities p_i = min(1, c·exp(q_i)) with c chosen so that Σ p_i = n, the number of blocks
  to keep ("water-filling" of n·softmax(q) capped at 1, solved exactly by sorting: no iterations);
  n is explicit, so n blocks are kept in expectation;
* per training step z_i ~ Bernoulli(p_i) independently, and the straight-through estimator
  z̃ = z + p − stop_gradient(p): forward uses the 0/1 sample, backward the gradient of p;
* at evaluation the deterministic top-n blocks by q (the gates are exactly 0/1);
* `prune_temporal_blocks` then removes the dropped blocks physically (smaller parameter tree); the
  result computes what the gated model computes with those gates.

The Table 6 baseline ("l1"): a continuous gate g_i (initialised to 1) multiplies the temporal branch and
the trainer adds λ·Σ|g_i|; blocks with the smallest |g_i| are removed at the end.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mvd_jax.errors import UserError
from mvd_jax.models.unet_config import UNetConfig


# ---- which blocks exist ------------------------------------------------------------------------
def temporal_block_names(config: UNetConfig) -> list[str]:
    """Every temporal block of the (unpruned) UNet, in forward order.

    Res-blocks are named by their SpatioTemporalResBlock ("down_blocks.0.resnets.1"), transformer
    layers by their temporal block ("down_blocks.0.attentions.1.temporal_transformer_blocks.0").
    """
    from mvd_jax.models.unet_blocks import transformer_depths

    names = []

    def level(prefix, n_res, has_attn, depths):
        for j in range(n_res):
            names.append(f"{prefix}.resnets.{j}")
            if has_attn:
                names.extend(f"{prefix}.attentions.{j}.temporal_transformer_blocks.{l}" for l in range(depths[j]))

    for i, t in enumerate(config.down_block_types):
        level(f"down_blocks.{i}", config.layers[i], t.startswith("CrossAttn"),
              transformer_depths(config.transformer_layers[i], config.layers[i]))
    names.append("mid_block.resnets.0")
    mid_depths = transformer_depths(config.transformer_layers[-1], 1)
    names.extend(f"mid_block.attentions.0.temporal_transformer_blocks.{l}" for l in range(mid_depths[0]))
    names.append("mid_block.resnets.1")
    rev_layers, rev_tl = config.layers[::-1], config.transformer_layers[::-1]
    for i, t in enumerate(config.up_block_types):
        level(f"up_blocks.{i}", rev_layers[i] + 1, t.startswith("CrossAttn"),
              transformer_depths(rev_tl[i], rev_layers[i] + 1))
    return names


class TemporalBlockPlan:
    """Gate index of each temporal block that exists (None for pruned ones), used at construction."""

    def __init__(self, config: UNetConfig):
        self.names = temporal_block_names(config)
        unknown = sorted(set(config.pruned_temporal_blocks) - set(self.names))
        if unknown:
            raise UserError(f"pruned_temporal_blocks names blocks this UNet does not have: {unknown[:3]}"
                            f"{' …' if len(unknown) > 3 else ''} (see temporal_block_names)")
        self.pruned = set(config.pruned_temporal_blocks)
        self.index = {name: i for i, name in enumerate(self.names)}

    def gate_index(self, name: str) -> int | None:
        return None if name in self.pruned else self.index[name]


# ---- probabilities, sampling, top-n ------------------------------------------------------------
def inclusion_probabilities(logits, n):
    """p_i = min(1, c·exp(q_i)) with Σ p = n (0 < n ≤ len(q)), differentiable in q.

    With the blocks sorted by q (descending), if the top k are capped at 1 then
    c_k = (n − k) / Σ_{i>k} exp(q_(i)); the solution is the smallest k for which c_k·exp(q_(k+1)) ≤ 1.
    `n` may be a traced integer (the trainer's keep-count schedule); a Python int is range-checked.
    """
    q = jnp.asarray(logits, jnp.float32)
    m = q.shape[0]
    if isinstance(n, (int, np.integer)) and not 0 < n <= m:
        raise ValueError(f"n (blocks to keep) must be in 1..{m}, got {n}")
    order = jnp.argsort(-q)
    qs = q[order]
    # log c_k for every k < m; only k < n are candidates (k ≥ n would leave n − k ≤ 0 mass for the rest).
    suffix_lse = jax.lax.cumlogsumexp(qs[::-1])[::-1]  # logsumexp(qs[k:]) for each k
    ks = jnp.arange(m)
    n_f = jnp.asarray(n, jnp.float32)
    log_c = jnp.log(jnp.maximum(n_f - ks, 1.0)) - suffix_lse
    valid = (log_c + qs <= 0.0) & (ks < n)  # the (k+1)-th largest is not capped
    k = jnp.argmax(valid)  # first valid k (one always exists for n < m: k = n−1 gives c·exp(q_(n)) ≤ 1)
    p = jnp.minimum(1.0, jnp.exp(q + log_c[k]))
    return jnp.where(n_f >= m, jnp.ones_like(q), p)  # keeping every block: all gates are 1


def straight_through(z, p):
    """Forward value z (0/1), gradient of p: z + (p − stop_gradient(p)); the bracket is exactly 0."""
    return z + (p - jax.lax.stop_gradient(p))


def sample_gates(key, logits, n):
    """0/1 gates z ~ Bernoulli(p(q, n)) with the straight-through gradient of p."""
    p = inclusion_probabilities(logits, n)
    z = jax.random.bernoulli(key, jax.lax.stop_gradient(p)).astype(p.dtype)
    return straight_through(z, p)


def top_n_gates(logits, n: int):
    """Deterministic evaluation gates: 1 for the n largest logits, 0 elsewhere."""
    q = jnp.asarray(logits)
    keep = jnp.argsort(-q)[:n]
    return jnp.zeros(q.shape, jnp.float32).at[keep].set(1.0)


class TemporalGates(nnx.Module):
    """The learnable gate parameters of a UNet with `temporal_gating` set.

    mode "sampled": `logits` q (init 0: all blocks equally likely); `sample(key, n)` for training steps,
    `top_n(n)` for evaluation. mode "l1": `scales` g (init 1) used directly as gates; `l1_penalty()`.
    """

    def __init__(self, num_blocks: int, mode: str):
        self.mode = mode
        self.num_blocks = num_blocks
        init = 0.0 if mode == "sampled" else 1.0
        value = nnx.Param(jnp.full((num_blocks,), init, jnp.float32), out_sharding=(None,), eager_sharding=False)
        if mode == "sampled":
            self.logits = value
        else:
            self.scales = value

    def sample(self, key, n):
        return sample_gates(key, self.logits[...], n)

    def top_n(self, n: int):
        scores = self.logits[...] if self.mode == "sampled" else jnp.abs(self.scales[...])
        return top_n_gates(scores, n)

    def continuous(self):
        """The L1 baseline's gates g (used as they are during its training)."""
        return self.scales[...]

    def l1_penalty(self):
        return jnp.sum(jnp.abs(self.scales[...]))


# ---- physical removal --------------------------------------------------------------------------
def blocks_to_prune(model, gates) -> list[str]:
    """Names of the blocks whose gate is 0 in the 0/1 vector `gates` (indexed like temporal_block_names)."""
    names = temporal_block_names(model.config)
    g = np.asarray(gates)
    if g.shape != (len(names),) or not np.all((g == 0) | (g == 1)):
        raise ValueError(f"gates must be a 0/1 vector of length {len(names)}")
    return [name for name, z in zip(names, g) if z == 0]


def prune_temporal_blocks(model, gates=None, *, names=None):
    """A new UNet without the temporal blocks whose gate is 0 (or the blocks named in `names`).

    The result has no gate parameters (gating is finished) and computes exactly what `model` computes
    with those 0/1 gates. Its config records the removed blocks in `pruned_temporal_blocks`.
    """
    import dataclasses

    # Imported here: unet_tensors builds the UNet, whose module imports this one.
    from mvd_jax.models.unet_tensors import expected_parameters, unet_from_tensors, unet_to_tensors

    if (gates is None) == (names is None):
        raise ValueError("pass exactly one of gates= or names=")
    drop = set(blocks_to_prune(model, gates) if names is None else names)
    config = dataclasses.replace(model.config, temporal_gating=None,
                                 pruned_temporal_blocks=tuple(sorted(drop | set(model.config.pruned_temporal_blocks))))
    keep = expected_parameters(config)  # the gate parameters and the removed blocks' weights are dropped
    tensors = {k: v for k, v in unet_to_tensors(model).items() if k in keep}
    return unet_from_tensors(tensors, config, source="pruned model")


# ---- the efficiency tables' default pruning --------------------------------------------------
# Which blocks a "pruned" row of the efficiency tables removes. In training the learned gates decide;
# for the tables (Table 6: 70/80/90 % of 38 blocks = 27/30/34 removed) we take the cheapest blocks
# first, in FLOPs of the temporally multiscaled 14×512×256 model (the stage pruning starts from),
# ties in forward order. The paper notes the pruned blocks "were mostly the cheap or low-resolution
# ones", and this order reproduces its pruned rows within 1.5 %. Verified against
# eval/flops.py's temporal_block_flops by tests/test_tables_paper.py.
SVD_BLOCKS_BY_COST = (
    "down_blocks.3.resnets.0",
    "down_blocks.3.resnets.1",
    "mid_block.resnets.0",
    "mid_block.resnets.1",
    "up_blocks.0.resnets.0",
    "up_blocks.0.resnets.1",
    "up_blocks.0.resnets.2",
    "down_blocks.1.resnets.0",
    "down_blocks.1.resnets.1",
    "down_blocks.2.resnets.0",
    "down_blocks.2.resnets.1",
    "up_blocks.1.resnets.0",
    "up_blocks.1.resnets.1",
    "up_blocks.1.resnets.2",
    "up_blocks.2.resnets.0",
    "up_blocks.2.resnets.1",
    "up_blocks.2.resnets.2",
    "mid_block.attentions.0.temporal_transformer_blocks.0",
    "down_blocks.0.resnets.0",
    "down_blocks.0.resnets.1",
    "up_blocks.3.resnets.0",
    "up_blocks.3.resnets.1",
    "up_blocks.3.resnets.2",
    "down_blocks.2.attentions.0.temporal_transformer_blocks.0",
    "down_blocks.2.attentions.1.temporal_transformer_blocks.0",
    "up_blocks.1.attentions.0.temporal_transformer_blocks.0",
    "up_blocks.1.attentions.1.temporal_transformer_blocks.0",
    "up_blocks.1.attentions.2.temporal_transformer_blocks.0",
    "down_blocks.1.attentions.0.temporal_transformer_blocks.0",
    "down_blocks.1.attentions.1.temporal_transformer_blocks.0",
    "up_blocks.2.attentions.0.temporal_transformer_blocks.0",
    "up_blocks.2.attentions.1.temporal_transformer_blocks.0",
    "up_blocks.2.attentions.2.temporal_transformer_blocks.0",
    "down_blocks.0.attentions.0.temporal_transformer_blocks.0",
    "down_blocks.0.attentions.1.temporal_transformer_blocks.0",
    "up_blocks.3.attentions.0.temporal_transformer_blocks.0",
    "up_blocks.3.attentions.1.temporal_transformer_blocks.0",
    "up_blocks.3.attentions.2.temporal_transformer_blocks.0",
)
