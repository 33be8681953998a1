"""JAX's persistent compilation cache for this repo's command-line tools.

A CLI run compiles the same programs as the previous run with the same shapes (the sampler's UNet
step, the VAE decoder, the trainer's step, the export's functions); with the cache on, the second run
loads the compiled executables from disk instead of recompiling (tens of seconds to minutes on CPU).
The cache lives in ~/.cache/mvd_jax/jax unless JAX_COMPILATION_CACHE_DIR names another folder (JAX
reads that variable itself); MVD_JAX_COMPILE_CACHE=0 turns it off.
"""
from __future__ import annotations

import os

DEFAULT_DIR = os.path.join("~", ".cache", "mvd_jax", "jax")


def enable_persistent_cache() -> str | None:
    """Turns the cache on for this process (call before the first compile); returns its folder or None."""
    import jax

    if os.environ.get("MVD_JAX_COMPILE_CACHE") == "0":
        return None
    folder = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.expanduser(DEFAULT_DIR)
    jax.config.update("jax_compilation_cache_dir", folder)
    return folder
