"""jax2tf → TFLite: one component function (functions.py) to a `.tflite` of TFLite builtins only.

    jax2tf.convert(fn, with_gradient=False)       StableHLO inside one XlaCallModule (jax2tf's only path)
    tf.function with named static TensorSpecs     the signature "serving_default": inputs and outputs named
    parameters as tf.Variables → a SavedModel     `save_graph`: the graph and its weights on disk, written
                                                  once and read by every precision's conversion
    TFLiteConverter.from_saved_model              supported_ops = [TFLITE_BUILTINS]: an op without a builtin
                                                  fails the conversion instead of becoming a Flex op
    fp16: optimizations=[DEFAULT], supported_types=[float16]   float16 weights, about half the file
    int8: optimizations=[DEFAULT] + representative dataset, TFLITE_BUILTINS_INT8 (w8a8, float I/O)

Memory (export/README.md "Memory to convert"). TensorFlow's converter needs ≈ 23 bytes per parameter, and
keeps much of it until its process ends. So the exporter saves the graph first,
releases its own copies of the weights (the JAX outputs verification compares with are computed before,
ExportFunction.keep_references), and converts a large model in a child process
(`python -m mvd_jax.export.tflite SAVED_MODEL PRECISION OUT`) that returns everything to the system when it
exits. A model too large even for that is cut into a chain of graphs (unet_chain.py).

The converter names a signature's tensors "serving_default_noise:0" / "StatefulPartitionedCall:0";
`name_io_tensors` renames them to the signature names (noise, x0) so AI Hub's input/output specs and any
tool that lists tensors show the names the docs use. (Skipped for models whose weights sit outside the
2 GB flatbuffer, where re-serialising would move them; the signature names still hold.)

The StableHLO that TF 2.21's converter reads must not need a newer StableHLO than it knows: FFT and
multi-operand sort, for example, fail as "'vhlo.fft_v1' op is not part of the vhlo support yet", and
custom calls (LAPACK, top_k) as "'tf.XlaCallModule' op is neither a custom op nor a flex op". Such
failures surface as ExportError with the converter's error lines.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mvd_jax.export import ExportError
from mvd_jax.export.child import report_error, run_child

if TYPE_CHECKING:  # the converter's child process (python -m mvd_jax.export.tflite) need not import JAX
    from mvd_jax.export.functions import ExportFunction
from mvd_jax.export.verify import Report, install_verified, install_verified_chain, partial_path

PRECISIONS = ("fp32", "fp16", "int8")
TFLITE_2GB = 2**31 - 1
LARGE_MODEL_BYTES = 3 * 2**29  # 1.5 GiB of weights: beyond it, weights go after the flatbuffer (see convert)
CHILD_PARAMS = 32_000_000  # above it, the converter runs in a child process (module docstring)
REPRESENTATIVE_SEEDS = range(1, 9)  # int8 calibration: the function's random inputs of these seeds


# TensorFlow's C++ code logs straight to the process's stderr (file descriptor 2), beneath Python's warnings
# and logging, and TF_CPP_MIN_LOG_LEVEL does not reach these lines. Each says nothing a user can act on, so
# they are dropped by their exact text while TensorFlow is imported and while the converter runs:
TF_LOG_NOISE = re.compile("|".join([
    # absl's notice before its first line, once per TensorFlow library (twice at import)
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    # at import: oneDNN's round-off differs from the reference order; verification bounds the result anyway
    r"I\d{4} [\d:.]+ +\d+ port\.cc:\d+\] oneDNN custom operations are on\. You may see slightly different "
    r"numerical results due to floating-point round-off errors from different computation orders\. To turn them "
    r"off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`\.",
    # every conversion: two legacy converter options the MLIR converter ignores (set by TF itself, not by us)
    r"W\d{4} [\d:.]+ +\d+ tf_tfl_flatbuffer_helpers\.cc:\d+\] Ignored (output_format|drop_control_dependency)\.",
]))


@contextlib.contextmanager
def without_tf_log_noise():
    """Runs the block with file descriptor 2 sent to a temporary file, then passes every line of it that is
    not TF_LOG_NOISE on to the real stderr. A file rather than a pipe drained by a thread: the converter's
    C++ code may write while holding the GIL, and a full pipe would then never be drained."""
    sys.stderr.flush()
    real_stderr = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(real_stderr, 2)
            os.close(real_stderr)
            captured.seek(0)
            kept = [line for line in captured
                    if not TF_LOG_NOISE.fullmatch(line.decode(errors="replace").rstrip("\r\n"))]
            if kept:
                os.write(2, b"".join(kept))


def _tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
    with without_tf_log_noise():
        import tensorflow as tf

    return tf


def concrete_function(f: ExportFunction):
    """(a tf.Module holding the parameters as tf.Variables, the concrete function of its signature)."""
    tf = _tf()
    from jax.experimental import jax2tf

    module = tf.Module()
    module.params = [tf.Variable(p, trainable=False, name=f"p{i}") for i, p in enumerate(f.params)]
    converted = jax2tf.convert(f.fn, with_gradient=False, native_serialization_platforms=("cpu",))
    specs = [tf.TensorSpec(i.shape, getattr(tf, i.dtype), name=i.name) for i in f.inputs]

    @tf.function(autograph=False, input_signature=specs)
    def serve(*args):
        return converted(module.params, *args)

    module.serve = serve
    # Attention is traced in XLA's batched form: export/functions.py builds every function's module with it.
    return module, serve.get_concrete_function()


def save_graph(f: ExportFunction, folder) -> Path:
    """`f` as a SavedModel in `folder` (signature "serving_default", the parameters as its variables): what
    every conversion of `f` reads. The tf.Variables live only while it is written. For int8 calibration the
    function's random inputs go beside it (representative/*.npz), so a converter in another process has them."""
    tf = _tf()
    folder = Path(folder)
    module, fn = concrete_function(f)
    with without_tf_log_noise():
        tf.saved_model.save(module, str(folder), signatures={"serving_default": fn})
    # (TensorFlow does not give the variables' memory back to the system after this: 4 bytes per parameter
    # stay resident in this process — measured with bare tf.Variables too, export/README.md.)
    del module, fn
    return folder


