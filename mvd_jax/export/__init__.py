"""Export to the phone: pure functions of the trained models (functions.py), jax2tf → TFLite conversion
(tflite.py), verification against JAX with LiteRT (verify.py) and Qualcomm AI Hub jobs (ai_hub.py).

The command line is `python -m export.tflite` (export/README.md). Only functions.py is importable without
the [export] extra (TensorFlow, ai-edge-litert, qai-hub); the other modules need it.
"""
from mvd_jax.errors import UserError


class ExportError(UserError):
    """An export that must not ship: the converter refused the graph, a non-builtin op appeared, the
    LiteRT output is off by more than the precision's tolerance, or the runtime crashed on it."""
