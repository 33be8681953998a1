"""Runs the trainer in a fresh process for the training tests and saves what they compare.

    python tests/train_driver.py SETTINGS_JSON
SETTINGS_JSON: {"workdir", "out" (npz of final trainable params, process 0), "overrides" (dotted config
keys → values on configs/demo.py:micro), optional "coordinator", "num_processes", "process_id"}.
XLA_FLAGS in the environment sets the simulated device count.
"""
import json
import os
import sys

import numpy as np

settings = json.loads(sys.argv[1])
import jax  # noqa: E402

if settings.get("coordinator"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(settings["coordinator"], num_processes=settings["num_processes"],
                               process_id=settings["process_id"])

from jax.experimental import multihost_utils  # noqa: E402

from mvd_jax.settings import load_config  # noqa: E402
from mvd_jax.train.trainer import train  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
config = load_config(os.path.join(ROOT, "configs", "demo.py") + ":micro")
for key, value in settings.get("overrides", {}).items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
result = train(config, settings["workdir"], log=lambda *a: None)
params = {k: np.asarray(multihost_utils.process_allgather(v, tiled=True)) for k, v in result.state["params"].items()}
if jax.process_index() == 0 and settings.get("out"):
    np.savez(settings["out"], **{k.replace("/", "|"): v for k, v in params.items()})
