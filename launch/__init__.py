"""TPU pod launch scripts: python -m launch.tpu_vm, python -m launch.xpk, launch/scaling_table.py (launch/README.md)."""
