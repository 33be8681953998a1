"""The UNet as training sees it: flat {path: array} parameter dicts, the trainable subset, the optimizer.

NNX modules split into a static graph and an nnx.State; the trainer keeps parameters as flat dicts
keyed "down_blocks/0/resnets/0/conv1/kernel" (plain pytrees that Optax, jit shardings and Orbax all
take as they are) and rebuilds the module inside the jitted step with `ParamCodec.merge`.
"""
from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mvd_jax.errors import UserError

# Named parameter groups for `train.trainable`; anything else is taken as a regex over paths.
TRAINABLE_GROUPS = {
    "all": r".*",
    "temporal": r"(temporal_res_block|time_mixer|temporal_transformer_blocks|time_pos_embed|time_mixer)",
    "gates": r"^temporal_gates/",
    "funnels": r"/funnel_[qkvo12]",
    "funnels_gates": r"(/funnel_[qkvo12]|^temporal_gates/)",
}


class ParamCodec:
    """nnx.State of a module ↔ flat dict of arrays, plus each parameter's logical axis names."""

    def __init__(self, module):
        self.graphdef, state = nnx.split(module)
        self.flat = list(nnx.to_flat_state(state))
        self.keys = ["/".join(str(p) for p in path) for path, _ in self.flat]

    def to_dict(self, module) -> dict:
        _, state = nnx.split(module)
        return {k: v[...] for k, (_, v) in zip(self.keys, nnx.to_flat_state(state))}

    def merge(self, params: dict):
        state = nnx.from_flat_state([(path, var.replace(params[k])) for k, (path, var) in zip(self.keys, self.flat)])
        return nnx.merge(self.graphdef, state)

    def logical_axes(self) -> dict:
        return {k: var.get_metadata().get("out_sharding") for k, (_, var) in zip(self.keys, self.flat)}

    def shapes(self) -> dict:
        return {k: jax.ShapeDtypeStruct(var.shape, var.dtype) for k, (_, var) in zip(self.keys, self.flat)}


class PairCodec:
    """Two modules' parameters as one flat dict (ParamCodec's interface, for the shared step): the first's keys
    as they are — so a run's checkpoint reads like a one-model run of it — the second's behind `prefix`
    (Clockwork's adaptor beside its UNet, a distillation teacher beside its student). merge → (first, second);
    to_dict takes the pair."""

    def __init__(self, first, second, prefix: str):
        self.prefix = prefix
        self.first, self.second = ParamCodec(first), ParamCodec(second)
        self.second_keys = [prefix + k for k in self.second.keys]
        self.keys = self.first.keys + self.second_keys

    def _both(self, first_part: dict, second_part: dict) -> dict:
        return {**first_part, **{self.prefix + k: v for k, v in second_part.items()}}

    def merge(self, params: dict):
        n = len(self.prefix)
        return self.first.merge(params), self.second.merge({k[n:]: params[k] for k in self.second_keys})

    def to_dict(self, pair) -> dict:
        return self._both(self.first.to_dict(pair[0]), self.second.to_dict(pair[1]))

    def logical_axes(self) -> dict:
        return self._both(self.first.logical_axes(), self.second.logical_axes())

    def shapes(self) -> dict:
        return self._both(self.first.shapes(), self.second.shapes())


def trainable_keys(keys, spec: str) -> list[str]:
    pattern = re.compile(TRAINABLE_GROUPS.get(spec, spec))
    chosen = [k for k in keys if pattern.search(k)]
    if not chosen:
        raise UserError(f"train.trainable={spec!r} selects no parameter of this model")
    return chosen


def learning_rate_schedule(opt, peak: float) -> optax.Schedule:
    """Linear warm-up from 0 to `peak` over opt.warmup_steps, constant, then (decay_steps > 0) a linear decay
    to peak·decay_to over decay_steps steps from step decay_start, constant after. The decay is fixed in steps,
    not tied to train.steps, so extending a run with a larger train.steps does not change its past schedule."""
    warmup = max(1, opt.warmup_steps)
    parts, bounds = [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup]
    if opt.decay_steps:  # settings checks decay_start ≥ the warm-up
        parts[1:] = [optax.constant_schedule(peak), optax.linear_schedule(peak, peak * opt.decay_to, opt.decay_steps)]
        bounds.append(opt.decay_start)
    return optax.join_schedules(parts, bounds)


def make_optimizer(opt) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW after global-norm clipping, on learning_rate_schedule(opt, opt.learning_rate)."""
    schedule = learning_rate_schedule(opt, opt.learning_rate)
    tx = optax.chain(optax.clip_by_global_norm(opt.clip_norm) if opt.clip_norm else optax.identity(),
                     optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                                 weight_decay=opt.weight_decay))
    return tx, schedule


# ---- building the UNet -----------------------------------------------------------------------------
def build_unet(config, seed: int):
    from mvd_jax.models.unet import SpatioTemporalUNet

    return SpatioTemporalUNet(config, rngs=nnx.Rngs(seed))


def init_unet_from_svd(path, config):
    """An SVD diffusers UNet mapped into `config`: collapsed cross-attention keeps the weights (to_q/to_k
    stay, unused); temporal blocks the config prunes are dropped; gates start fresh; funnels (unmerged)
    start from the coupled singular initialisation of the SVD projections (models/funnels.py)."""
    from mvd_jax.convert.diffusers_unet import expected_parameters, read_unet_checkpoint, unet_from_tensors
    from mvd_jax.models.funnels import add_funnels

    tensors, _, _ = read_unet_checkpoint(path)
    base = dataclasses.replace(config, funnel_factor=None, funnels_merged=False, funnel_target="attention")
    if config.funnel_factor is not None and config.funnels_merged:
        raise UserError("init_from an SVD checkpoint cannot produce merged funnels; train with "
                        "funnels_merged=False and merge afterwards (models/funnels.merge_funnels)")
    if base.pruned_temporal_blocks:
        full = dataclasses.replace(base, pruned_temporal_blocks=())
        dropped = set(expected_parameters(full)) - set(expected_parameters(base))
        tensors = {k: v for k, v in tensors.items() if k not in dropped}
    unet = unet_from_tensors(tensors, base, source=str(path))
    if config.funnel_factor is not None:
        unet = add_funnels(unet, config.funnel_factor, init="csi", target=config.funnel_target)
    return unet


def ema_decay_at(decay: float, updates_before, warmup: bool = True):
    """The EMA decay of the update after `updates_before` earlier ones: with `warmup`, min(decay, (1 + n) /
    (10 + n)) — diffusers' EMAModel default — so the average follows the weights early on (0.1 at the first
    update, 0.5 at the 8th) instead of keeping decay^n of the initial weights: after the demo's 120 steps at
    0.99 a plain EMA was still 30 % its random initialisation."""
    if not warmup:
        return jnp.float32(decay)
    n = jnp.asarray(updates_before, jnp.float32)
    return jnp.minimum(jnp.float32(decay), (1.0 + n) / (10.0 + n))


def ema_update(ema: dict, params: dict, decay) -> dict:
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def tree_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def to_numpy(tree):
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)