def release_memory() -> None:
    """Gives the memory of released weights back to the system before a converter process starts: Python's
    cycles collected, JAX's compiled programs (and the buffers they keep) dropped, and glibc's free heap
    returned (most weight arrays are below its mmap threshold, so freeing them alone leaves the process's
    resident size where it was: measured 1.59 → 0.99 GiB on a 47 M-parameter UNet, export/README.md)."""
    import ctypes
    import gc

    import jax

    gc.collect()
    jax.clear_caches()
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the allocator keeps what it keeps
        pass


def write_representative(f: ExportFunction, folder: Path) -> None:
    rep = folder / "representative"
    if not rep.is_dir():
        rep.mkdir()
        for s in REPRESENTATIVE_SEEDS:
            np.savez(rep / f"{s}.npz", **f.sample_inputs(s))


def _representative(folder: Path):
    files = sorted((folder / "representative").glob("*.npz"), key=lambda p: int(p.stem))
    if not files:
        raise ExportError(f"int8 needs calibration inputs beside the graph ({folder / 'representative'})")
    for path in files:
        with np.load(path) as data:
            yield {k: data[k] for k in data.files}


def weight_bytes(f: ExportFunction, precision: str) -> int:
    return f.num_params * {"fp32": 4, "fp16": 2, "int8": 1}[precision]


