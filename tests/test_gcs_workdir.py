"""gs:// run directories (mvd_jax/storage.py) against a local Cloud Storage server (tests/gcs_emulator.py):
the trainer CLI trains, checkpoints (Orbax/TensorStore OCDBT with conditional manifest writes), resumes
and writes every file of its workdir into the bucket, with losses and weights bit-identical to the same
run on local disk; the next stage's reader (`init_from`, `sample --unet`, `export --run`) loads a run
from the bucket. Objects cannot be appended to: metrics.jsonl and the bad-video report are rewritten."""
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from gcs_emulator import BUCKET

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "mvd_jax.train", f"--config={ROOT / 'configs' / 'demo.py'}:micro",
       "--config.train.log_every=1", "--config.train.checkpoint_every=3"]


def cli(env, workdir, *extra):
    proc = subprocess.run([*CLI, f"--workdir={workdir}", *extra], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def flat_weights(unet):
    from flax import nnx

    return {"/".join(map(str, k)): np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(unet, nnx.Param))}


def bucket_has(path) -> bool:
    """exists(), bypassing gcsfs's listing cache (the file is being written by another process)."""
    from etils.epath.backend import fsspec_backend

    fsspec_backend.fs(str(path)).invalidate_cache()
    return path.exists()


def test_trainer_killed_and_resumed_in_a_bucket_is_bit_identical_to_disk(gcs, tmp_path):
    from etils import epath

    from mvd_jax.train.metrics import read_metrics
    from mvd_jax.train.stages import is_run_dir, read_run_unet

    run = f"gs://{BUCKET}/runs/micro"
    bucket_run = epath.Path(run)
    proc = subprocess.Popen([*CLI, f"--workdir={run}", "--config.train.steps=12"], env=gcs, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    # Orbax commits a gs:// step with a marker file (no rename in a bucket): kill -9 once step 3 is committed
    while not bucket_has(bucket_run / "checkpoints" / "3" / "commit_success.txt"):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() - t0 < 600, "no checkpoint appeared in the bucket"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert bucket_has(bucket_run / "metrics.jsonl")  # (also refreshes the listing cache)
    killed_at = max(m["step"] for m in read_metrics(run))
    assert 3 <= killed_at < 12, "the run ended before it could be killed"
    resumed = cli(gcs, run, "--config.train.steps=12")
    assert any(f"resumed from step {s} in {run}/checkpoints" in resumed.stdout for s in (3, 6, 9) if s <= killed_at)
    assert f"sample video: {run}/samples/step_0000012.mp4" in resumed.stdout
    local = cli(gcs, tmp_path, "--config.train.steps=12", "--config.train.sample_at_end=False")
    assert "resumed" not in local.stdout

    # the whole workdir is in the bucket, nothing was written to a local folder named like it
    assert not Path("gs:").exists()
    committed = [p.name for p in (bucket_run / "checkpoints").iterdir() if (p / "commit_success.txt").exists()]
    assert sorted(committed, key=int) == ["6", "9", "12"]  # keep_checkpoints = 3
    assert (bucket_run / "checkpoints" / "config.json").exists()
    assert (bucket_run / "compile_report.json").exists()
    assert any(p.name.startswith("events.out.tfevents") for p in (bucket_run / "tensorboard").iterdir())
    video = (bucket_run / "samples" / "step_0000012.mp4").read_bytes()
    assert len(video) > 1000 and video[4:8] == b"ftyp"

    # metrics.jsonl: the resumed run's log continues the killed one's (rewritten whole, no append); the
    # steps redone after the kill are logged twice, with the same losses
    in_bucket, on_disk = read_metrics(run), read_metrics(tmp_path)
    reference = {m["step"]: m["loss"] for m in on_disk}
    assert sorted(reference) == list(range(1, 13)) and {m["step"] for m in in_bucket} == set(reference)
    for m in in_bucket:
        assert m["loss"] == reference[m["step"]], m["step"]

    # the next stage's reader loads the bucket run: same weights, bit for bit, as the run on disk
    assert is_run_dir(run) and not is_run_dir(f"gs://{BUCKET}/runs/absent")
    unet_b, cfg_b, step_b = read_run_unet(run)
    unet_d, cfg_d, step_d = read_run_unet(tmp_path)
    assert step_b == step_d == 12 and cfg_b.model.to_json() == cfg_d.model.to_json()  # config.json: first start's
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


def upload_folder(local: Path, remote: str):
    from mvd_jax import storage

    for p in sorted(local.rglob("*")):
        if p.is_file():
            (storage.path(remote) / p.relative_to(local).as_posix()).write_bytes(p.read_bytes())


def test_videos_manifests_and_the_bad_video_report_in_a_bucket(gcs, tmp_path):
    from data_files import copy_demo, make_bad_files
    from mvd_jax import storage
    from mvd_jax.data.clips import ClipSpec
    from mvd_jax.data.loader import BAD_VIDEOS_FILE, LoaderOptions, VideoClipLoader
    from mvd_jax.data.manifest import read_entries

    good = copy_demo(tmp_path / "videos")
    bad = make_bad_files(tmp_path / "videos")
    remote = f"gs://{BUCKET}/data/videos"
    upload_folder(tmp_path / "videos", remote)

    def batches(source, report_dir):
        spec = ClipSpec(num_frames=5, height=32, width=48, fps=7)
        options = LoaderOptions(batch_size=1, seed=2, num_epochs=1, num_workers=0, process_index=0, process_count=1)
        ld = VideoClipLoader(read_entries(source), spec, options, report_dir=report_dir)
        return {b["path"][0].rsplit("/", 1)[1]: b["video"] for b in ld}, ld

    # a folder in the bucket decodes to the same clips as on disk; bad files are skipped and reported there
    on_disk, _ = batches(tmp_path / "videos", tmp_path / "run")
    in_bucket, ld = batches(remote, f"gs://{BUCKET}/data/run")
    assert sorted(in_bucket) == sorted(p.name for p in good) == sorted(on_disk)
    for name in on_disk:
        np.testing.assert_array_equal(in_bucket[name], on_disk[name])
    assert sorted(p.rsplit("/", 1)[1] for p in ld.skips.bad) == sorted(bad)
    assert all(p.startswith(remote + "/") for p in ld.skips.bad)
    report = storage.path(f"gs://{BUCKET}/data/run/{BAD_VIDEOS_FILE}").read_text().splitlines()
    assert sorted(line.split("\t")[0].rsplit("/", 1)[1] for line in report) == sorted(bad)
    assert any("empty" in line for line in report) and any("too short" in line for line in report)

    # manifests in the bucket: relative paths resolve against the manifest's folder, gs:// paths stay
    (storage.path(f"gs://{BUCKET}/data") / "m.csv").write_text(
        f"path,caption\nvideos/{good[0].name},a bunny\n{remote}/{good[1].name},bikes\n")
    entries = read_entries(f"gs://{BUCKET}/data/m.csv")
    assert [e.path for e in entries] == [f"{remote}/{good[0].name}", f"{remote}/{good[1].name}"]
    assert entries[0].caption == "a bunny"


def test_diffusers_folders_in_a_bucket_are_mirrored_once_and_load_the_same(gcs, diffusers_unets, tmp_path,
                                                                          monkeypatch):
    """init_from / autoencoder.checkpoint may name gs:// diffusers folders: the safetensors readers get a
    local mirror (MVD_JAX_GCS_MIRROR), downloaded once, identical to the source."""
    from mvd_jax import storage
    from mvd_jax.convert.diffusers_unet import read_unet_checkpoint

    monkeypatch.setenv("MVD_JAX_GCS_MIRROR", str(tmp_path / "mirror"))
    _, folder = diffusers_unets("tiny")
    remote = f"gs://{BUCKET}/models/svd"
    upload_folder(folder, remote + "/unet")  # a pipeline folder holding unet/
    (storage.path(remote) / "model_index.json").write_text("{}")
    tensors_b, config_b, kind = read_unet_checkpoint(remote)
    tensors_d, config_d, _ = read_unet_checkpoint(folder)
    assert kind == "diffusers" and config_b == config_d and tensors_b.keys() == tensors_d.keys()
    for k in tensors_d:
        np.testing.assert_array_equal(tensors_b[k], tensors_d[k])
    mirrored = tmp_path / "mirror" / "gs" / BUCKET / "models" / "svd" / "unet"
    assert sorted(p.name for p in mirrored.iterdir()) == sorted(p.name for p in folder.iterdir())
    assert not (tmp_path / "mirror" / "gs" / BUCKET / "models" / "svd" / "model_index.json").exists()
    # a second read downloads nothing: the mirrored files are kept (their mtimes do not move)
    stamps = {p.name: p.stat().st_mtime_ns for p in mirrored.iterdir()}
    read_unet_checkpoint(remote)
    assert {p.name: p.stat().st_mtime_ns for p in mirrored.iterdir()} == stamps
