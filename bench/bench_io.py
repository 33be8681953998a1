"""The benchmarks' one way of writing their results (`--out` / `--json`)."""
from __future__ import annotations

import json
from pathlib import Path


def write_json(path, result) -> None:
    """`result` as indented JSON at `path` (parent folders created), and a line saying where."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")
