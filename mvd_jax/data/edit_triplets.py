"""(input image, instruction, edited image) triplets for the editing phases (train/edit_training.py): the form of
the InstructPix2Pix dataset, from a JSON-lines manifest (`edit.triplets`), one triplet per line:

    {"input": "0001_in.png", "edited": "0001_out.png", "instruction": "make it look like a watercolor"}

Paths are relative to the manifest's folder (or absolute, or gs://). To use the InstructPix2Pix dataset
(`timbrooks/instructpix2pix-clip-filtered`: columns original_image, edit_prompt, edited_image), write its images to
files and one line per row — a few lines of `datasets` code, in README "Video editing".

Batches: both images resized to cover (height, width) and centre-cropped the same way, in [−1, 1]; the
instruction tokenised (`tokenize(text) → (L,) int32`). Shuffled with a seed, repeated, split per host in blocks
of the per-host batch, resumable through Grain's iterator state — like the video loaders. A manifest line is
checked when the manifest is read (keys, types); an image that cannot be read fails its batch with a UserError
naming the file.
"""
from __future__ import annotations

import grain
import numpy as np

from mvd_jax import storage
from mvd_jax.errors import UserError

KEYS = ("input", "edited", "instruction")


def read_triplets(path) -> list[dict]:
    """The manifest's triplets, image paths resolved; a UserError for a missing file or a malformed line."""
    manifest = storage.path(path)
    if not manifest.is_file():
        raise UserError(f"edit.triplets {path}: no such manifest file")
    from mvd_jax.data.manifest import jsonl_rows

    records = []
    for n, record in jsonl_rows(manifest):
        if any(not isinstance(record.get(k), str) or not record[k] for k in KEYS):
            raise UserError(f"{path}:{n}: a triplet needs non-empty strings {list(KEYS)}, got {str(record)[:120]}")
        resolve = lambda p: p if (p.startswith("gs://") or p.startswith("/")) else str(manifest.parent / p)
        records.append({"input": resolve(record["input"]), "edited": resolve(record["edited"]),
                        "instruction": record["instruction"]})
    if not records:
        raise UserError(f"edit.triplets {path} holds no triplet")
    return records


def load_image(path: str, height: int, width: int) -> np.ndarray:
    """(height, width, 3) float32 in [−1, 1]: resized to cover the size, centre-cropped."""
    from PIL import Image, UnidentifiedImageError

    try:
        with storage.path(path).open("rb") as f:
            image = Image.open(f)
            image.load()
    except (FileNotFoundError, UnidentifiedImageError, OSError) as e:
        raise UserError(f"cannot read the triplet image {path}: {e}") from None
    image = image.convert("RGB")
    scale = max(height / image.height, width / image.width)
    size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    image = image.resize(size, Image.BICUBIC)
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    array = np.asarray(image.crop((left, top, left + width, top + height)), np.float32)
    return array / 127.5 - 1.0


class TripletLoader:
    """Batches {"input", "edited": (B, H, W, 3) float32 in [−1, 1], "ids": (B, L) int32} from triplet records."""

    def __init__(self, records: list[dict], tokenize, *, height: int, width: int, batch_size: int, seed: int = 0,
                 num_epochs: int | None = None, process_index: int | None = None, process_count: int | None = None):
        from mvd_jax.data.host_shard import HostBlockShard
        from mvd_jax.data.loader import LoaderOptions, _host

        index, count = _host(LoaderOptions(process_index=process_index, process_count=process_count))

        def load(record):
            return {"input": load_image(record["input"], height, width),
                    "edited": load_image(record["edited"], height, width),
                    "ids": np.asarray(tokenize(record["instruction"]), np.int32)}

        ds = grain.MapDataset.source(records).shuffle(seed=seed).repeat(num_epochs)
        ds = HostBlockShard(ds, block=batch_size, process_index=index, process_count=count).map(load)
        self.dataset = ds.to_iter_dataset().batch(batch_size, drop_remainder=True)
        self.num_triplets = len(records)

    def __iter__(self):
        return iter(self.dataset)