def convert_saved_model(folder, precision: str, *, buffer_offsets: bool, name: str = "") -> bytes:
    """The `.tflite` bytes of the SavedModel `save_graph` wrote, at `precision` ("fp32", "fp16" or "int8").

    `buffer_offsets` stores the weights after the flatbuffer instead of inside it — the only way past the
    2 GB flatbuffer limit (an SVD-size UNet is 6 GB in fp32), read by LiteRT 2.3. The converter then also
    skips its Python-side re-serialisations (buffer de-duplication, metadata), which lowers its peak memory
    (export/README.md).
    """
    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    tf = _tf()
    folder = Path(folder)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(folder), signature_keys=["serving_default"])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter._experimental_use_buffer_offset = bool(buffer_offsets)  # TF 2.21 has no public switch for it
    if precision == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: _representative(folder)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    try:
        with warnings.catch_warnings():  # int8 calibration runs TF's own (deprecated) interpreter
            warnings.filterwarnings("ignore", message=r"[\s\S]*tf.lite.Interpreter is deprecated")
            with without_tf_log_noise():
                model = converter.convert()
    except Exception as e:  # ConverterError and friends: the graph cannot be expressed in builtins
        lines = [line.strip() for line in str(e).splitlines() if "error:" in line] or str(e).splitlines()[:1]
        detail = "".join("\n  " + line.split("error:", 1)[-1].strip() for line in dict.fromkeys(lines))
        raise ExportError(f"{name or folder.name} {precision}: the TFLite converter refused the graph "
                          f"({type(e).__name__}){detail}") from None
    return name_io_tensors(model)


def convert(f: ExportFunction, precision: str, *, graph=None, buffer_offsets: bool | None = None) -> bytes:
    """The `.tflite` bytes of `f` at `precision`, converted in this process; `graph` reuses the SavedModel of
    an earlier `save_graph(f, …)` (default: one written to a temporary folder). `buffer_offsets` defaults to
    on when the weights pass LARGE_MODEL_BYTES."""
    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if buffer_offsets is None:
        buffer_offsets = weight_bytes(f, precision) > LARGE_MODEL_BYTES
    with contextlib.ExitStack() as stack:
        if graph is None:
            graph = save_graph(f, stack.enter_context(tempfile.TemporaryDirectory(prefix="mvd_graph_")))
        if precision == "int8":
            write_representative(f, Path(graph))
        return convert_saved_model(graph, precision, buffer_offsets=buffer_offsets, name=f.name)


def convert_in_child(f: ExportFunction, precision: str, graph, out_path, *, buffer_offsets: bool | None = None,
                     timeout_s: float = 6 * 3600) -> None:
    """`convert`, run by a child process that writes the model to `out_path`: the converter's memory goes back
    to the system when it exits, and this process never holds the flatbuffer."""
    if buffer_offsets is None:
        buffer_offsets = weight_bytes(f, precision) > LARGE_MODEL_BYTES
    if precision == "int8":
        write_representative(f, Path(graph))
    cmd = [sys.executable, "-m", "mvd_jax.export.tflite", str(graph), precision, str(out_path), f.name]
    cmd += ["--buffer-offsets"] if buffer_offsets else []
    run_child(cmd, f"{f.name} {precision}: the converter process", timeout_s=timeout_s,
              killed_hint=" — out of memory? (export/README.md: memory to convert; --unet-parts cuts the UNet "
                          "into smaller graphs)")


def name_io_tensors(model: bytes) -> bytes:
    """The model with each signature input/output tensor renamed to its signature name."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    if len(model) >= TFLITE_2GB:
        return model
    m = schema.ModelT.InitFromPackedBuf(model, 0)
    if any(b.offset for b in m.buffers or []):
        return model
    for sig in m.signatureDefs or []:
        tensors = m.subgraphs[sig.subgraphIndex].tensors
        for tmap in list(sig.inputs or []) + list(sig.outputs or []):
            tensors[tmap.tensorIndex].name = tmap.name
    builder = flatbuffers.Builder(len(model) + 4096)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def export_component(f: ExportFunction, precision: str, out_dir, *, graph=None, tolerance: float | None = None,
                     seed: int = 0, converter=None, in_child: bool | None = None) -> Report:
    """Convert and install `OUT_DIR/<name>_<precision>.tflite` if it verifies (verify.install_verified).

    `graph`: the function's SavedModel (save_graph), shared by its precisions; `in_child` (default: above
    CHILD_PARAMS parameters) converts in a child process (convert_in_child). Returns the report; raises
    ExportError (the report, as far as it got, is attached as `e.report`). `converter(f, precision) -> bytes`
    replaces the conversion (tests use it to hand in a forbidden graph).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"{f.name}_{precision}.tflite"
    remove_stale(out_dir, f.name, precision)
    partial = partial_path(final)
    report = Report(f.name, precision, num_params=f.num_params)
    try:
        t0 = time.perf_counter()
        try:
            if converter is not None:
                partial.write_bytes(converter(f, precision))
            else:
                _convert_into(partial, f, precision, graph, in_child)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        report.convert_s = time.perf_counter() - t0
        return install_verified(partial, final, f, precision, tolerance=tolerance, seed=seed, report=report)
    except ExportError as e:
        report.error = str(e)
        e.report = report
        raise


