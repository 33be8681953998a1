"""Ahead-of-time compile of the real train step (train/aot.py, python -m mvd_jax.train_compile): the
per-device memory plan follows the mesh (FSDP shards parameters and optimizer state), remat trades
temporaries for FLOPs, and the step's FLOPs agree between the jaxpr count and XLA's — on simulated CPU
devices and on a TPU v5e 2x2 slice described by libtpu on this CPU host."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "demo.py") + ":micro"

SCRIPT = """
import json, sys
import jax
jax.config.update("jax_num_cpu_devices", 16)
from mvd_jax.settings import load_config
from mvd_jax.train.aot import compile_train_step
out = {}
# remat at the micro size (its FLOPs are the jaxpr's: traced, not compiled), and one clip per device on 4 and
# on 16 devices at larger frames
for name, mesh, remat, size in (("data4", (4, 1), False, None), ("fsdp4", (1, 4), False, None),
                                ("fsdp4_remat", (1, 4), True, None), ("fsdp4_large", (1, 4), True, (64, 128)),
                                ("fsdp16_large", (1, 16), True, (64, 128))):
    cfg = load_config(sys.argv[1])
    cfg.mesh.data, cfg.mesh.fsdp = mesh
    n = mesh[0] * mesh[1]
    cfg.train.batch_size, cfg.train.remat = n, remat
    if size:
        cfg.height, cfg.width = size
    out[name] = compile_train_step(cfg, jax.devices()[:n], compile=name != "fsdp4_remat")
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
    # remat recomputes each layer's forward in the backward pass: more FLOPs per step. (Its memory effect is
    # not visible in XLA:CPU's plan of a model this small, whose temporaries are not its activations; the TPU
    # compiles show it: SVD 1024×576 on v5e:2x2 55.1 → 22.4 GiB per chip, whole blocks → layers.)
    assert remat["jaxpr_flops_per_step"] > 1.2 * fsdp["jaxpr_flops_per_step"]
    # FSDP over 4 times the devices at one clip each: a device's activations are its own clip's, not the
    # global batch's (before the attention layers pinned the batch split, 170 → 411 MB, 2.4×; now 1.25×, the
    # rest being the CPU's blocked attention, which loops over the whole batch)
    assert r["fsdp16_large"]["temp_bytes"] < 1.5 * r["fsdp4_large"]["temp_bytes"]
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
    # the data-parallel step of test_memory_follows_the_mesh_and_remat (same file, same worker, run before):
    # its program comes from the run's persistent compilation cache instead of a second compile
    ok = subprocess.run([sys.executable, "-m", "mvd_jax.train_compile", f"--config={CONFIG}", "--topology=cpu:4",
                         "--config.train.batch_size=4", "--config.train.remat=False", f"--out={out}"],
                        env=env, capture_output=True, text=True, timeout=900)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "per device (of 4)" in ok.stdout and "step FLOPs" in ok.stdout
    report = json.loads(out.read_text())
    assert report["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1}
    # a step for CPU devices computes attention in the CPU's blocked form (models/attention_kernel.py)
    assert {a["form"] for a in report["attention"] if a["k"][1] > 1} == {"blocked"}
    assert report["pallas_kernel_calls"] == 0


# ---- TPU topologies compiled for on this CPU host (libtpu describes them; nothing runs on a TPU) ------------
HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
needs_libtpu = pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu is not installed (pip install libtpu==0.0.42.1, "
                                  "the release paired with jax 0.10.2): TPU topologies cannot be described here")
GIB = 1024 ** 3


def _tpu_cli(tmp_path, name, *extra):
    out = tmp_path / f"{name}.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), XLA_FLAGS="", ALLOW_MULTIPLE_LIBTPU_LOAD="1")
    # --fast_compile: XLA's lowest optimisation effort — ≈1 min per compile here instead of ≈1.5–2.5
    proc = subprocess.run([sys.executable, "-m", "mvd_jax.train_compile", f"--config={CONFIG}", "--topology=v5e:2x2",
                           "--config.train.batch_size=4", "--fast_compile", f"--out={out}", *extra],
                          env=env, capture_output=True, text=True, timeout=600)
    return proc, (json.loads(out.read_text()) if out.exists() else None)


@pytest.fixture(scope="module")
def v5e_fsdp4(tmp_path_factory):
    return _tpu_cli(tmp_path_factory.mktemp("v5e"), "fsdp4", "--config.mesh.data=1", "--config.mesh.fsdp=4")


@needs_libtpu
def test_tpu_v5e_compile_reports_memory_flops_and_step_time(v5e_fsdp4):
    proc, r = v5e_fsdp4
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert r["device_kind"] == "TPU v5 lite" and r["devices"] == 4 and r["hosts"] == 1
    assert r["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1} and r["accelerator_type"] == "v5litepod-4"
    assert r["total_bytes"] == r["argument_bytes"] + r["output_bytes"] - r["aliased_bytes"] + r["temp_bytes"]
    assert r["fits"] and r["hbm_bytes"] == 16 * GIB and r["total_bytes"] < r["hbm_bytes"]
    # the predicted step time is the jaxpr FLOPs over the chips' bf16 peak at the stated utilisation
    assert r["predicted_step_s"] == pytest.approx(r["jaxpr_flops_per_step"] / (4 * 197e12 * 0.4))
    # XLA's per-chip count × 4 and the paper-convention jaxpr count describe the same step
    assert 0.7 < r["flops"] * 4 / r["jaxpr_flops_per_step"] < 1.6
    for text in ("per-chip memory", "arguments", "temporaries", "of 16 GiB", "TFLOP per chip",
                 "predicted step time", "40 % of bf16 peak", "FITS", "pallas_tpu q (16, 128, 2, 16)"):
        assert text in proc.stdout, text
    # train.attention=auto on a TPU target: the spatial self-attention (8×16 = 128 latent tokens per frame)
    # runs the Pallas flash kernel — the compiled program holds its Mosaic custom calls (forward, and the
    # backward's dK/dV and dQ kernels) — and the temporal attention over 4 frames stays on XLA's form
    forms = {(tuple(a["q"]), a["form"]) for a in r["attention"]}
    assert forms == {((16, 128, 2, 16), "pallas_tpu"), ((512, 4, 2, 16), "xla")}, forms
    assert r["pallas_kernel_calls"] >= 3
    # XLA:TPU's windowed einsum is off by default (train.tpu_collective_matmul; its buffers grow with the FSDP
    # width): the options reach the compiler — with it on, this step's FSDP layers hold 12 collective-permutes
    assert r["compiler_options"] == {"xla_tpu_enable_windowed_einsum_for_all_gather": False,
                                     "xla_tpu_enable_windowed_einsum_for_reduce_scatter": False}
    assert r["collective_permutes"] == 0 and "collective matmul False" in proc.stdout


@needs_libtpu
def test_tpu_memory_grows_when_fsdp_shrinks_and_the_knob_is_named(v5e_fsdp4, tmp_path):
    _, fsdp4 = v5e_fsdp4
    assert fsdp4 is not None
    # the same step, data-parallel only, against a chip the size of the FSDP plan: it no longer fits
    # (with attention forced to XLA's form: the compiled program then holds no Pallas kernel)
    proc, data4 = _tpu_cli(tmp_path, "data4", "--config.mesh.data=4", "--config.mesh.fsdp=1",
                           f"--hbm_gib={fsdp4['total_bytes'] / GIB}", "--config.train.attention=xla",
                           "--config.train.tpu_collective_matmul=True")
    assert proc.returncode == 3, proc.stderr[-3000:]
    # collective matmul turned on: the TPU compile gets no options, XLA's default (data parallelism has no FSDP
    # all-gathers for it to window, so the plan is the same), and the knob to turn it off is named
    assert data4["compiler_options"] == {} and data4["tpu_collective_matmul"]
    assert "--config.train.tpu_collective_matmul=False" in proc.stdout
    assert {a["form"] for a in data4["attention"]} == {"xla"} and data4["pallas_kernel_calls"] == 0
    # the same global batch: the same FLOPs in the paper's convention, attention's products included although
    # the FSDP-4 step runs them inside the Pallas kernel (counted on the step's XLA-form twin)
    assert data4["jaxpr_flops_per_step"] == fsdp4["jaxpr_flops_per_step"]
    # parameters, EMA and both Adam moments are replicated instead of split four ways
    assert data4["argument_bytes"] > 2 * fsdp4["argument_bytes"]
    assert data4["total_bytes"] > fsdp4["total_bytes"] and not data4["fits"]
    assert "DOES NOT FIT" in proc.stdout and "--config.mesh.fsdp=N (now 1" in proc.stdout
    assert "--config.train.remat=True" in proc.stdout and "--config.train.grad_accum" in proc.stdout


def test_tpu_slices_and_compiler_oom_messages():
    from mvd_jax.train.aot import parse_hbm_oom
    from mvd_jax.train_compile import knobs, parse_tpu

    s = parse_tpu("v5p:2x2x4")
    assert (s.libtpu_topology, s.generation.chip_config_name, s.accelerator_type, s.hosts) == \
        ("v5:2x2x4", "megacore", "v5p-32", 4)
    assert parse_tpu("v6e-16").generation.hbm_gib == 32 and parse_tpu("v5e:2x2").generation.peak_tflops == 197
    msg = ("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory space hbm. Used 20.50G "
           "of 15.75G hbm. Exceeded hbm capacity by 4.75G.")
    assert parse_hbm_oom(msg) == (20.5 * GIB, 15.75 * GIB) and parse_hbm_oom("INTERNAL: something else") is None
    msg = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries (22.46G) "
           "exceeds available HBM (15.75G).")
    assert parse_hbm_oom(msg) == (22.46 * GIB, 15.75 * GIB)
    # which knob comes first follows which part of the plan is large
    report = {"mesh": {"data": 8, "fsdp": 1, "tensor": 1}, "devices": 8, "batch_size": 8, "grad_accum": 1,
              "remat": False, "dtype": "float32", "argument_bytes": 12 * GIB, "temp_bytes": 6 * GIB}
    assert knobs(report)[0].startswith("--config.mesh.fsdp=N (now 1")
    report.update(argument_bytes=1 * GIB, temp_bytes=30 * GIB, mesh={"data": 1, "fsdp": 8, "tensor": 1})
    k = knobs(report)
    assert k[0].startswith("--config.train.remat=True") and not any("mesh.fsdp" in x for x in k)
    assert any("bfloat16" in x for x in k) and not any("collective_matmul" in x for x in k)
    report["tpu_collective_matmul"] = True  # named only where it was turned on
    assert any(x.startswith("--config.train.tpu_collective_matmul=False") for x in knobs(report))
    # the option exists on TPU targets only (XLA:CPU/GPU have no such flag and would refuse it)
    import jax

    from mvd_jax.train.sharding import make_mesh, step_compiler_options
    cpu = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    assert step_compiler_options(cpu, False) == step_compiler_options(cpu, True) == {}


@needs_libtpu
def test_tpu_plan_only_sizes_the_train_state_without_compiling(tmp_path):
    # the state (parameters, EMA, Adam's two moments, float32) split four ways, from the shardings alone
    proc, r = _tpu_cli(tmp_path, "plan", "--config.mesh.data=1", "--config.mesh.fsdp=4", "--plan_only")
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = 4 * 4 * r["trainable_params"]
    assert r["planned_only"] and r["fits"] is None and "compile_s" in r and "temp_bytes" not in r
    assert state / 4 <= r["argument_bytes"] < state / 4 * 1.2 and "THE STATE FITS" in proc.stdout
    proc, r = _tpu_cli(tmp_path, "plan_small", "--config.mesh.data=1", "--config.mesh.fsdp=4", "--plan_only",
                       "--hbm_gib=0.001")
    assert proc.returncode == 3 and r["fits"] is False and "DOES NOT FIT" in proc.stdout


@needs_libtpu
def test_one_attention_on_v5e_xla_form_vs_pallas_kernel(tmp_path):
    """bench/tpu_attention_aot.py at 512×256's top level (2048 tokens, 5 heads × 64, one 14-frame clip per
    chip, v5e:2x2): the flash kernel's temporaries per chip are a small fraction of XLA's form, forward and
    forward + backward (at 1024×576 XLA's form does not fit v5e at all: bench/results/tpu_attention_aot.json)."""
    out = tmp_path / "attention.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), XLA_FLAGS="", ALLOW_MULTIPLE_LIBTPU_LOAD="1")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "tpu_attention_aot.py"), "--tokens=2048",
                           f"--out={out}"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())["results"]
    for part in ("forward", "forward_backward"):
        xla, kernel = r["xla"][part], r["pallas_tpu"][part]
        assert xla["forms"] == ["xla"] and kernel["forms"] == ["pallas_tpu"]
        assert xla["pallas_kernel_calls"] == 0 and kernel["pallas_kernel_calls"] >= (1 if part == "forward" else 3)
        # XLA's form holds the float32 scores (14 frames × 5 heads × 2048² × 4 B = 1.1 GiB per clip); the kernel
        # keeps only 128 × 128 tiles (measured: 0.03 vs 1.09 GiB forward; 0.48 vs 1.64 GiB with the backward,
        # whose kernel saves per-row softmax statistics padded to 128 lanes)
        assert xla["temp_bytes"] > 14 * 5 * 2048 ** 2 * 4, part
        assert kernel["temp_bytes"] < xla["temp_bytes"] / (10 if part == "forward" else 3), part
