"""Stage → stage initialisation (train/stages.py): gates → pruned blocks, funnels added / merged,
refusals; and the pipeline through the trainer: a gate-learning run, then a pruning stage started from
it by one config field (`init_from` + `prune_from_gates`)."""
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import oracle
from mvd_jax.settings import load_config, unet_config
from mvd_jax.convert.diffusers_unet import unet_to_tensors
from mvd_jax.errors import UserError
from mvd_jax.models.funnels import add_funnels, merge_funnels
from mvd_jax.models.gates import temporal_block_names, top_n_gates
from mvd_jax.train.model_state import build_unet
from mvd_jax.train.stages import carry_unet, learned_pruning, read_run_unet

ROOT = Path(__file__).resolve().parents[1]


def demo_unet_config(**options):
    cfg = load_config(str(ROOT / "configs" / "demo.py") + ":tiny")
    return dataclasses.replace(unet_config(cfg), num_frames=cfg.frames, **options)


def forward(model, seed=0, gates=None, frames=4):
    c = model.config
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((2, frames, 8, 16, c.in_channels)), jnp.float32)
    ctx = jnp.asarray(rng.standard_normal((2, 1, c.context_dims[0])), jnp.float32)
    ids = jnp.asarray(rng.uniform(0, 10, (2, c.num_added_time_ids)), jnp.float32)
    return np.asarray(nnx.jit(lambda m, *a: m(*a, temporal_gates=gates))(model, x, jnp.asarray([0.3, -0.7]), ctx, ids))


def test_gates_end_in_the_blocks_they_keep():
    source = build_unet(demo_unet_config(temporal_gating="sampled"), seed=1)
    names = temporal_block_names(source.config)
    logits = np.random.default_rng(2).standard_normal(len(names)).astype(np.float32)
    source.temporal_gates.logits[...] = jnp.asarray(logits)
    keep = 3
    target = demo_unet_config()  # no gates: the pruning stage
    with pytest.raises(UserError, match="prune_from_gates"):
        carry_unet(source, target)
    pruned = carry_unet(source, dataclasses.replace(target, pruned_temporal_blocks=learned_pruning(source, keep)),
                        prune_from_gates=True, gate_keep=keep)
    expected_dropped = sorted(names[i] for i in np.argsort(-logits)[keep:])
    assert sorted(pruned.config.pruned_temporal_blocks) == expected_dropped
    assert pruned.temporal_gates is None
    # the pruned model computes what the gated one computes with its top-`keep` gates
    gates = top_n_gates(jnp.asarray(logits), keep)
    assert oracle.rel_l2(forward(pruned), forward(source, gates=gates)) <= 3e-6


def test_funnels_start_from_csi_and_merge_exactly():
    plain = build_unet(demo_unet_config(), seed=3)
    funneled = carry_unet(plain, demo_unet_config(funnel_factor=0.5))
    reference = add_funnels(plain, 0.5, init="csi")
    a, b = unet_to_tensors(funneled), unet_to_tensors(reference)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    merged = carry_unet(funneled, demo_unet_config(funnel_factor=0.5, funnels_merged=True))
    assert merged.config.funnels_merged
    m, ref = unet_to_tensors(merged), unet_to_tensors(merge_funnels(funneled))
    assert all(np.array_equal(m[k], ref[k]) for k in ref)
    assert oracle.rel_l2(forward(merged), forward(funneled)) <= 3e-6


def test_multiscale_and_collapse_switch_without_touching_weights():
    source = build_unet(demo_unet_config(temporal_multiscale=False, collapse_cross_attention=False), seed=4)
    target = carry_unet(source, demo_unet_config(temporal_multiscale=True, collapse_cross_attention=True))
    a, b = unet_to_tensors(source), unet_to_tensors(target)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert target.config.temporal_multiscale and target.config.collapse_cross_attention


