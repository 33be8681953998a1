"""gs:// run directories (mvd_jax/storage.py) against a local Cloud Storage server (tests/gcs_emulator.py):
the trainer CLI trains, checkpoints (Orbax/TensorStore OCDBT with conditional manifest writes), resumes
and writes every file of its workdir into the bucket, with losses and weights bit-identical to the same
run on local disk; the next stage's reader (`init_from`, `sample --unet`, `export --run`) loads a run
from the bucket. Objects cannot be appended to: metrics.jsonl and the bad-video report are rewritten."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gcs_emulator import client_env

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "mvd-test-bucket"
CLI = [sys.executable, "-m", "mvd_jax.train", f"--config={ROOT / 'configs' / 'demo.py'}:micro",
       "--config.train.log_every=1", "--config.train.checkpoint_every=3"]


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gcs(env):
    """The emulator in its own process; yields the subprocess environment pointing every client at it
    and points this process's clients at it too (restored afterwards)."""
    port = free_port()
    settings = client_env(port)
    saved = {k: os.environ.get(k) for k in settings}
    server = subprocess.Popen([sys.executable, str(ROOT / "tests" / "gcs_emulator.py"), str(port), BUCKET],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready", server.stderr.read()[-2000:]
        os.environ.update(settings)
        yield dict(env, **settings)
    finally:
        server.kill()
        server.wait()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def cli(env, workdir, *extra):
    proc = subprocess.run([*CLI, f"--workdir={workdir}", *extra], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def flat_weights(unet):
    from flax import nnx

    return {"/".join(map(str, k)): np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(unet, nnx.Param))}


def test_trainer_runs_and_resumes_in_a_bucket_bit_identical_to_disk(gcs, tmp_path):
    from etils import epath

    from mvd_jax.train.metrics import read_metrics
    from mvd_jax.train.stages import is_run_dir, read_run_unet

    run = f"gs://{BUCKET}/runs/micro"
    first = cli(gcs, run, "--config.train.steps=3", "--config.train.sample_at_end=False")
    assert "resumed" not in first.stdout
    second = cli(gcs, run, "--config.train.steps=6")
    assert f"resumed from step 3 in {run}/checkpoints" in second.stdout
    assert f"sample video: {run}/samples/step_0000006.mp4" in second.stdout
    local = cli(gcs, tmp_path, "--config.train.steps=6", "--config.train.sample_at_end=False")
    assert "resumed" not in local.stdout

    # the whole workdir is in the bucket, nothing was written to a local folder named like it
    assert not Path("gs:").exists()
    bucket_run = epath.Path(run)
    assert sorted(p.name for p in (bucket_run / "checkpoints").iterdir() if p.name.isdigit()) == ["3", "6"]
    assert (bucket_run / "checkpoints" / "config.json").exists()
    assert (bucket_run / "compile_report.json").exists()
    assert any(p.name.startswith("events.out.tfevents") for p in (bucket_run / "tensorboard").iterdir())
    video = (bucket_run / "samples" / "step_0000006.mp4").read_bytes()
    assert len(video) > 1000 and video[4:8] == b"ftyp"

    # metrics.jsonl: the resumed run's log continues the first one's (rewritten whole, no append)
    in_bucket, on_disk = read_metrics(run), read_metrics(tmp_path)
    assert [m["step"] for m in in_bucket] == [m["step"] for m in on_disk] == [1, 2, 3, 4, 5, 6]
    assert [m["loss"] for m in in_bucket] == [m["loss"] for m in on_disk]

    # the next stage's reader loads the bucket run: same weights, bit for bit, as the run on disk
    assert is_run_dir(run) and not is_run_dir(f"gs://{BUCKET}/runs/absent")
    unet_b, cfg_b, step_b = read_run_unet(run)
    unet_d, cfg_d, step_d = read_run_unet(tmp_path)
    assert step_b == step_d == 6 and cfg_b.model.to_json() == cfg_d.model.to_json()  # config.json: first start's
    a, b = flat_weights(unet_b), flat_weights(unet_d)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_storage_helpers_in_a_bucket_and_on_disk(gcs, tmp_path, monkeypatch):
    from mvd_jax import storage

    monkeypatch.chdir(tmp_path)
    assert storage.is_remote(f"gs://{BUCKET}/x") and not storage.is_remote("runs/x")
    assert str(storage.path("runs/x")) == str(tmp_path / "runs" / "x")  # local paths are made absolute
    assert str(storage.path(f"gs://{BUCKET}/a/b")) == f"gs://{BUCKET}/a/b"

    for base in (f"gs://{BUCKET}/helpers", str(tmp_path / "helpers")):
        report = storage.path(base) / "sub" / "report.tsv"
        storage.append_text(report, "a\t1\n")
        storage.append_text(report, "b\t2\n")
        assert report.read_text() == "a\t1\nb\t2\n"
        target = storage.path(base) / "videos" / "v.bin"
        with storage.local_file_for(target) as local:
            assert not storage.is_remote(local)
            Path(local).write_bytes(b"\x00\x01" * 1000)
        assert target.read_bytes() == b"\x00\x01" * 1000
