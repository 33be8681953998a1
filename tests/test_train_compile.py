"""Ahead-of-time compile of the real train step (train/aot.py, python -m mvd_jax.train_compile): the
per-device memory plan follows the mesh (FSDP shards parameters and optimizer state), remat trades
temporaries for FLOPs, and the step's FLOPs agree between the jaxpr count and XLA's."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "demo.py") + ":micro"

SCRIPT = """
import json, sys
import jax
jax.config.update("jax_num_cpu_devices", 4)
from mvd_jax.config import load_config
from mvd_jax.train.aot import compile_train_step
out = {}
for name, mesh, remat in (("data4", (4, 1), False), ("fsdp4", (1, 4), False), ("fsdp4_remat", (1, 4), True)):
    cfg = load_config(sys.argv[1])
    cfg.mesh.data, cfg.mesh.fsdp = mesh
    cfg.train.batch_size, cfg.train.remat = 4, remat
    out[name] = compile_train_step(cfg)
print(json.dumps(out))
"""


def test_memory_follows_the_mesh_and_remat(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), XLA_FLAGS="")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, CONFIG], env=env, capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    data, fsdp, remat = r["data4"], r["fsdp4"], r["fsdp4_remat"]
    assert data["devices"] == fsdp["devices"] == 4 and fsdp["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
    # parameters, EMA and Adam's moments are replicated under data parallelism and split under FSDP
    params = data["trainable_params"]
    state_bytes = 4 * params * 4  # params + EMA + 2 moments, float32
    assert data["argument_bytes"] >= state_bytes
    assert fsdp["argument_bytes"] < 0.6 * data["argument_bytes"]
    assert fsdp["total_bytes"] < data["total_bytes"]
    # remat keeps fewer activations and recomputes them: more FLOPs per step
    assert remat["temp_bytes"] < fsdp["temp_bytes"]
    assert remat["jaxpr_flops_per_step"] > fsdp["jaxpr_flops_per_step"]
    # the same step counted two ways (XLA per device × devices vs the paper-convention jaxpr count of
    # convs and matmuls): XLA adds elementwise work and skips padded conv taps, so they differ by a little
    xla_total = data["flops"] * data["devices"]
    assert 0.7 < xla_total / data["jaxpr_flops_per_step"] < 1.5


def test_cli_reports_and_refuses_bad_topologies(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), XLA_FLAGS="")
    bad = subprocess.run([sys.executable, "-m", "mvd_jax.train_compile", f"--config={CONFIG}", "--topology=gpu:2"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--topology must be cpu:N" in bad.stderr
    bad_mesh = subprocess.run([sys.executable, "-m", "mvd_jax.train_compile", f"--config={CONFIG}",
                               "--topology=cpu:2", "--config.mesh.data=3"],
                              env=env, capture_output=True, text=True, timeout=300)
    assert bad_mesh.returncode == 2 and "mesh" in bad_mesh.stderr
    out = tmp_path / "r.json"
    ok = subprocess.run([sys.executable, "-m", "mvd_jax.train_compile", f"--config={CONFIG}", "--topology=cpu:2",
                         "--config.train.batch_size=2", f"--out={out}"],
                        env=env, capture_output=True, text=True, timeout=900)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "per device (of 2)" in ok.stdout and "step FLOPs" in ok.stdout
    assert json.loads(out.read_text())["mesh"] == {"data": 2, "fsdp": 1, "tensor": 1}