def test_impossible_transitions_are_refused():
    source = build_unet(demo_unet_config(), seed=5)
    with pytest.raises(UserError, match="block_out_channels"):
        carry_unet(source, demo_unet_config(block_out_channels=(32, 64)))
    with pytest.raises(UserError, match="start unmerged"):
        carry_unet(source, demo_unet_config(funnel_factor=0.5, funnels_merged=True))
    pruned = carry_unet(source, demo_unet_config(pruned_temporal_blocks=temporal_block_names(source.config)[:2]))
    with pytest.raises(UserError, match="already removed"):
        carry_unet(pruned, demo_unet_config())


# ---- through the trainer ---------------------------------------------------------------------
def run(workdir, *overrides, env):
    args = [sys.executable, "-m", "mvd_jax.train", f"--config={ROOT / 'configs' / 'demo.py'}:micro",
            f"--workdir={workdir}", "--config.train.sample_at_end=False", "--config.train.log_every=1", *overrides]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_gate_learning_then_pruning_stage(env, tmp_path):
    gates_run = tmp_path / "gates"
    run(gates_run, "--config.model.temporal_gating=sampled", "--config.train.gate_keep=3",
        "--config.train.gate_keep_start=5", "--config.train.gate_anneal_steps=2", "--config.train.steps=3",
        "--config.train.trainable=all", "--config.optimizer.learning_rate=0.5", "--config.optimizer.warmup_steps=1",
        env=env)
    source, source_cfg, step = read_run_unet(gates_run)
    assert step == 3 and source_cfg.train.gate_keep == 3
    logits = np.asarray(source.temporal_gates.logits[...])
    assert np.ptp(logits) > 0, "the gate importances did not train"

    # the next stage: one config field names the previous run; lr 0 keeps its starting weights visible
    pruned_run = tmp_path / "pruned"
    proc = run(pruned_run, f"--config.init_from={gates_run}", "--config.prune_from_gates=True",
               "--config.train.steps=1", "--config.optimizer.learning_rate=0.0", env=env)
    assert "initialised from" in proc.stdout
    saved = json.loads((pruned_run / "checkpoints" / "config.json").read_text())
    assert sorted(saved["model"]["pruned_temporal_blocks"]) == sorted(learned_pruning(source, 3))
    assert len(saved["model"]["pruned_temporal_blocks"]) == len(temporal_block_names(source.config)) - 3
    started, _, _ = read_run_unet(pruned_run, use_ema=False)
    expected = carry_unet(source, started.config, prune_from_gates=True, gate_keep=3)
    a, b = unet_to_tensors(started), unet_to_tensors(expected)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert not any("temporal_gates" in k for k in a)


def test_paper_stage_configs_chain_by_init_from():
    """configs/stages/mobilevd.py: each stage names the previous stage's run and changes only what its
    stage adds, so carry_unet accepts every hand-over (checked on the configs, no weights needed)."""
    from mvd_jax.settings import resolve

    stages = ["lowres", "adversarial", "multiscale", "gates", "pruned", "funnels"]
    configs = {s: resolve(load_config(str(ROOT / "configs" / "stages" / "mobilevd.py") + ":" + s)) for s in stages}
    assert configs["lowres"].train.phase == "diffusion" and configs["lowres"].init_from == ""
    for prev, stage in zip(stages, stages[1:]):
        c = configs[stage]
        assert c.train.phase == "adversarial" and c.init_from == f"runs/mobilevd/{prev}", stage
        assert c.train.sample_steps == 1
        before, after = unet_config(configs[prev]), unet_config(c)
        changed = {f.name for f in dataclasses.fields(before) if getattr(before, f.name) != getattr(after, f.name)}
        assert changed <= {"temporal_multiscale", "temporal_gating", "funnel_factor"}, (stage, changed)
    assert configs["pruned"].prune_from_gates and unet_config(configs["gates"]).temporal_gating == "sampled"
    assert configs["gates"].train.gate_keep == 11
    with pytest.raises(ValueError, match="one of"):
        load_config(str(ROOT / "configs" / "stages" / "mobilevd.py") + ":bogus")
