"""The latent cache: what it stores equals encoding on the fly; an interrupted run resumed writes the
same shards; the CLIs (cache, inspect) work end to end and fail clearly."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from data_files import copy_demo, make_bad_files
from mvd_jax.data.cache import CacheSettings, CacheWriter, CachedClipLoader, deserialize, read_manifest, shard_name
from mvd_jax.data.clips import load_clip, to_model_range
from mvd_jax.data.encode import ENCODED_KEYS, ClipEncoder, clip_keys
from mvd_jax.data.manifest import demo_entries
from mvd_jax.errors import UserError

SETTINGS = CacheSettings(num_frames=3, height=32, width=48, fps=7, clips_per_video=2, shard_size=3, seed=4)


@pytest.fixture(scope="module")
def encoder_folder(tmp_path_factory):
    """A folder with vae/ and image_encoder/ holding tiny random diffusers/transformers models."""
    from diffusers import AutoencoderKLTemporalDecoder
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    vae = AutoencoderKLTemporalDecoder(block_out_channels=(32, 32), layers_per_block=1, latent_channels=4,
                                       down_block_types=("DownEncoderBlock2D",) * 2)
    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=32, intermediate_size=64, projection_dim=16,
                                                          num_hidden_layers=1, num_attention_heads=2,
                                                          image_size=224, patch_size=32))
    folder = tmp_path_factory.mktemp("svd_parts")
    vae.save_pretrained(folder / "vae")
    clip.save_pretrained(folder / "image_encoder")
    return folder


@pytest.fixture(scope="module")
def encoder(encoder_folder):
    from mvd_jax.convert.diffusers_vae import load_vae
    from mvd_jax.convert.transformers_clip import load_image_encoder

    return ClipEncoder(load_vae(encoder_folder / "vae"), load_image_encoder(encoder_folder / "image_encoder"))


def shard_records(folder):
    from array_record.python.array_record_module import ArrayRecordReader

    manifest = read_manifest(folder)
    out = []
    for name in manifest["shards"]:
        reader = ArrayRecordReader(str(folder / name))
        out.append([reader.read() for _ in range(reader.num_records())])
        reader.close()
    return out


def test_cache_equals_encoding_on_the_fly(encoder, tmp_path):
    entries = demo_entries()
    CacheWriter(entries, encoder, tmp_path / "cache", SETTINGS, batch_size=2).run()
    manifest = read_manifest(tmp_path / "cache")
    assert manifest["num_clips"] == 8 and len(manifest["shards"]) == 3 and manifest["skipped"] == []
    batches = list(CachedClipLoader(tmp_path / "cache", batch_size=2, shuffle=False, process_index=0, process_count=1))
    assert len(batches) == 4
    spec = SETTINGS.clip_spec()
    for batch in batches:
        assert set(batch) == {*ENCODED_KEYS, "clip"}
        for i, clip in enumerate(batch["clip"].tolist()):
            # the same clip encoded now, alone (batch of 1): the cache must not depend on batching
            record = load_clip(entries[clip // 2], spec, np.random.default_rng([SETTINGS.seed, clip // 2, clip % 2]))
            raw = {"video": to_model_range(record["video"])[None], "fps": record["fps"][None],
                   "motion_bucket_id": record["motion_bucket_id"][None]}
            fresh = encoder(raw, SETTINGS.noise_aug_strength, clip_keys(SETTINGS.seed, [clip]))
            for key in ENCODED_KEYS:
                a, b = np.asarray(batch[key][i], np.float64), np.asarray(fresh[key][0], np.float64)
                assert np.linalg.norm(a - b) <= 1e-6 * np.linalg.norm(b), key
    assert batches[0]["latents"].shape == (2, 3, 16, 24, 4)
    assert batches[0]["added_time_ids"][0].tolist() == pytest.approx([6.0, 127.0, 0.02])
    # two hosts split the cache
    halves = [[c for b in CachedClipLoader(tmp_path / "cache", batch_size=1, process_index=h, process_count=2, seed=1)
               for c in b["clip"].tolist()] for h in (0, 1)]
    assert sorted(halves[0] + halves[1]) == list(range(8)) and not set(halves[0]) & set(halves[1])


def test_interrupted_cache_resumes_to_the_same_shards(encoder, tmp_path):
    entries = demo_entries()
    CacheWriter(entries, encoder, tmp_path / "whole", SETTINGS, batch_size=2).run()
    part = CacheWriter(entries, encoder, tmp_path / "part", SETTINGS, batch_size=2)
    assert part.run(max_shards=1) == 1
    assert not (tmp_path / "part" / "manifest.json").exists()
    with pytest.raises(UserError, match="not a finished latent cache"):
        CachedClipLoader(tmp_path / "part", batch_size=1)
    # a crash mid-shard leaves a temporary file behind; it must not count as done
    (tmp_path / "part" / (shard_name(1, 3) + ".tmp")).write_bytes(b"half a shard")
    assert CacheWriter(entries, encoder, tmp_path / "part", SETTINGS, batch_size=2).run() == 2
    whole, resumed = shard_records(tmp_path / "whole"), shard_records(tmp_path / "part")
    assert [len(s) for s in whole] == [3, 3, 2]
    assert resumed == whole  # byte for byte: same clips, same order, same numbers
    assert deserialize(resumed[1][0])["clip"] == 3
    assert not list((tmp_path / "part").glob("*.tmp"))
    with pytest.raises(UserError, match="other settings"):
        CacheWriter(entries, encoder, tmp_path / "part", CacheSettings(num_frames=4), batch_size=2).run()


def test_a_finished_cache_reads_from_a_bucket_and_is_written_locally_only(encoder, gcs, tmp_path):
    """data.cache=gs://…: ArrayRecord reads the shards from the bucket (google-cloud-cpp, pointed at
    tests/gcs_emulator.py), giving the batches the same cache gives on disk."""
    from gcs_emulator import BUCKET
    from mvd_jax import storage

    CacheWriter(demo_entries(), encoder, tmp_path / "cache", SETTINGS, batch_size=2).run()
    remote = f"gs://{BUCKET}/caches/demo"
    for p in sorted((tmp_path / "cache").iterdir()):
        (storage.path(remote) / p.name).write_bytes(p.read_bytes())
    kw = dict(batch_size=2, seed=5, num_epochs=1, process_index=0, process_count=1)
    local, bucket = list(CachedClipLoader(tmp_path / "cache", **kw)), list(CachedClipLoader(remote, **kw))
    assert len(bucket) == len(local) == 4
    for a, b in zip(local, bucket):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    with pytest.raises(UserError, match="written to a local folder"):
        CacheWriter(demo_entries(), encoder, remote + "_new", SETTINGS)


def test_vae_and_clip_load_from_a_bucket(encoder_folder, gcs, tmp_path, monkeypatch):
    """autoencoder.checkpoint=gs://…: the VAE and CLIP folders are mirrored locally and load the same."""
    from flax import nnx

    from gcs_emulator import BUCKET
    from mvd_jax import storage
    from mvd_jax.convert.diffusers_vae import load_vae, read_vae_config
    from mvd_jax.convert.transformers_clip import load_image_encoder

    monkeypatch.setenv("MVD_JAX_GCS_MIRROR", str(tmp_path / "mirror"))
    remote = storage.path(f"gs://{BUCKET}/models/encoders")
    for p in sorted(encoder_folder.rglob("*")):
        if p.is_file():
            (remote / p.relative_to(encoder_folder).as_posix()).write_bytes(p.read_bytes())
    assert read_vae_config(remote / "vae") == read_vae_config(encoder_folder / "vae")
    pairs = [(load_vae(remote / "vae"), load_vae(encoder_folder / "vae")),
             (load_image_encoder(remote / "image_encoder"), load_image_encoder(encoder_folder / "image_encoder"))]
    for from_bucket, from_disk in pairs:
        a, b = nnx.to_flat_state(nnx.state(from_bucket)), nnx.to_flat_state(nnx.state(from_disk))
        assert [k for k, _ in a] == [k for k, _ in b]
        for (k, x), (_, y) in zip(a, b):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(k))