def export_chain(chain, precision: str, out_dir, *, graphs, tolerance: float | None = None, seed: int = 0,
                 in_child: bool | None = None, progress=None) -> Report:
    """`export_component` for a UNet chain (unet_chain.py): every part converted from its graph (`graphs`, in
    order), then all of them installed as `<part name>_<precision>.tflite` if the chain verifies end to end
    (verify.install_verified_chain), none otherwise. `progress(line)` hears of each part (a long export's
    only sign of life)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = chain.full.name
    remove_stale(out_dir, name, precision)
    finals = [out_dir / f"{part.name}_{precision}.tflite" for part in chain.parts]
    report = Report(name, precision, num_params=sum(part.num_params for part in chain.parts))
    try:
        t0 = time.perf_counter()
        try:
            for part, graph, final in zip(chain.parts, graphs, finals):
                t1 = time.perf_counter()
                _convert_into(partial_path(final), part, precision, graph, in_child)
                if progress:
                    progress(f"{part.name} {precision}: converted in {time.perf_counter() - t1:.1f} s "
                             f"({part.num_params / 1e6:.1f} M parameters, "
                             f"{partial_path(final).stat().st_size / 2**20:.1f} MiB)")
        except BaseException:
            for final in finals:
                partial_path(final).unlink(missing_ok=True)
            raise
        report.convert_s = time.perf_counter() - t0
        if progress:
            progress(f"{name} {precision}: verifying the chain of {len(finals)} with LiteRT")
        return install_verified_chain(finals, chain, precision, tolerance=tolerance, seed=seed, report=report)
    except ExportError as e:
        report.error = str(e)
        e.report = report
        raise


def _convert_into(partial: Path, f: ExportFunction, precision: str, graph, in_child: bool | None) -> None:
    """Converts `f` into the file `partial`: in a child process (`in_child`; default: above CHILD_PARAMS
    parameters), which reads `graph`, or in this process."""
    if f.num_params > CHILD_PARAMS if in_child is None else in_child:
        if graph is None:
            raise ValueError("a conversion in a child process reads the graph save_graph wrote: pass graph=")
        convert_in_child(f, precision, graph, partial)
    else:
        partial.write_bytes(convert(f, precision, graph=graph))


def remove_stale(out_dir: Path, name: str, precision: str) -> None:
    """Deletes an earlier export's `name` model at `precision` — one graph or a chain's parts — so that a stale
    model never passes for this export's result."""
    (out_dir / f"{name}_{precision}.tflite").unlink(missing_ok=True)
    for part in out_dir.glob(f"{name}_part*of*_{precision}.tflite"):
        part.unlink()


def _child_main(argv) -> int:
    """The converter process of convert_in_child: SAVED_MODEL PRECISION OUT NAME [--buffer-offsets]."""
    graph, precision, out, name, *flags = argv
    try:
        model = convert_saved_model(graph, precision, buffer_offsets="--buffer-offsets" in flags, name=name)
    except ExportError as e:
        return report_error(e)
    Path(out).write_bytes(model)
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
