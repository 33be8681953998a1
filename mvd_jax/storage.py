"""Run directories that may live on local disk or in a Cloud Storage bucket (`gs://bucket/run`).

The trainer's workdir (checkpoints, config.json, metrics.jsonl, TensorBoard events, samples, compile
report, bad-video report), a previous stage's run named in `init_from`, and the run read by
`mvd_jax.sample --unet` / `export.tflite --run` all go through `path()`. The libraries underneath
already speak gs://: Orbax and TensorStore write the arrays (TensorStore's own GCS driver), and
`etils.epath` the small files — through TensorFlow's `tf.io.gfile` where TensorFlow is installed,
otherwise through fsspec's `gcsfs` (a core dependency). Credentials are the usual Google ones (the TPU
VM's service account, or `gcloud auth application-default login`).

Object stores differ from a disk in two ways that matter here, handled by the callers:
- no append: a remote metrics.jsonl is rewritten whole at each logged step (train/metrics.py);
- writers that need a real file (PyAV's mp4 muxer) write to a local temporary file that is then
  copied up (`local_file_for`).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

from etils import epath


def is_remote(p) -> bool:
    """True for a URI such as gs://bucket/x (anything with a scheme), false for a local path."""
    return "://" in os.fspath(p)


def path(p) -> epath.Path:
    """`p` as an epath.Path: pathlib semantics for local paths (made absolute, so a later chdir does not
    move the run), the bucket's for gs://."""
    p = epath.Path(p)
    return p if is_remote(p) else epath.Path(os.path.abspath(os.fspath(p)))


@contextlib.contextmanager
def local_file_for(target):
    """Yields a local file path to write; on leaving the block it is copied to `target` (local or
    remote). For writers that only take file names."""
    target = path(target)
    if not is_remote(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        yield epath.Path(target)
        return
    with tempfile.TemporaryDirectory(prefix="mvd_jax_upload_") as tmp:
        local = epath.Path(tmp) / target.name
        yield local
        with open(local, "rb") as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst)


def append_text(target, text: str):
    """Appends to a small text file: a real append on disk; read + rewrite in a bucket (objects are
    immutable). For rare writes such as the bad-video report, not for logs written every step."""
    target = path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not is_remote(target):
        with open(target, "a") as f:
            f.write(text)
        return
    old = target.read_text() if target.exists() else ""
    target.write_text(old + text)


def mirror_root() -> str:
    return os.environ.get("MVD_JAX_GCS_MIRROR") or os.path.join(os.path.expanduser("~"), ".cache", "mvd_jax", "gcs")


def local_mirror(p):
    """A local path holding the same file or folder as `p`: `p` itself when local; for gs://bucket/x a
    copy under mirror_root()/bucket/x (MVD_JAX_GCS_MIRROR moves it), downloaded once — files already
    there with the bucket's size are kept. For readers that need real files: the diffusers/safetensors
    folders (SVD UNet, VAE, CLIP) that `init_from` and `autoencoder.checkpoint` name. Each file lands
    under a temporary name and is renamed when complete, so an interrupted download is redone."""
    if not is_remote(p):
        return epath.Path(p)
    remote = path(p)
    scheme, rest = os.fspath(remote).split("://", 1)
    local = epath.Path(mirror_root()) / scheme / rest
    files = [remote] if remote.is_file() else list(files_under(remote)) if remote.is_dir() else None
    if files is None:
        raise FileNotFoundError(f"{p} does not exist")
    for src in files:
        dst = local / src.relative_to(remote) if src != remote else local
        size = src.stat().length
        if dst.exists() and dst.stat().length == size:
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.parent / (dst.name + ".part")
        with src.open("rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, length=16 << 20)
        os.replace(tmp, dst)
    return local


def files_under(folder):
    """Every file under a folder, recursively: one listing per folder (epath refuses `**` globs on GCS,
    where they could mean thousands of requests)."""
    for p in folder.iterdir():
        if p.is_dir():
            yield from files_under(p)
        else:
            yield p
