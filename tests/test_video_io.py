"""Video writing: playable files with the right frames, no partial files on failure."""
import av
import numpy as np
import pytest
from PIL import Image

from mvd_jax.errors import UserError
from mvd_jax.video_io import write_video


def test_mp4_round_trip(tmp_path):
    # smooth content (H.264 with 4:2:0 chroma cannot reproduce per-pixel noise)
    t, y, x = np.meshgrid(np.arange(6), np.linspace(0, 1, 32), np.linspace(0, 1, 48), indexing="ij")
    frames = np.stack([x, y, (x + y + t / 6) / 3], axis=-1)
    path = write_video(tmp_path / "v.mp4", frames, fps=7)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert float(stream.average_rate) == 7
    assert len(decoded) == 6 and decoded[0].shape == (32, 48, 3)
    # lossy but close: mean error of a few levels out of 255
    assert np.abs(decoded[3].astype(float) - np.round(frames[3] * 255)).mean() < 3


def test_gif(tmp_path):
    frames = np.zeros((3, 16, 24, 3), np.uint8)
    frames[1] = 255
    path = write_video(tmp_path / "v.gif", frames, fps=5)
    with Image.open(path) as gif:
        assert gif.n_frames == 3 and gif.size == (24, 16)


def test_bad_suffix_and_no_partial_file(tmp_path):
    with pytest.raises(UserError, match=".mp4 or .gif"):
        write_video(tmp_path / "v.avi", np.zeros((2, 8, 8, 3)), fps=7)
    with pytest.raises(Exception):
        write_video(tmp_path / "v.mp4", np.zeros((2, 8, 3)), fps=7)  # not (T, H, W, 3)
    assert list(tmp_path.iterdir()) == []
