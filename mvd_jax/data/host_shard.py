"""Per-host sharding of a Grain MapDataset in blocks of the per-host batch.

With P hosts each taking b examples per step, global batch k is examples [k·b·P, (k+1)·b·P) of the
(shuffled, repeated) stream, and host p takes the contiguous block [k·b·P + p·b, k·b·P + (p+1)·b).
So the global batch a multi-host run assembles is, position for position, the batch one host would
load alone — training on 1 process and on P processes sees the same examples in the same order, and
per-example randomness keyed by the global position (crops, σ, noise) agrees too. The hosts' shards
are disjoint and their union is the stream.
"""
from __future__ import annotations

import grain


class HostBlockShard(grain.MapDataset):
    def __init__(self, parent: grain.MapDataset, *, block: int, process_index: int, process_count: int):
        super().__init__(parent)
        if block < 1 or not 0 <= process_index < process_count:
            raise ValueError(f"bad host shard: block {block}, process {process_index} of {process_count}")
        self._block, self._index, self._count = block, process_index, process_count
        n = len(parent)
        stride = block * process_count
        full, rem = divmod(n, stride)
        self._length = full * block + min(max(rem - process_index * block, 0), block)

    def __len__(self) -> int:
        return self._length

    def parent_index(self, j: int) -> int:
        k, r = divmod(j, self._block)
        return k * self._block * self._count + self._index * self._block + r

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        return self._parent[self.parent_index(index)]

    def __str__(self) -> str:
        return f"HostBlockShard(block={self._block}, host={self._index}/{self._count})"