def run_cli(module, *args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env, timeout=600)


def test_cache_cli_skips_bad_files(encoder_folder, tmp_path):
    copy_demo(tmp_path / "videos")
    make_bad_files(tmp_path / "videos")
    out = tmp_path / "cache"
    args = ["--videos", str(tmp_path / "videos"), "--checkpoint", str(encoder_folder), "--out", str(out),
            "--frames", "3", "--height", "32", "--width", "48", "--shard_size", "4", "--batch_size", "4"]
    proc = run_cli("mvd_jax.data.cache", *args)
    assert proc.returncode == 0, proc.stderr
    manifest = read_manifest(out)
    assert manifest["num_clips"] == 4 and len(manifest["skipped"]) == 5
    assert "done" in proc.stdout
    again = run_cli("mvd_jax.data.cache", *args)  # nothing left to do
    assert again.returncode == 0 and "wrote 0 shards" in again.stdout

    bad = run_cli("mvd_jax.data.cache", "--videos", str(tmp_path / "videos"), "--checkpoint", str(tmp_path),
                  "--out", str(tmp_path / "c2"))
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "vae/" in bad.stderr


def test_inspect_cli(tmp_path):
    copy_demo(tmp_path / "videos")
    make_bad_files(tmp_path / "videos")
    proc = run_cli("mvd_jax.data.inspect", "--videos", str(tmp_path / "videos"), "--frames", "14", "--height", "32",
                   "--width", "64", "--fps", "7", "--batch_size", "2", "--num_batches", "2")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "usable=4 skipped=5"
    assert sum(line.startswith("skip  ") for line in lines) == 5
    assert "too short" in proc.stdout and "empty file" in proc.stdout
    assert [line for line in lines if line.startswith("batch ")][0].startswith(
        "batch 0: video float32[2, 14, 32, 64, 3] range [-1.000")

    make_bad_files(tmp_path / "only_bad")
    none = run_cli("mvd_jax.data.inspect", "--videos", str(tmp_path / "only_bad"))
    assert none.returncode == 1 and none.stdout.strip().splitlines()[-1] == "usable=0 skipped=5"
    missing = run_cli("mvd_jax.data.inspect", "--videos", str(tmp_path / "nope"))
    assert missing.returncode == 2 and missing.stderr.startswith("error: ")


