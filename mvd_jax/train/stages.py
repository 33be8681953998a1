"""One training stage initialised from the previous one: `--config.init_from=RUN_DIR`.

MobileVD is trained in stages (paper §2, "Pipeline order"): low-resolution finetune → adversarial
finetune → temporal multiscaling → gate learning + pruning → channel funnels → export. Each stage is a
trainer run whose config names the previous run's workdir in `init_from`; the UNet of that run's latest
checkpoint (its EMA weights unless `init_ema=False`) is carried into the new stage's architecture by the
transitions below. Anything else that differs is refused with the differing keys named — the weights
would not mean what the new config says.

    source → target                         what happens
    same architecture                       weights copied
    collapse / multiscale switched          no parameters involved (to_q/to_k stay, unused when collapsed)
    no gates → gates                        gate parameters start fresh (logits 0 / scales 1)
    gates → no gates, prune_from_gates      the blocks the gates drop are removed: the top `gate_keep`
                                            blocks by importance stay (models/gates.py), `gate_keep`
                                            taken from the source run's config
    more pruned blocks named in the target  those blocks are removed too
    no funnels → funnels (unmerged)         coupled singular initialisation (models/funnels.py)
    funnels → funnels merged                folded into the weights, exactly (models/funnels.merge_funnels)

The target's `pruned_temporal_blocks` under `prune_from_gates` is computed here from the source's gate
logits and written into the resolved config (and so into the new run's config.json).
"""
from __future__ import annotations

import dataclasses
import json

import jax
import ml_collections
import numpy as np
from flax import nnx

from mvd_jax import storage
from mvd_jax.settings import unet_config
from mvd_jax.errors import UserError

# Config fields a transition may change; every other UNet field must match between the stages.
_ARCHITECTURE_FLAGS = ("collapse_cross_attention", "temporal_multiscale", "spatial_multiscale", "temporal_gating",
                       "pruned_temporal_blocks", "funnel_factor", "funnel_target", "funnels_merged", "num_frames")


def is_run_dir(path) -> bool:
    """True for a trainer workdir (it has checkpoints/config.json), false for an SVD diffusers folder."""
    return bool(path) and (storage.path(path) / "checkpoints" / "config.json").is_file()


def read_run_config(run_dir) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(json.loads((storage.path(run_dir) / "checkpoints" / "config.json").read_text()))


def read_run_params(run_dir, *, use_ema: bool = True) -> tuple[dict, ml_collections.ConfigDict, int]:
    """(the latest checkpoint's parameters — trained (EMA or raw) and frozen — as host NumPy arrays by flat
    key, the run's resolved config, the step)."""
    import orbax.checkpoint as ocp

    from mvd_jax.train.checkpoint import state_metadata

    from absl import logging

    cfg = read_run_config(run_dir)
    directory = storage.path(run_dir) / "checkpoints"
    mgr = ocp.CheckpointManager(directory, item_names=("state", "data"))
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)  # Orbax warns about the data item, which is not needed here
    try:
        step = mgr.latest_step()
        if step is None:
            raise UserError(f"{run_dir} has a config but no finished checkpoint to start the next stage from")
        meta = state_metadata(directory, step)
        # Restored as host NumPy arrays: the source run's mesh (maybe 256 chips) need not exist here.
        args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta,
                            is_leaf=lambda x: hasattr(x, "shape"))
        state = mgr.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item=meta, restore_args=args))).state
    finally:
        mgr.close()
        logging.set_verbosity(verbosity)
    trained = state["train"]["ema" if use_ema else "params"]
    return {**state["frozen"], **trained}, cfg, step


def module_from_params(codec, params: dict, run_dir):
    missing = sorted(set(codec.keys) - set(params))
    if missing:
        raise UserError(f"the checkpoint of {run_dir} lacks parameters {missing[:3]} of its own config")
    return codec.merge({k: np.asarray(params[k]) for k in codec.keys})


def read_run_unet(run_dir, *, use_ema: bool = True):
    """(the run's UNet with its latest checkpoint's weights, the run's resolved config, the step)."""
    from mvd_jax.train.model_state import ParamCodec, build_unet

    from mvd_jax.settings import edits_images

    cfg = read_run_config(run_dir)
    if cfg.train.phase == "decoder_distill":
        raise UserError(f"{run_dir} trained a tiny autoencoder (train.phase decoder_distill), not a UNet")
    if edits_images(cfg):
        raise UserError(f"{run_dir} trained MoViE's image-editing UNet (train.phase {cfg.train.phase}), not a video "
                        "UNet (python -m mvd_jax.edit reads those)")
    params, cfg, step = read_run_params(run_dir, use_ema=use_ema)
    source_cfg = dataclasses.replace(unet_config(cfg), num_frames=cfg.frames)
    if cfg.train.phase == "guidance_distill":  # the run's own UNet is the student, which reads the guidance scale
        from mvd_jax.train.guidance_distill import SVD_SCALES

        source_cfg = dataclasses.replace(source_cfg, guidance_scales=SVD_SCALES)
    codec = ParamCodec(nnx.eval_shape(lambda: build_unet(source_cfg, 0)))
    return module_from_params(codec, params, run_dir), cfg, step


