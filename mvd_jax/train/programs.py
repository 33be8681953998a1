"""What the training phases share: the Programs record the loop runs, the optimizer-state shardings, the
gate keep-count schedule, and the step of the single-model phases (`build_loss_programs`: one loss, AdamW,
EMA, gradient accumulation, non-finite steps skipped).

The diffusion phase (train/trainer.py), the adversarial phase (train/adversarial.py), the tiny decoder's
distillation (train/decoder_distill.py), the autoencoder's training (train/vae_train.py) and the Clockwork
adaptor's distillation (train/clockwork_distill.py) each build a Programs; the trainer picks one by
`train.phase`. They import this module and not each other's internals, so the dependency runs one way:
trainer → phases → programs.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from mvd_jax.train import sharding as shd
from mvd_jax.train.model_state import ParamCodec, ema_decay_at, ema_update, tree_finite


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


def build_loss_programs(cfg, codec: ParamCodec, train_keys: list, mesh, tx, schedule, loss_on, encode,
                        batch_shardings) -> Programs:
    """The step of a phase that trains one model on one loss: `loss_on(trainable, frozen, batch, key, step)
    → (loss, aux dict)`, differentiated with respect to `trainable`; AdamW (`tx`), the EMA, gradient
    accumulation over `train.grad_accum` micro-batches and the non-finite guard around it. The state is
    born and kept sharded like the parameters (logical axes → mesh)."""
    t = cfg.train
    keys = codec.keys
    frozen_keys = [k for k in keys if k not in set(train_keys)]
    shapes = codec.shapes()
    sharding_of = shd.param_shardings(codec, keys, mesh)
    trainable_sh = {k: sharding_of[k] for k in train_keys}
    frozen_sh = {k: sharding_of[k] for k in frozen_keys}
    abstract_opt = jax.eval_shape(tx.init, {k: shapes[k] for k in train_keys})
    opt_sh = opt_state_shardings(abstract_opt, {k: (trainable_sh[k], shapes[k].shape) for k in train_keys}, mesh)
    rep = shd.replicated(mesh)
    state_sh = {"params": trainable_sh, "ema": trainable_sh, "opt_state": opt_sh, "step": rep, "skipped": rep}
    base_key = jax.random.key(t.seed)

    def init_state(trainable):
        # Jitted with out_shardings so Adam's moments are born sharded like the parameters.
        return {"params": trainable, "ema": trainable, "opt_state": tx.init(trainable),
                "step": jnp.zeros((), jnp.int32), "skipped": jnp.zeros((), jnp.int32)}

    init_state = jax.jit(init_state, out_shardings=state_sh)
    grad_fn = jax.value_and_grad(loss_on, has_aux=True)

    def train_step(state, frozen, batch):
        step = state["step"]
        key = jax.random.fold_in(base_key, step)
        if t.grad_accum == 1:
            (loss, aux), grads = grad_fn(state["params"], frozen, batch, key, step)
        else:  # micro-batches in a scan: the summed gradient of equal parts equals the whole batch's
            k = t.grad_accum
            micro = jax.tree.map(lambda x: x.reshape(k, x.shape[0] // k, *x.shape[1:]), batch)

            def body(carry, inp):
                i, mb = inp
                (l, a), g = grad_fn(state["params"], frozen, mb, jax.random.fold_in(key, i), step)
                return jax.tree.map(jnp.add, carry, (l, a, g)), None

            first = jax.tree.map(lambda x: x[0], micro)
            aux_shape = jax.eval_shape(loss_on, state["params"], frozen, first, key, step)[1]
            zero = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype),
                                (jax.ShapeDtypeStruct((), jnp.float32), aux_shape, state["params"]))
            (loss, aux, grads), _ = jax.lax.scan(body, zero, (jnp.arange(k), micro))
            loss, aux, grads = jax.tree.map(lambda x: x / k, (loss, aux, grads))
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        new = {"params": params, "opt_state": opt_state,
               "ema": ema_update(state["ema"], params,
                                 ema_decay_at(cfg.optimizer.ema_decay, step, cfg.optimizer.ema_warmup)),
               "step": step + 1, "skipped": state["skipped"]}
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & tree_finite(params)
        # A non-finite step changes nothing but the step counter (the policy decides on the host).
        new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, {**state, "step": step + 1})
        new["skipped"] = state["skipped"] + (~finite).astype(jnp.int32)
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(step), "finite": finite, **aux}
        return new, metrics

    train_step = jax.jit(train_step, in_shardings=(state_sh, frozen_sh, batch_shardings),
                         out_shardings=(state_sh, rep), donate_argnums=(0,))

    def initial_arrays(model):
        params = codec.to_dict(model)
        return {k: params[k] for k in train_keys}, {k: params[k] for k in frozen_keys}

    return Programs(codec, train_keys, frozen_keys, init_state, train_step, encode, state_sh, frozen_sh, schedule,
                    abstract_trainable={k: shapes[k] for k in train_keys},
                    abstract_frozen={k: shapes[k] for k in frozen_keys}, initial_arrays=initial_arrays,
                    trainable_shardings=trainable_sh,
                    compiler_options=shd.step_compiler_options(mesh, t.tpu_collective_matmul))
