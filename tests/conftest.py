"""Shared fixtures: small random diffusers UNets saved to disk, and a jitted JAX forward."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(__file__))  # for `import oracle`

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import oracle


@pytest.hookimpl(trylast=True)  # after pytest's tmpdir plugin has set up the run's base folder
def pytest_configure(config):
    """One persistent compilation cache per test run, shared by every test process (both pytest-xdist
    workers inherit this environment: they start after pytest_configure) and every subprocess they start
    (trainer, sampler, export and eval CLIs read JAX_COMPILATION_CACHE_DIR): XLA's CPU compiles are most
    of the suite's time, and the same UNet forwards and train steps recur across files and processes. The
    folder lives in this run's pytest base folder, so a run never reads another run's programs. In the test
    processes only compiles of ≥ 1 s (JAX's default) are stored; the `env` fixture stores every program."""
    if hasattr(config, "workerinput"):  # an xdist worker: the controller chose the folder
        return
    folder = config._tmp_path_factory.getbasetemp() / "jax_cache"
    folder.mkdir(exist_ok=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(folder)
    jax.config.update("jax_compilation_cache_dir", str(folder))  # a serial run: JAX is already imported here


@pytest.fixture(scope="session")
def diffusers_unets(tmp_path_factory):
    """name → (torch model, folder saved with save_pretrained) for each small oracle config; built lazily."""
    cache = {}

    def get(name):
        if name not in cache:
            model = oracle.random_diffusers_unet(oracle.SMALL_CONFIGS[name], seed=len(cache))
            folder = tmp_path_factory.mktemp(f"diffusers_{name}")
            model.save_pretrained(folder)
            cache[name] = (model, folder)
        return cache[name]

    return get


@nnx.jit
def _jit_forward(model, sample, timestep, context, added_time_ids, image_only_indicator):
    return model(sample, timestep, context, added_time_ids, image_only_indicator)


def jax_forward(model, inputs: dict, image_only_indicator=None) -> np.ndarray:
    """Runs the JAX UNet on oracle inputs given in diffusers' layout; returns diffusers' layout."""
    sample = jnp.asarray(inputs["sample"].transpose(0, 1, 3, 4, 2))  # (B,T,C,H,W) → (B,T,H,W,C)
    b, t = sample.shape[:2]
    iio = jnp.zeros((b, t)) if image_only_indicator is None else jnp.asarray(image_only_indicator)
    out = _jit_forward(model, sample, jnp.asarray(inputs["timestep"]), jnp.asarray(inputs["encoder_hidden_states"]),
                       jnp.asarray(inputs["added_time_ids"]), iio)
    return np.asarray(out).transpose(0, 1, 4, 2, 3)


@pytest.fixture(scope="module")
def env():
    """Environment for trainer subprocesses: CPU, the repo on the path, and the run's persistent
    compilation cache (pytest_configure) for every program, however fast its compile: a trainer program
    compiled once, by any test or process of this run, is not compiled again."""
    from pathlib import Path

    return dict(os.environ, JAX_PLATFORMS="cpu", JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                PYTHONPATH=str(Path(__file__).resolve().parents[1]))


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def gcs_server():
    """A local Cloud Storage server (tests/gcs_emulator.py, bucket gcs_emulator.BUCKET) in its own process,
    one per test process: GCS clients cache their endpoint (gcsfs instances, google-cloud-cpp under
    ArrayRecord), so the server and the environment pointing at it stay for the whole session."""
    from gcs_emulator import BUCKET, client_env

    port = _free_port()
    settings = client_env(port)
    script = os.path.join(os.path.dirname(__file__), "gcs_emulator.py")
    server = subprocess.Popen([sys.executable, script, str(port), BUCKET], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready", server.stderr.read()[-2000:]
        os.environ.update(settings)
        # epath decides once per process whether gs:// goes through TensorFlow (cached on first use of
        # any URI path, e.g. by an export test before this fixture): decide again under EPATH_USE_TF=0
        from etils.epath import gpath

        gpath._is_tf_installed.cache_clear()
        yield settings
    finally:
        server.kill()
        server.wait()


@pytest.fixture(scope="module")
def gcs(env, gcs_server):
    """The trainer-subprocess environment (`env`) pointing every GCS client at the local server; this
    process's clients point there too."""
    return dict(env, **gcs_server)


# The longest files first (longest-processing-time-first): under `pytest -n 2 --dist loadfile`
# (scripts/test.sh) whole files go to the workers in this order, each to the first worker that is free, so
# the two workers end within a minute of each other instead of one of them running a long file alone at
# the end. Order by the serial times measured on 2026-12-04 (seconds, one core each): adversarial 421,
# train_compile 330, mobilevd_options 300, multidevice 261, funnels 197, unet_vs_diffusers 189, train 181,
# pipeline 180, fvd 128, decoder_distill ≈ 130 (2026-12-05), stages 125, gcs_workdir 122, export 102,
# train_numerics 96; the rest after them.
LONG_FILES = ("test_adversarial_train.py", "test_train_compile.py", "test_mobilevd_options.py",
              "test_train_multidevice.py", "test_funnels.py", "test_unet_vs_diffusers.py", "test_train.py",
              "test_pipeline_vs_diffusers.py", "test_fvd.py", "test_decoder_distill.py", "test_stages.py",
              "test_gcs_workdir.py", "test_clockwork.py", "test_guidance_distill.py",
              "test_export.py", "test_train_numerics.py", "test_tables_paper.py", "test_discriminator.py",
              "test_vae_vs_diffusers.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    order = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda item: (rank.get(item.path.name, len(rank)), order[id(item)]))
