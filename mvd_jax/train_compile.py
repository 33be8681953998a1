"""python -m mvd_jax.train_compile --config=configs/X.py[:arg] --topology=cpu:8 [--config.a.b=v ...] [--out F.json]

Compiles the trainer's real train step for a set of devices without running it and prints what each
device would hold (arguments, temporaries, outputs, total) and the step's FLOPs (train/aot.py).

--topology  cpu:N   N simulated CPU devices on this host (the default: cpu:1)

Example (the README's scaling section): the full SVD UNet at 14×512×256 on an 8-way FSDP mesh with
rematerialisation:

    python -m mvd_jax.train_compile --config=configs/paper/svd_512x256.py --topology=cpu:8 \\
        --config.mesh.data=1 --config.mesh.fsdp=8 --config.train.batch_size=8 --config.train.remat=True
"""
import json
import sys

from absl import app, flags
from ml_collections import config_flags

from mvd_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file("config", None, "training config file (configs/*.py[:arg])",
                                          lock_config=True)
_TOPOLOGY = flags.DEFINE_string("topology", "cpu:1", "cpu:N (simulated CPU devices)")
_OUT = flags.DEFINE_string("out", None, "also write the report as JSON here")


def cpu_device_count(topology: str) -> int:
    kind, _, n = topology.partition(":")
    if kind != "cpu" or not n.isdigit() or int(n) < 1:
        raise UserError(f"--topology must be cpu:N (N ≥ 1), got {topology!r}")
    return int(n)


def main(argv):
    del argv
    try:
        n = cpu_device_count(_TOPOLOGY.value)
        import jax

        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_num_cpu_devices", n)  # before the backend starts
        from mvd_jax.config import validate
        from mvd_jax.train.aot import compile_train_step
        from mvd_jax.train.compile_report import format_report

        if _CONFIG.value is None:
            raise UserError("--config is required")
        validate(_CONFIG.value, source="--config")
        if len(jax.devices()) != n:
            raise UserError(f"asked for {n} CPU devices, the backend has {len(jax.devices())} (it was started "
                            "before --topology applied; unset XLA_FLAGS device counts)")
        report = compile_train_step(_CONFIG.value)
    except UserError as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        sys.exit(2)
    print(format_report(report, devices=report["devices"]))
    print(f"step FLOPs (jaxpr, paper convention, whole batch): {report['jaxpr_flops_per_step'] / 1e12:.4g} T; "
          f"trainable parameters {report['trainable_params']:,}, frozen {report['frozen_params']:,}; "
          f"mesh {report['mesh']}, batch {report['batch_size']}, remat {report['remat']}; "
          f"lowered in {report['lower_s']:.1f} s, compiled in {report['compile_s']:.1f} s")
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    app.run(main)
