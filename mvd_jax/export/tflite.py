"""jax2tf → TFLite: one component function (functions.py) to a `.tflite` of TFLite builtins only.

    jax2tf.convert(fn, with_gradient=False)       StableHLO inside one XlaCallModule (jax2tf's only path)
    tf.function with named static TensorSpecs     the signature "serving_default": inputs and outputs named
    parameters as tf.Variables                    the program stays small; the converter freezes them
    TFLiteConverter.from_concrete_functions       supported_ops = [TFLITE_BUILTINS]: an op without a builtin
                                                  fails the conversion instead of becoming a Flex op
    fp16: optimizations=[DEFAULT], supported_types=[float16]   float16 weights, about half the file
    int8: optimizations=[DEFAULT] + representative dataset, TFLITE_BUILTINS_INT8 (w8a8, float I/O)

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

from mvd_jax.export import ExportError
from mvd_jax.export.functions import ExportFunction
from mvd_jax.export.verify import Report, install_verified

PRECISIONS = ("fp32", "fp16", "int8")
TFLITE_2GB = 2**31 - 1
LARGE_MODEL_BYTES = 3 * 2**29  # 1.5 GiB of weights: beyond it, weights go after the flatbuffer (see convert)


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


def weight_bytes(f: ExportFunction, precision: str) -> int:
    return f.num_params * {"fp32": 4, "fp16": 2, "int8": 1}[precision]


def convert(f: ExportFunction, precision: str, *, traced=None, representative_seeds=range(1, 9),
            buffer_offsets: bool | None = None) -> bytes:
    """The `.tflite` bytes of `f` at `precision` ("fp32", "fp16" or "int8"). `traced` reuses the result
    of `concrete_function(f)` across precisions.

    `buffer_offsets` (default: when the weights pass LARGE_MODEL_BYTES) stores the weights after the
    flatbuffer instead of inside it — the only way past the 2 GB flatbuffer limit (an SVD-size UNet is
    6 GB in fp32), read by LiteRT 2.3. The converter then also skips its Python-side re-serialisations
    (buffer de-duplication, metadata), which lowers its peak memory (export/README.md).
    """
    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    tf = _tf()
    module, fn = traced or concrete_function(f)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if buffer_offsets is None:
        buffer_offsets = weight_bytes(f, precision) > LARGE_MODEL_BYTES
    converter._experimental_use_buffer_offset = bool(buffer_offsets)  # TF 2.21 has no public switch for it
    if precision == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: (f.sample_inputs(s) for s in representative_seeds)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    try:
        with warnings.catch_warnings():  # int8 calibration runs TF's own (deprecated) interpreter
            warnings.filterwarnings("ignore", message=r"[\s\S]*tf.lite.Interpreter is deprecated")
            with without_tf_log_noise():
                model = converter.convert()
    except Exception as e:  # ConverterError and friends: the graph cannot be expressed in builtins
        lines = [line.strip() for line in str(e).splitlines() if "error:" in line] or str(e).splitlines()[:1]
        detail = "".join("\n  " + line.split("error:", 1)[-1].strip() for line in dict.fromkeys(lines))
        raise ExportError(f"{f.name} {precision}: the TFLite converter refused the graph "
                          f"({type(e).__name__}){detail}") from None
    return name_io_tensors(model)


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


def export_component(f: ExportFunction, precision: str, out_dir, *, traced=None, tolerance: float | None = None,
                     seed: int = 0, converter=None) -> Report:
    """Convert and install `OUT_DIR/<name>_<precision>.tflite` if it verifies (verify.install_verified).

    Returns the report; raises ExportError (the report, as far as it got, is attached as `e.report`).
    `converter(f, precision) -> bytes` replaces `convert` (tests use it to hand in a forbidden graph).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"{f.name}_{precision}.tflite"
    final.unlink(missing_ok=True)  # a stale model must not pass for this export's result
    report = Report(f.name, precision, num_params=f.num_params)
    try:
        t0 = time.perf_counter()
        model = converter(f, precision) if converter else convert(f, precision, traced=traced)
        report.convert_s = time.perf_counter() - t0
        return install_verified(model, final, f, precision, tolerance=tolerance, seed=seed, report=report)
    except ExportError as e:
        report.error = str(e)
        e.report = report
        raise

