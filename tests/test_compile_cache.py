"""The CLIs' persistent compilation cache (mvd_jax/compile_cache.py): a second process with the same
program loads it from the cache folder instead of compiling; MVD_JAX_COMPILE_CACHE=0 turns it off."""
import os
import subprocess
import sys

PROGRAM = """
import jax, jax.numpy as jnp
from jax._src import monitoring
from mvd_jax.compile_cache import enable_persistent_cache
hits = []
monitoring.register_event_listener(lambda name, **kw: hits.append(name) if name.endswith("cache_hits") else None)
print("folder", enable_persistent_cache())
jax.jit(lambda x: jnp.sin(x) @ x.T + 3.0)(jnp.ones((64, 64))).block_until_ready()
print("hits", len(hits))
"""


def run(env_extra, home):
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}  # conftest sets one
    env.update(HOME=str(home), JAX_PLATFORMS="cpu", JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", **env_extra)
    out = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if line.startswith(("folder", "hits")))
    return lines["folder"], int(lines["hits"])


def test_second_run_hits_the_cache(tmp_path):
    folder, hits = run({}, tmp_path)
    assert folder == str(tmp_path / ".cache" / "mvd_jax" / "jax") and hits == 0
    assert any(os.scandir(folder))  # the compiled program was written
    again, hits = run({}, tmp_path)
    assert again == folder and hits >= 1  # every program of the first run (jnp.ones' too) is a hit now


def test_env_names_the_folder_or_turns_it_off(tmp_path):
    mine = tmp_path / "mine"
    assert run({"JAX_COMPILATION_CACHE_DIR": str(mine)}, tmp_path)[0] == str(mine)
    assert any(os.scandir(mine))
    assert run({"MVD_JAX_COMPILE_CACHE": "0"}, tmp_path / "other") == ("None", 0)
    assert not (tmp_path / "other" / ".cache").exists()
