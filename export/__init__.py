"""Export entry points: python -m export.tflite (export/README.md); the logic lives in mvd_jax.export."""