SPLIT_SCRIPT = """
import sys
import jax
import numpy as np
from mvd_jax.convert.diffusers_vae import load_vae
from mvd_jax.convert.transformers_clip import load_image_encoder
from mvd_jax.data.encode import ClipEncoder, clip_keys

folder = sys.argv[1]
vae, clip = load_vae(folder + "/vae"), load_image_encoder(folder + "/image_encoder")
rng = np.random.default_rng(0)
batch = {"video": rng.uniform(-1, 1, (3, 2, 32, 48, 3)).astype(np.float32),
         "fps": np.asarray([7.0, 25.0, 12.0], np.float32), "motion_bucket_id": np.asarray([127.0, 30.0, 200.0], np.float32)}
keys = clip_keys(0, [5, 6, 7])
one = ClipEncoder(vae, clip, devices=jax.devices()[:1])(batch, 0.02, keys)
two = ClipEncoder(vae, clip)(batch, 0.02, keys)
assert len(jax.devices()) == 2
worst = 0.0
for k in one:
    a, b = np.asarray(one[k], np.float64), np.asarray(two[k], np.float64)
    assert a.shape == b.shape and a.shape[0] == 3, (k, a.shape, b.shape)
    worst = max(worst, float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30)))
print(worst)
"""


def test_encoding_split_over_local_devices_changes_nothing(encoder_folder):
    """The cache encodes each batch split over the host's devices; 3 clips on 2 devices (one padded)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
               PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-c", SPLIT_SCRIPT, str(encoder_folder)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert float(proc.stdout.strip().splitlines()[-1]) <= 1e-6
