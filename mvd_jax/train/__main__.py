"""python -m mvd_jax.train --config=configs/X.py[:arg] --workdir=DIR [--config.section.key=value ...]

Runs or resumes training in DIR (checkpoints/, metrics.jsonl, tensorboard/, samples/, bad_videos.tsv).
Multi-host: every process runs the same command with --multihost (TPU pods find their peers
themselves) or with --coordinator_address/--num_processes/--process_id (e.g. CPU processes in tests).
"""
import sys

from absl import app, flags
from ml_collections import config_flags

from mvd_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file("config", None, "training config file (configs/*.py[:arg])",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (resumed if it holds checkpoints)")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "call jax.distributed.initialize() (auto-detected peers)")
_COORD = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (explicit multi-process set-up)")
_NPROC = flags.DEFINE_integer("num_processes", None, "number of processes (with --coordinator_address)")
_PID = flags.DEFINE_integer("process_id", None, "this process's index (with --coordinator_address)")


def main(argv):
    del argv
    import jax
    from absl import logging

    from mvd_jax.compile_cache import enable_persistent_cache

    logging.set_verbosity(logging.WARNING)  # Orbax narrates every save at INFO
    enable_persistent_cache()  # repeated runs and resumes skip recompiling

    if _COORD.value:
        jax.distributed.initialize(_COORD.value, num_processes=_NPROC.value, process_id=_PID.value)
    elif _MULTIHOST.value:
        jax.distributed.initialize()
    from mvd_jax.config import validate
    from mvd_jax.train.trainer import train

    try:
        if _CONFIG.value is None or not _WORKDIR.value:
            raise UserError("--config and --workdir are required")
        validate(_CONFIG.value, source="--config")
        metrics = train(_CONFIG.value, _WORKDIR.value).metrics
    except UserError as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        sys.exit(2)
    if metrics and jax.process_index() == 0:
        print("final: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()
                                    if k in ("loss_avg", "grad_norm", "steps_per_s")))


if __name__ == "__main__":
    app.run(main)
