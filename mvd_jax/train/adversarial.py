"""The adversarial phase (MobileVD §2(f), following SF-V): finetune the UNet to ONE denoising step.

Same trainer, same loop, checkpoints and shardings as the diffusion phase (`train.phase=adversarial`);
only the programs differ. Per step, for a batch of real latents x0 (cond. latent, image embedding,
added time ids from the data):

    generator    σ ~ U{σ_1, σ_2, σ_3}   (Karras, T_g = 4: ≈ 2.27, 70.5, 700)
                 x̂0 = G(x0 + σε; σ)     (EDM-preconditioned UNet, one evaluation)
    re-noising   σ′ ~ discretised log-normal over 1000 Karras levels (P_mean −1, P_std 1)
                 real′ = x0 + σ′ε′,  fake′ = x̂0 + σ′ε″   (the same σ′ and independent noise)
    D update     L_D = hinge(D(real′), D(sg(fake′))) + γ·R1(real′)       → the heads only
    G update     L_G = E[D(fake′)] + λ·pseudo-Huber(x̂0, x0), D = the UPDATED heads → G's trainable set

Update order — alternating inside one jitted step: D first, then G against the new D (SF-V and
MoViE alternate D and G). G's forward runs once: its VJP is kept, D's updates use the detached
sample, and the gradient of L_G with respect to x̂0 is pulled back through that VJP. The
discriminator's backbone is a copy of the UNet the phase starts from (the previous stage's weights),
held with the frozen parameters: never differentiated, no optimizer state, checkpointed once.

State: params / ema / opt_state (the generator, as in the diffusion phase), d_params / d_opt_state (the
heads), step, skipped. Optimizers: `adversarial.optimizer` "adam" (AdamW with the phase's own
learning rates and β) or "sm3" (SF-V), each after global-norm clipping and the shared warm-up.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from mvd_jax.diffusion import edm
from mvd_jax.errors import UserError
from mvd_jax.models import attention_kernel
from mvd_jax.train import adversarial_loss as adv
from mvd_jax.train import sharding as shd
from mvd_jax.train.model_state import ParamCodec, ema_decay_at, learning_rate_schedule, ema_update, trainable_keys, tree_finite
from mvd_jax.train.programs import Programs, gate_keep_at, opt_state_shardings

DISCRIMINATOR_PREFIX = "discriminator/"  # D's frozen backbone keys in the frozen dict


def make_phase_optimizer(cfg, learning_rate: float):
    """Global-norm clipping, then Adam(W) or SM3 on the shared schedule (warm-up, optional decay) peaking at
    `learning_rate`."""
    opt, a = cfg.optimizer, cfg.adversarial
    schedule = learning_rate_schedule(opt, learning_rate)
    if a.optimizer == "adam":
        core = optax.adamw(schedule, b1=a.b1, b2=a.b2, eps=opt.eps, weight_decay=opt.weight_decay)
    elif a.optimizer == "sm3":
        core = optax.sm3(schedule, momentum=a.b1)
    else:
        raise UserError(f"adversarial.optimizer must be 'adam' or 'sm3', got {a.optimizer!r}")
    clip = optax.clip_by_global_norm(opt.clip_norm) if opt.clip_norm else optax.identity()
    return optax.chain(clip, core), schedule


def build_adversarial_programs(cfg, unet_abstract, mesh, encode):
    """The Programs of the adversarial phase (train/programs.py)."""
    from mvd_jax.models.discriminator import abstract_discriminator, discriminator_from_unet

    t, a = cfg.train, cfg.adversarial
    codec = ParamCodec(unet_abstract)
    # "none": the generator stays fixed and only D learns (e.g. to check D can tell real from generated)
    g_keys = [] if t.trainable == "none" else trainable_keys(codec.keys, t.trainable)
    g_frozen_keys = [k for k in codec.keys if k not in set(g_keys)]
    d_config = ml_collections.ConfigDict(a.discriminator).to_dict()
    dcodec = ParamCodec(abstract_discriminator(unet_abstract.config, d_config))
    head_keys = [k for k in dcodec.keys if k.startswith("heads/")]
    backbone_keys = [k for k in dcodec.keys if not k.startswith("heads/")]

    g_sh, d_sh = shd.param_shardings(codec, g_keys, mesh), shd.param_shardings(dcodec, head_keys, mesh)
    frozen_sh = {**shd.param_shardings(codec, g_frozen_keys, mesh),
                 **shd.param_shardings(dcodec, backbone_keys, mesh, prefix=DISCRIMINATOR_PREFIX)}
    g_shapes = {k: codec.shapes()[k] for k in g_keys}
    d_shapes = {k: dcodec.shapes()[k] for k in head_keys}
    frozen_shapes = {**{k: codec.shapes()[k] for k in g_frozen_keys},
                     **{DISCRIMINATOR_PREFIX + k: dcodec.shapes()[k] for k in backbone_keys}}

    tx_g, schedule = make_phase_optimizer(cfg, a.g_learning_rate)
    tx_d, _ = make_phase_optimizer(cfg, a.d_learning_rate)
    rep = shd.replicated(mesh)
    g_opt_sh = opt_state_shardings(jax.eval_shape(tx_g.init, g_shapes), {k: (g_sh[k], g_shapes[k].shape) for k in g_keys},
                                   mesh)
    d_opt_sh = opt_state_shardings(jax.eval_shape(tx_d.init, d_shapes), {k: (d_sh[k], d_shapes[k].shape)
                                                                        for k in head_keys}, mesh)
    state_sh = {"params": g_sh, "ema": g_sh, "opt_state": g_opt_sh, "d_params": d_sh, "d_opt_state": d_opt_sh,
                "step": rep, "skipped": rep}
    dtype = jnp.bfloat16 if t.dtype == "bfloat16" else jnp.float32
    base_key = jax.random.key(t.seed)
    gen_sigmas = jnp.asarray(adv.generator_sigmas(a.generator_levels), jnp.float32)
    # G's attention is the target's (the TPU kernel, cuDNN); D's is differentiated twice (R1 penalty inside
    # D's loss), which those kernels cannot: D keeps XLA's form there (models/attention_kernel.py)
    g_form = attention_kernel.form_for_mesh(t.attention, mesh)
    d_form = g_form.for_second_derivatives()

    def init_state(trainable):
        g, d = trainable["generator"], trainable["discriminator"]
        return {"params": g, "ema": g, "opt_state": tx_g.init(g), "d_params": d, "d_opt_state": tx_d.init(d),
                "step": jnp.zeros((), jnp.int32), "skipped": jnp.zeros((), jnp.int32)}

    init_state = jax.jit(init_state, out_shardings=state_sh)

    def initial_arrays(unet):
        """Generator arrays from the starting UNet; D's backbone copied from the same UNet, heads fresh."""
        params = codec.to_dict(unet)
        disc = dcodec.to_dict(discriminator_from_unet(unet, d_config, seed=t.seed + 17))
        trainable = {"generator": {k: params[k] for k in g_keys}, "discriminator": {k: disc[k] for k in head_keys}}
        frozen = {**{k: params[k] for k in g_frozen_keys}, **{DISCRIMINATOR_PREFIX + k: disc[k] for k in backbone_keys}}
        return trainable, frozen

    def train_step(state, frozen, batch):
        step = state["step"]
        keys = jax.random.split(jax.random.fold_in(base_key, step), 6)
        x0 = batch["latents"].astype(jnp.float32)
        b, frames = x0.shape[:2]
        cond = jnp.repeat(batch["cond_latent"][:, None], frames, axis=1)
        embeds, ids = batch["image_embeds"], batch["added_time_ids"]
        g_frozen = {k: frozen[k] for k in g_frozen_keys}
        backbone = {k: frozen[DISCRIMINATOR_PREFIX + k] for k in backbone_keys}

        # generator: one evaluation at σ ∈ {σ_1, σ_2, σ_3}; its VJP is kept for G's update
        sigma = gen_sigmas[jax.random.randint(keys[0], (b,), 0, gen_sigmas.shape[0])]
        noisy = x0 + sigma.reshape(b, 1, 1, 1, 1) * jax.random.normal(keys[1], x0.shape)

        def generate(g_params):
            """(x̂0, gate penalty): temporal gates are sampled (or the L1 baseline's scales used) exactly as
            in the diffusion phase, so the gate-learning stage learns under this objective."""
            unet = codec.merge({**g_frozen, **g_params})
            unet.remat = t.remat
            attention_kernel.set_form(unet, g_form)
            gates, penalty = None, jnp.float32(0.0)
            if unet.config.temporal_gating == "sampled":
                gates = unet.temporal_gates.sample(keys[5], gate_keep_at(t, step))
            elif unet.config.temporal_gating == "l1":
                gates = unet.temporal_gates.continuous()
                penalty = t.l1_weight * unet.temporal_gates.l1_penalty()

            def model_fn(x, c_noise, context, added):
                out = unet(x.astype(dtype), c_noise, context.astype(dtype), added, temporal_gates=gates)
                return out.astype(jnp.float32)

            return edm.denoise(model_fn, noisy, sigma, cond, embeds, ids), penalty

        (fake, gate_penalty), g_vjp = jax.vjp(generate, state["params"])

        # the discriminator sees real and fake re-noised at the same σ′
        sigma_d = adv.sample_discriminator_sigmas(keys[2], (b,), a.d_levels, a.d_p_mean, a.d_p_std)
        s_d = sigma_d.reshape(b, 1, 1, 1, 1)
        real_noisy = x0 + s_d * jax.random.normal(keys[3], x0.shape)
        fake_eps = jax.random.normal(keys[4], x0.shape)

        def discriminate(heads, x):
            disc = attention_kernel.set_form(dcodec.merge({**backbone, **heads}), d_form)
            disc.backbone.remat = t.remat  # its layers recomputed in the backward pass too (R1, G's gradient)
            out = disc(x.astype(dtype), sigma_d, cond.astype(dtype), embeds.astype(dtype), ids)
            return out.logits.astype(jnp.float32), out.heads

        def d_loss_fn(heads):
            r1, (real_scores, real_heads) = adv.r1_penalty(lambda x: discriminate(heads, x), real_noisy,
                                                           a.r1_gamma, has_aux=True)
            fake_scores, fake_heads = discriminate(heads, jax.lax.stop_gradient(fake) + s_d * fake_eps)
            loss, parts = adv.discriminator_loss(real_heads, fake_heads, r1)
            # D is right when it scores real below 0 and fake above (SF-V's sign convention)
            parts["accuracy"] = 0.5 * (jnp.mean(real_scores < 0) + jnp.mean(fake_scores > 0))
            return loss, parts

        (d_loss, d_aux), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(state["d_params"])
        d_updates, d_opt_state = tx_d.update(d_grads, state["d_opt_state"], state["d_params"])
        d_params = optax.apply_updates(state["d_params"], d_updates)

        def g_loss_of_sample(sample):
            _, fake_heads = discriminate(d_params, sample + s_d * fake_eps)
            return adv.generator_loss(fake_heads, sample, x0, a.recon_weight, a.huber_c or None,
                                      a.adversarial_weight)

        (g_loss, g_aux), d_sample = jax.value_and_grad(g_loss_of_sample, has_aux=True)(fake)
        (g_grads,) = g_vjp((d_sample, jnp.ones_like(gate_penalty)))  # L_G + penalty, pulled back through G
        g_loss = g_loss + gate_penalty
        g_updates, opt_state = tx_g.update(g_grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], g_updates)

        grad_norm, d_grad_norm = optax.tree.norm(g_grads), optax.tree.norm(d_grads)
        g_updates_before = jnp.maximum(step - a.d_warmup_steps, 0)  # G's EMA is held during D's warm-up
        ema_decay = ema_decay_at(cfg.optimizer.ema_decay, g_updates_before, cfg.optimizer.ema_warmup)
        new = {"params": params, "ema": ema_update(state["ema"], params, ema_decay),
               "opt_state": opt_state, "d_params": d_params, "d_opt_state": d_opt_state,
               "step": step + 1, "skipped": state["skipped"]}
        # D warm-up: for the first d_warmup_steps G, its EMA and its optimizer state stay as they are (its
        # schedule and Adam moments start when it starts), so G first trains against a D that can judge
        g_on = step >= a.d_warmup_steps
        for key in ("params", "ema", "opt_state"):
            new[key] = jax.tree.map(lambda n, o: jnp.where(g_on, n, o), new[key], state[key])
        finite = (jnp.isfinite(g_loss) & jnp.isfinite(d_loss) & jnp.isfinite(grad_norm) & jnp.isfinite(d_grad_norm)
                  & tree_finite(params) & tree_finite(d_params))
        new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, {**state, "step": step + 1})
        new["skipped"] = state["skipped"] + (~finite).astype(jnp.int32)
        g_lr = jnp.where(g_on, schedule(jnp.maximum(step - a.d_warmup_steps, 0)), 0.0)  # G's schedule starts late
        metrics = {"loss": g_loss, "grad_norm": grad_norm, "lr": g_lr, "finite": finite,
                   "d_loss": d_loss, "d_grad_norm": d_grad_norm, "hinge": d_aux["hinge"], "r1": d_aux["r1"], "d_accuracy": d_aux["accuracy"],
                   "g_adversarial": g_aux["adversarial"], "reconstruction": g_aux["reconstruction"],
                   "sigma_mean": jnp.mean(sigma)}
        return new, metrics

    batch_sh = shd.model_batch_shardings(mesh)
    train_step = jax.jit(train_step, in_shardings=(state_sh, frozen_sh, batch_sh), out_shardings=(state_sh, rep),
                         donate_argnums=(0,))
    return Programs(codec=codec, train_keys=g_keys, frozen_keys=list(frozen_shapes), init_state=init_state,
                    train_step=train_step, encode=encode, state_shardings=state_sh, frozen_shardings=frozen_sh,
                    schedule=schedule, abstract_trainable={"generator": g_shapes, "discriminator": d_shapes},
                    abstract_frozen=frozen_shapes, initial_arrays=initial_arrays,
                    trainable_shardings={"generator": g_sh, "discriminator": d_sh},
                    compiler_options=shd.step_compiler_options(mesh, t.tpu_collective_matmul))
