"""Orbax checkpoints of a training run: train state (trainable parameters, optimizer, EMA, step),
frozen parameters, and every host's data-iterator position; keep-N, asynchronous.

A checkpoint step appears only when complete (Orbax writes to a temporary directory and renames), so
a run killed mid-save resumes from the previous one. Restoring goes onto an abstract target that
carries the shardings, so arrays come back already placed on the mesh. The resolved config is kept
beside the checkpoints (config.json); resuming with a config whose model or trainable set differs is
refused with the differing keys named.
"""
from __future__ import annotations

import json
import jax
import orbax.checkpoint as ocp

from mvd_jax import storage
from mvd_jax.errors import UserError

CONFIG_NAME = "config.json"
# Settings that change the shapes or meaning of the saved state; the rest (steps, logging, LR…) may change.
_STRUCTURAL = ("model", "frames", "height", "width")
_STRUCTURAL_TRAIN = ("trainable",)
_STRUCTURAL_CLOCKWORK = ("kind", "cut_level", "channels", "num_res_blocks")  # train.phase "clockwork"


class CheckpointManager:
    def __init__(self, directory, keep: int = 3):
        self.directory = storage.path(directory)  # local or gs://
        self._mgr = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True, create=True),
            item_names=("state", "data"))

    # ---- config ----------------------------------------------------------------------------
    def check_config(self, cfg):
        path = self.directory / CONFIG_NAME
        if not path.exists() or self._mgr.latest_step() is None:
            return
        saved = json.loads(path.read_text())
        now = json.loads(cfg.to_json())
        diffs = [k for k in _STRUCTURAL if saved.get(k) != now.get(k)]
        diffs += [f"train.{k}" for k in _STRUCTURAL_TRAIN if saved.get("train", {}).get(k) != now["train"].get(k)]
        if now["train"].get("phase") == "clockwork":  # the adaptor's shapes, and whether the state is an adaptor's
            diffs += ["train.phase"] if saved.get("train", {}).get("phase") != "clockwork" else []
            diffs += [f"clockwork.{k}" for k in _STRUCTURAL_CLOCKWORK
                      if saved.get("clockwork", {}).get(k) != now["clockwork"].get(k)]
        if now["train"].get("phase") == "guidance_distill":  # a (student, teacher) state of one model family
            diffs += ["train.phase"] if saved.get("train", {}).get("phase") != "guidance_distill" else []
            diffs += ["guidance.model"] if saved.get("guidance", {}).get("model") != now["guidance"].get("model") else []
        if diffs:
            detail = "; ".join(_describe(k, saved, now) for k in diffs)
            raise UserError(f"the checkpoints in {self.directory} come from an incompatible config ({detail}); "
                            "use a new workdir or the original config")

    def save_config(self, cfg):
        if jax.process_index() == 0:
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = self.directory / (CONFIG_NAME + ".tmp")
            tmp.write_text(cfg.to_json(indent=1))
            tmp.replace(self.directory / CONFIG_NAME)

    # ---- state -----------------------------------------------------------------------------
    def save(self, step: int, state, frozen, data_iterator):
        import grain

        self._mgr.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave({"train": state, "frozen": frozen}),
            data=grain.checkpoint.CheckpointSave(data_iterator)))

    def restore_latest(self, abstract_state, state_shardings, frozen_shardings, data_iterator):
        """(state, frozen) placed on the mesh, with the data iterator moved to the saved position; or None."""
        import grain

        step = self._mgr.latest_step()
        if step is None:
            return None
        abstract_frozen = {k: jax.ShapeDtypeStruct(s.shape, s.dtype) for k, s in
                           _frozen_shapes(frozen_shardings, self, step).items()}
        target = {"train": _with_shardings(abstract_state, state_shardings),
                  "frozen": _with_shardings(abstract_frozen, frozen_shardings)}
        out = self._mgr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), data=grain.checkpoint.CheckpointRestore(data_iterator)))
        return out.state["train"], out.state["frozen"]

    def wait(self):
        self._mgr.wait_until_finished()

    def close(self):
        self._mgr.wait_until_finished()
        self._mgr.close()

    def latest_step(self):
        return self._mgr.latest_step()


def _with_shardings(abstract, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def state_metadata(directory, step: int) -> dict:
    """The saved train-state tree ({"train": …, "frozen": …}) of one checkpoint step as array metadata
    (shape, dtype), read from the files. (A fresh CheckpointManager's `item_metadata` gives None for an
    item until a handler is registered — i.e. exactly when resuming — so it is read directly.)"""
    from absl import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)  # "metadata file does not exist": the step metadata is not needed
    try:
        meta = ocp.StandardCheckpointer().metadata(storage.path(directory) / str(step) / "state")
    finally:
        logging.set_verbosity(verbosity)
    tree = getattr(meta, "item_metadata", meta)
    return jax.tree.map(lambda x: x, dict(tree), is_leaf=lambda x: hasattr(x, "shape"))


def _frozen_shapes(frozen_shardings, manager, step):
    """Shapes of the frozen parameters from the checkpoint's own metadata (they are not trained, so
    the run has no abstract copy of them)."""
    frozen = state_metadata(manager.directory, step).get("frozen", {}) or {}
    missing = sorted(set(frozen_shardings) - set(frozen))
    if missing:
        raise UserError(f"checkpoint step {step} lacks frozen parameters {missing[:3]}… (incompatible config)")
    return {k: frozen[k] for k in frozen_shardings}


def _describe(key, saved, now):
    if key.startswith(("train.", "clockwork.", "guidance.")):
        section, k = key.split(".", 1)
        return f"{key}: checkpoint {saved.get(section, {}).get(k)!r}, config {now[section].get(k)!r}"
    a, b = saved.get(key), now.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        return f"{key}." + ", ".join(f"{k} {a.get(k)!r} → {b.get(k)!r}" for k in keys[:4])
    return f"{key}: checkpoint {a!r}, config {b!r}"