def learned_pruning(unet, keep: int) -> tuple[str, ...]:
    """The temporal blocks a gated UNet's importances drop when its top `keep` live blocks stay
    (importance: the logits q for "sampled" gates, |g| for the L1 baseline; ties go to the earlier block)."""
    from mvd_jax.models.gates import temporal_block_names

    c = unet.config
    if c.temporal_gating is None:
        raise UserError("prune_from_gates needs a source run trained with temporal_gating set")
    names = temporal_block_names(c)
    gates = unet.temporal_gates
    scores = np.asarray(gates.logits[...] if c.temporal_gating == "sampled" else np.abs(gates.scales[...]))
    live = [i for i, name in enumerate(names) if name not in set(c.pruned_temporal_blocks)]
    if not 0 < keep <= len(live):
        raise UserError(f"the source run's train.gate_keep={keep} is not in 1..{len(live)} (its live temporal blocks)")
    kept = set(sorted(live, key=lambda i: (-scores[i], i))[:keep])
    return tuple(sorted({names[i] for i in live if i not in kept} | set(c.pruned_temporal_blocks)))


def resolve_stage(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config with `model.pruned_temporal_blocks` filled in when `prune_from_gates` asks for it."""
    if not cfg.get("prune_from_gates", False):
        return cfg
    if not is_run_dir(cfg.init_from):
        raise UserError("prune_from_gates needs init_from to name a gate-learning run's workdir")
    source, source_cfg, _ = read_run_unet(cfg.init_from, use_ema=cfg.get("init_ema", True))
    target = unet_config(cfg)
    if target.temporal_gating is not None:
        raise UserError("prune_from_gates ends gate learning: the new stage's model.temporal_gating must be None")
    pruned = tuple(sorted(set(learned_pruning(source, int(source_cfg.train.gate_keep)))
                          | set(target.pruned_temporal_blocks)))
    out = ml_collections.ConfigDict(cfg.to_dict())
    out.model.pruned_temporal_blocks = list(pruned)
    return out


def carry_unet(source, target_config, *, prune_from_gates: bool = False, gate_keep: int = 0):
    """The source stage's UNet in the target stage's architecture (see the module table)."""
    from mvd_jax.convert.diffusers_unet import unet_from_tensors, unet_to_tensors
    from mvd_jax.models.funnels import add_funnels, merge_funnels
    from mvd_jax.models.gates import prune_temporal_blocks

    s, t = source.config, target_config
    different = [f.name for f in dataclasses.fields(s)
                 if f.name not in _ARCHITECTURE_FLAGS and getattr(s, f.name) != getattr(t, f.name)]
    if different:
        raise UserError("the previous stage's UNet differs from this stage's beyond MobileVD's switches: "
                        + ", ".join(f"{k} {getattr(s, k)!r} → {getattr(t, k)!r}" for k in different[:4]))
    unet = source
    # 1. gates end: physically remove what they dropped
    if s.temporal_gating is not None and t.temporal_gating is None:
        if not prune_from_gates:
            raise UserError("the previous stage learned temporal gates and this one has none: set "
                            "prune_from_gates=True to remove the blocks they dropped (or keep temporal_gating)")
        unet = prune_temporal_blocks(unet, names=learned_pruning(unet, gate_keep))
    elif s.temporal_gating is not None and s.temporal_gating != t.temporal_gating:
        raise UserError(f"temporal_gating {s.temporal_gating!r} → {t.temporal_gating!r} is not a stage transition")
    # 2. blocks the target removes in addition
    have = set(unet.config.pruned_temporal_blocks)
    want = set(t.pruned_temporal_blocks)
    if have - want:
        raise UserError(f"the previous stage already removed temporal blocks this config keeps: {sorted(have - want)[:3]}")
    if want - have:
        if unet.config.temporal_gating is not None:
            raise UserError("naming extra pruned blocks while gates are being learned is ambiguous; prune first")
        unet = prune_temporal_blocks(unet, names=sorted(want - have))
    # 3. funnels
    if unet.config.funnel_factor is not None:
        if (t.funnel_factor, t.funnel_target) != (unet.config.funnel_factor, unet.config.funnel_target):
            raise UserError(f"funnels {unet.config.funnel_factor}/{unet.config.funnel_target} → "
                            f"{t.funnel_factor}/{t.funnel_target}: funnels cannot be removed or resized")
        if t.funnels_merged and not unet.config.funnels_merged:
            unet = merge_funnels(unet)
        elif unet.config.funnels_merged and not t.funnels_merged:
            raise UserError("merged funnels cannot be split again")
    elif t.funnel_factor is not None:
        if t.funnels_merged:
            raise UserError("funnels start unmerged (trained), then merge in a later stage or at export")
        unet = add_funnels(unet, t.funnel_factor, init="csi", target=t.funnel_target)
    # 4. switches without parameters, and fresh gates if this stage learns them
    tensors = unet_to_tensors(unet)
    return unet_from_tensors(tensors, t, source="previous stage")


def init_unet_from_run(cfg, target_config):
    """The UNet a stage starts from: the `init_from` run carried into `target_config`."""
    source, source_cfg, step = read_run_unet(cfg.init_from, use_ema=cfg.get("init_ema", True))
    return carry_unet(source, target_config, prune_from_gates=cfg.get("prune_from_gates", False),
                      gate_keep=int(source_cfg.train.gate_keep)), step
