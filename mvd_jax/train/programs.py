"""What the two training phases share: the Programs record the loop runs, the optimizer-state shardings,
and the gate keep-count schedule.

The diffusion phase (train/trainer.py) and the adversarial phase (train/adversarial.py) each build a
Programs; the trainer picks one by `train.phase`. Both import this module and neither imports the
other's internals, so the dependency runs one way: trainer → adversarial → programs.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mvd_jax.train import sharding as shd
from mvd_jax.train.model_state import ParamCodec


@dataclasses.dataclass
class Programs:
    codec: ParamCodec
    train_keys: list
    frozen_keys: list
    init_state: object  # jitted: (trainable, ) → state
    train_step: object  # jitted: (state, frozen, batch) → (state, metrics)
    encode: object  # jitted: (encoders, raw batch, step) → batch, or None for cached data
    state_shardings: dict
    frozen_shardings: dict
    schedule: object
    abstract_trainable: object = None  # what init_state takes, as ShapeDtypeStructs
    abstract_frozen: dict = None  # the frozen dict, as ShapeDtypeStructs
    initial_arrays: object = None  # starting UNet → (init_state's argument, frozen dict), host arrays
    trainable_shardings: object = None  # where init_state's argument lives
    # XLA options train_step is compiled with (`train_step.lower(...).compile(compiler_options)`; jit itself
    # takes none, so the step stays traceable by make_jaxpr): sharding.step_compiler_options
    compiler_options: dict = dataclasses.field(default_factory=dict)


def opt_state_shardings(abstract_opt_state, param_shardings: dict, mesh):
    """Optimizer leaves that mirror a parameter (Adam's mu, nu) take its sharding; the rest (counts)
    are replicated."""
    def one(path, leaf):
        for entry in path:
            key = getattr(entry, "key", None)
            if key in param_shardings and tuple(leaf.shape) == tuple(param_shardings[key][1]):
                return param_shardings[key][0]
        return shd.replicated(mesh)

    return jax.tree_util.tree_map_with_path(one, abstract_opt_state)


def gate_keep_at(t, step):
    """Temporal blocks kept by the sampled gates at `step`: gate_keep, or the linear schedule from
    gate_keep_start down to it over gate_anneal_steps (a traced int32 inside the step)."""
    if not t.gate_keep_start:
        return t.gate_keep
    frac = jnp.minimum(1.0, step.astype(jnp.float32) / t.gate_anneal_steps)
    return jnp.round(t.gate_keep_start + frac * (t.gate_keep - t.gate_keep_start)).astype(jnp.int32)
