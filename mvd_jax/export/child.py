"""One step of an export run by a child process: the TFLite converter (tflite.convert_in_child) and the
LiteRT interpreter that verifies a model (verify.run_litert_sets).

Both need a process of their own for the same reason — what they allocate (the converter's ≈ 23 bytes per
parameter, the interpreter's arena and the model) goes back to the system when the child exits, and a crash
of either (LiteRT on a malformed graph, the kernel's out-of-memory killer) cannot take the exporter with it
— and both fail the same ways, which `run_child` turns into one ExportError each:
- a timeout: "… did not finish within N s";
- an ExportError raised in the child: the child prints it as its last stderr line, prefixed by CHILD_ERROR
  (newlines escaped), and the caller raises it with that message, unchanged;
- a signal (SIGKILL: out of memory, most likely; `killed_hint` says what to do about it) or another exit
  status: named, with the last lines of the child's stderr.
"""
from __future__ import annotations

import signal
import subprocess
import sys

from mvd_jax.export import ExportError

CHILD_ERROR = "mvd_jax.export error: "


def report_error(error: ExportError) -> int:
    """In the child: hands `error` to the parent (see run_child); returns the exit status to use."""
    print(CHILD_ERROR + str(error).replace("\n", "\\n"), file=sys.stderr)
    return 1


def run_child(cmd: list[str], what: str, *, timeout_s: float, killed_hint: str = "") -> None:
    """Runs `cmd` (a child process of this package); returns when it exits with 0, else raises ExportError
    starting with `what` ("unet fp16: the converter process")."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise ExportError(f"{what} did not finish within {timeout_s:.0f} s") from None
    rc = proc.returncode
    if rc == 0:
        return
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    if lines and lines[-1].startswith(CHILD_ERROR):
        raise ExportError(lines[-1][len(CHILD_ERROR):].replace("\\n", "\n"))
    if rc < 0:
        how = f"was killed by {signal.Signals(-rc).name}" + (killed_hint if -rc == signal.SIGKILL else "")
    else:
        how = f"exited with status {rc}"
    raise ExportError(f"{what} {how}" + "".join("\n  " + t for t in lines[-8:]))
