"""Launch scripts (launch/tpu_vm.py, launch/xpk.py): their dry-runs print complete commands derived from the
trainer config and the slice — worker count, environment, entry point, workdir, multi-slice — and refuse a
job the trainer would refuse, before anything is rented. Nothing here runs gcloud or xpk."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # launch/ is a folder of scripts in the checkout, not an installed package

from launch import common, tpu_vm, xpk  # noqa: E402
from mvd_jax.errors import UserError  # noqa: E402
from mvd_jax.train_compile import parse_tpu  # noqa: E402
BASE = ["--zone=us-west4-a", "--project=proj", "--config=configs/demo.py", "--workdir=gs://ckpt-bucket/runs/demo"]


def texts(steps):
    return [s.text() for s in steps]


@pytest.mark.parametrize("tpu, chips, hosts, accelerator", [
    ("v5litepod-32", 32, 8, "v5litepod-32"), ("v5e-32", 32, 8, "v5litepod-32"), ("v5e:4x8", 32, 8, "v5litepod-32"),
    ("v5litepod-16", 16, 4, "v5litepod-16"), ("v5litepod-8", 8, 1, "v5litepod-8"), ("v5litepod-4", 4, 1, "v5litepod-4"),
    ("v5litepod-256", 256, 64, "v5litepod-256"), ("v5p-32", 16, 4, "v5p-32"), ("v5p:2x2x2", 8, 2, "v5p-16"),
    ("v4-32", 16, 4, "v4-32"), ("v4-8", 4, 1, "v4-8"), ("v6e-16", 16, 4, "v6e-16"), ("v6e:2x4", 8, 1, "v6e-8"),
])
def test_slices_give_chips_and_workers(tpu, chips, hosts, accelerator):
    # Google's tables: v5e 4x8 = 32 chips, 8 TPU VMs of 4 chips (ct5lp-hightpu-4t); 1/4/8-chip v5e/v6e slices
    # are one VM; v4/v5p accelerator types count TensorCores (2 per chip), 4 chips per VM.
    s = parse_tpu(tpu)
    assert (s.chips, s.hosts, s.accelerator_type) == (chips, hosts, accelerator)


def test_tpu_vm_up_prints_every_command_from_the_config():
    args, header, steps = tpu_vm.plan(["up", "--name=mvd-demo", "--tpu=v5litepod-32", *BASE,
                                       "--config.train.batch_size=32", "--env=LIBTPU_INIT_ARGS=--xla_tpu_flag=true"])
    head = "\n".join(header)
    assert "8 TPU VM worker(s)" in head and "8 trainer processes" in head and "32 chips" in head
    assert "4 per host" in head  # global batch 32 over 8 hosts
    cmds = texts(steps)
    create, wait, pack, scp, install, run, logs = cmds
    assert create.startswith("gcloud compute tpus queued-resources create mvd-demo")
    for part in ("--accelerator-type=v5litepod-32", "--runtime-version=v2-alpha-tpuv5-lite", "--node-id=mvd-demo",
                 "--zone=us-west4-a", "--project=proj"):
        assert part in create
    assert "queued-resources describe mvd-demo" in wait and steps[1].poll_until == "ACTIVE"
    assert "git archive" in pack and "tpu-vm scp" in scp and "--worker=all" in scp
    # install: Python 3.11 + the repo's venv recipe + libtpu, and the bucket mounted where the trainer looks
    assert "--worker=all" in install and "python3.11" in install and "scripts/venv.sh" in install
    assert common.LIBTPU in install and "gcsfuse" in install and "/gcs/ckpt-bucket" in install
    # run: the entry point on every worker, multi-host, workdir on the mounted bucket, env for the trainer
    assert run.startswith("gcloud compute tpus tpu-vm ssh mvd-demo") and "--worker=all" in run
    assert ".venv/bin/python -m mvd_jax.train --config=configs/demo.py" in run
    assert "--workdir=/gcs/ckpt-bucket/runs/demo --multihost --config.train.batch_size=32" in run
    assert "JAX_COMPILATION_CACHE_DIR=/gcs/ckpt-bucket/jax_compilation_cache" in run
    assert "JAX_PLATFORMS=tpu,cpu" in run and "LIBTPU_INIT_ARGS=--xla_tpu_flag=true" in run
    assert "nohup" in run and "mvd_jax_train.pid" in run
    assert "--worker=0" in logs and "tail" in logs


def test_tpu_vm_multislice_and_teardown():
    _, header, steps = tpu_vm.plan(["up", "--name=big", "--tpu=v5e:4x8", "--num_slices=2", *BASE,
                                    "--config.train.batch_size=64"])
    assert "16 trainer processes" in "\n".join(header)
    create = steps[0].text()
    assert "--node-count=2" in create and "--node-prefix=big" in create and "--node-id" not in create
    runs = [s.text() for s in steps if "mvd_jax.train" in s.text()]
    assert len(runs) == 2 and "tpu-vm ssh big-0" in runs[0] and "tpu-vm ssh big-1" in runs[1]
    assert all("--worker=all" in r and "--multihost" in r for r in runs)
    # slices are joined by the data-centre network: they must split mesh.data, never fsdp
    with pytest.raises(UserError, match="mesh.data .* multiple of 2"):
        tpu_vm.plan(["run", "--name=big", "--tpu=v5e:4x8", "--num_slices=2", *BASE, "--config.mesh.data=1",
                     "--config.mesh.fsdp=-1", "--config.train.batch_size=64"])
    _, _, (stop_0, stop_1) = tpu_vm.plan(["stop", "--name=big", "--tpu=v5e:4x8", "--num_slices=2",
                                          "--zone=us-west4-a"])
    assert "kill -TERM" in stop_0.text() and "big-1" in stop_1.text()
    _, _, (delete,) = tpu_vm.plan(["delete", "--name=big", "--tpu=v5e:4x8", "--zone=us-west4-a"])
    assert delete.text() == "gcloud compute tpus queued-resources delete big --zone=us-west4-a --force --quiet"


def test_jobs_the_trainer_would_refuse_are_refused_before_renting():
    with pytest.raises(UserError, match="batch_size 2 does not split over the data-parallel mesh size 32"):
        tpu_vm.plan(["run", "--name=x", "--tpu=v5litepod-32", *BASE])  # the demo's batch of 2 on 32 chips
    with pytest.raises(UserError, match="over the 8 trainer processes"):  # 4 data replicas, 8 hosts
        tpu_vm.plan(["run", "--name=x", "--tpu=v5litepod-32", *BASE, "--config.mesh.data=4",
                     "--config.mesh.tensor=8", "--config.train.batch_size=4"])
    with pytest.raises(UserError, match="mesh"):  # a fixed mesh that does not use the 32 chips
        tpu_vm.plan(["run", "--name=x", "--tpu=v5litepod-32", *BASE, "--config.mesh.data=16"])
    with pytest.raises(UserError, match="--config"):  # a typo'd key is the trainer's error, found here
        tpu_vm.plan(["run", "--name=x", "--tpu=v5litepod-32", *BASE, "--config.train.batchsize=32"])
    with pytest.raises(UserError, match="unknown TPU generation"):
        tpu_vm.plan(["create", "--name=x", "--tpu=v9z-32", "--zone=us-west4-a"])


def test_gs_paths_in_the_config_are_mounted_or_passed_through():
    over = ["--config.train.batch_size=32", "--config.data.cache=gs://data-bucket/latents/svd"]
    _, _, steps = tpu_vm.plan(["install", "--name=x", "--tpu=v5litepod-32", *BASE, *over])
    install = steps[-1].text()
    assert "/gcs/ckpt-bucket" in install and "/gcs/data-bucket" in install
    _, _, (run,) = tpu_vm.plan(["run", "--name=x", "--tpu=v5litepod-32", *BASE, *over])
    assert "--config.data.cache=/gcs/data-bucket/latents/svd" in run.text()
    _, header, (run,) = tpu_vm.plan(["run", "--name=x", "--tpu=v5litepod-32", *BASE, *over, "--gcs=native",
                                     "--compilation_cache=gs://cache-bucket/jax"])
    assert "--workdir=gs://ckpt-bucket/runs/demo" in run.text() and "--config.data.cache=gs://data-bucket" in run.text()
    assert "JAX_COMPILATION_CACHE_DIR=gs://cache-bucket/jax" in run.text()
    assert any("opens the gs:// paths itself" in h for h in header)


def test_xpk_workload_from_the_config():
    _, header, steps = xpk.plan(["run", "--cluster=mvd", "--tpu=v5litepod-32", "--num_slices=2", "--workload=w1",
                                 *BASE, "--config.train.batch_size=64", "--env=FOO=bar"])
    assert "16 trainer processes" in "\n".join(header)
    env_file, export, create = texts(steps)
    assert "git archive" in export and "--script-dir=/tmp/w1-src" in create
    assert "JAX_COMPILATION_CACHE_DIR=/gcs/ckpt-bucket/jax_compilation_cache" in env_file and "FOO=bar" in env_file
    assert create.startswith("xpk workload create --cluster=mvd --workload=w1 --tpu-type=v5litepod-32 --num-slices=2")
    assert "--env-file=/tmp/w1.env" in create and "--base-docker-image=python:3.11-slim" in create
    assert f"pip install -q --root-user-action=ignore -e . {common.LIBTPU}" in create
    assert ("python -m mvd_jax.train --config=configs/demo.py --workdir=/gcs/ckpt-bucket/runs/demo --multihost "
            "--config.train.batch_size=64") in create
    _, _, (env_file, create) = xpk.plan(["run", "--cluster=mvd", "--tpu=v5litepod-32", "--docker_image=img:1", *BASE,
                                         "--config.train.batch_size=32"])
    assert "--docker-image=img:1" in create.text() and "pip install" not in create.text()
    _, _, (attach,) = xpk.plan(["storage-attach", "--cluster=mvd", "--tpu=v5litepod-32", *BASE,
                                "--config.train.batch_size=32"])
    assert "xpk storage attach" in attach.text() and "--bucket=ckpt-bucket" in attach.text()
    assert "--mount-point=/gcs/ckpt-bucket" in attach.text() and "--auto-mount=true" in attach.text()
    _, _, (cluster,) = xpk.plan(["cluster-create", "--cluster=mvd", "--tpu=v6e-16", "--num_slices=4",
                                 "--zone=us-east5-b", "--capacity=spot"])
    assert "--tpu-type=v6e-16" in cluster.text() and "--num-slices=4" in cluster.text()
    assert "--enable-gcsfuse-csi-driver" in cluster.text() and "--spot" in cluster.text()


def test_dry_run_needs_no_credentials_and_runs_nothing(tmp_path, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError(f"dry-run ran {a}")

    monkeypatch.setattr(common.subprocess, "run", refuse)
    assert tpu_vm.main(["up", "--name=x", "--tpu=v5litepod-16", *BASE, "--config.train.batch_size=16",
                        "--dry-run"]) == 0
    assert xpk.main(["run", "--cluster=c", "--tpu=v5litepod-16", *BASE, "--config.train.batch_size=16",
                     "--dry-run"]) == 0
    monkeypatch.undo()
    # as users call it: a fresh process with no gcloud/xpk on PATH and an empty HOME (no credentials)
    env = dict(os.environ, PATH=os.path.dirname(sys.executable), HOME=str(tmp_path), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "launch.tpu_vm", "up", "--name=x", "--tpu=v5litepod-16", *BASE,
                           "--config.train.batch_size=16", "--dry-run"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("gcloud compute tpus") == 6 and "4 TPU VM worker(s)" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "launch.xpk", "run", "--cluster=c", "--tpu=v5litepod-16", *BASE,
                          "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("error: train.batch_size 2")


def test_scaling_table_search_compiles_only_where_arithmetic_does_not_decide(tmp_path, monkeypatch):
    """launch/scaling_table.py's search for one (row, generation, clips per chip), with the compiles stood in
    by the memory model the search assumes ((state + gradients) / N + activations per clip, plus, on one chip, an
    unsharded working set no formula separates): a slice whose state alone exceeds HBM is never compiled; the
    first compile goes to the smallest other slice; a slice that a compiled multi-chip neighbour's arithmetic
    puts over HBM is skipped (a 1-chip compile rules nothing out); the search ends at the first compiled slice
    that fits."""
    from launch import scaling_table as st

    GIB = st.GIB
    state, per_clip = 40 * GIB, 7 * GIB
    monkeypatch.setattr(st, "RESULTS", tmp_path / "results.json")
    calls = []

    def fake_compile(row, topology, per_chip, fast=False, plan_only=False):
        chips = st.chips_of(topology)
        calls.append(topology if not plan_only else "plan")
        total = state * (1 + st.GRADIENT_SHARE) / chips + per_clip * per_chip + (8 * GIB if chips == 1 else 0)
        report = dict(row=row, topology=topology, per_chip=per_chip, devices=chips, batch_size=chips * per_chip,
                      argument_bytes=state / chips, accelerator_type=topology, hbm_bytes=st._hbm(topology),
                      jaxpr_flops_per_step=1e15, predicted_step_s=1.0, compile_s=60.0, host_peak_rss_bytes=8 * GIB)
        if plan_only:
            return {**report, "planned_only": True, "fits": None}
        return {**report, "total_bytes": total, "temp_bytes": per_clip * per_chip, "fits": total <= report["hbm_bytes"]}

    monkeypatch.setattr(st, "compile_cell", fake_compile)
    # a search cut short after a compile that does not fit: the table says so and names the next slice
    st.save(fake_compile("svd_512x256", "v5e:1x1", 1, plan_only=True))
    st.save(fake_compile("svd_512x256", "v5e:2x2", 1))
    unfinished = "| svd_512x256 | 1 | search not finished (compiled v5e:2x2: no fit; next v5e:2x4) |"
    assert unfinished in st.smallest_table(st.load())
    st.RESULTS.unlink()
    calls.clear()
    # one clip (v5e: 16 GiB): 1x1 holds 40 GiB of state (never compiled); 2x2 compiled, 12.5 + 7 > 16; 2x4 fits
    assert st.search("svd_512x256", "v5e", 1, fast=False)["topology"] == "v5e:2x4"
    assert calls == ["plan", "v5e:2x2", "v5e:2x4"]
    # two clips: 2x2 is ruled out by its own 1-clip compile (19.5 GiB, a lower bound) without compiling; 2x4
    # (1 clip: 13.25) is compiled with two (20.25, over); from it 4x4 (17.1) is predicted over HBM and skipped;
    # 4x8 (15.6) is compiled and fits
    calls.clear()
    assert st.search("svd_512x256", "v5e", 2, fast=False)["topology"] == "v5e:4x8"
    assert calls == ["v5e:2x4", "v5e:4x8"]
    # four clips: 28 GiB of activations fit no slice; the 2-clip cells' lower bounds rule out every slice
    # below 4x8, one compile there (29.6 GiB) says no, and the rest is arithmetic
    calls.clear()
    assert st.search("svd_512x256", "v5e", 4, fast=False) is None and calls == ["v5e:4x8"]
    # a small state (12 GiB) allows a 1-chip compile; it does not fit (15 + 7 + 8 unsharded GiB), and scaled
    # from it 2x2 would look over HBM (3.75 + 22 − 15), but only a multi-chip compile predicts: 2x2 is compiled
    # (3.75 + 7 = 10.75) and fits
    state = 12 * GIB
    calls.clear()
    assert st.search("mobilevd", "v5e", 1, fast=False)["topology"] == "v5e:2x2"
    assert calls == ["plan", "v5e:1x1", "v5e:2x2"]
    # 40 GiB of activations per clip: v5e's 2x2 compile does not fit, and from it every v6e slice (32 GiB)
    # is predicted over HBM: that generation gets no compile, and the table says why
    state, per_clip = 40 * GIB, 40 * GIB
    calls.clear()
    assert st.search("svd_1024x576", "v5e", 1, fast=False) is None and calls == ["plan", "v5e:2x2"]
    calls.clear()
    assert st.search("svd_1024x576", "v6e", 1, fast=False) is None and calls == []
    table = st.smallest_table(st.load())
    assert "v5e:2x4 (8 chips)" in table and "v5e:4x8 (32 chips)" in table and "no fit on any slice" in table
    # two clips of it: no compile either — the 1-clip compile is a lower bound that already rules out v5e
    calls.clear()
    assert st.search("svd_1024x576", "v5e", 2, fast=False) is None and calls == []
    table = st.smallest_table(st.load())
    assert "| svd_1024x576 | 2 | no fit on any slice (every slice predicted over HBM from the compiled v5e:2x2 ×1)" in table
    row = next(line for line in table.splitlines() if line.startswith("| svd_1024x576 | 1 |"))
    assert row.split(" | ")[4] == "no fit on any slice (every slice predicted over HBM from the compiled v5e:2x2 ×1) |"
    assert row.split(" | ")[3] == "not compiled yet"  # v5p (95 GiB) is predicted to fit: it needs a compile
