"""The package's layers run one way: models depend on nothing above them, the two training phases share a
module instead of importing each other, one settings module, one strict save for the three converters."""
import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mvd_jax"
# What the models must not reach: the packages built on them (and the settings that configure those).
ABOVE_MODELS = ("mvd_jax.convert", "mvd_jax.eval", "mvd_jax.train", "mvd_jax.data", "mvd_jax.export",
                "mvd_jax.settings")


def imported_modules(path: Path) -> set[str]:
    """Every module an `import` in the file names, at any depth (inside functions too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_importing_the_models_imports_nothing_above_them():
    """`python -c`: `import mvd_jax.models`, then every module of the package, loads nothing from the layers above."""
    code = ("import importlib, pkgutil, sys\n"
            "import mvd_jax.models\n"
            "print('after import mvd_jax.models:', *sorted(sys.modules))\n"
            "for m in pkgutil.iter_modules(mvd_jax.models.__path__):\n"
            "    importlib.import_module('mvd_jax.models.' + m.name)\n"
            "print('after every models module:', *sorted(sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("after ")]
    assert len(lines) == 2
    for line in lines:
        loaded = line.split(":", 1)[1].split()
        assert "mvd_jax.models.unet" in loaded
        assert not [m for m in loaded if m.startswith(ABOVE_MODELS)], line.split(":")[0]


def test_models_source_names_nothing_above_them():
    """The same, read from the source: an import inside a function counts too."""
    offenders = {str(p.relative_to(ROOT)): sorted(m for m in imported_modules(p) if m.startswith(ABOVE_MODELS))
                 for p in sorted((PACKAGE / "models").glob("*.py"))}
    assert not {p: m for p, m in offenders.items() if m}


def test_the_training_phases_share_a_module_instead_of_importing_each_other():
    adversarial = imported_modules(PACKAGE / "train" / "adversarial.py")
    programs = imported_modules(PACKAGE / "train" / "programs.py")
    assert not [m for m in adversarial | programs if m.startswith("mvd_jax.train.trainer")]
    assert "mvd_jax.train.programs" in adversarial
    assert "mvd_jax.train.programs" in imported_modules(PACKAGE / "train" / "trainer.py")


def test_one_settings_module_read_by_every_command():
    assert not (PACKAGE / "config.py").exists() and not (PACKAGE / "train" / "config.py").exists()
    # the settings sit below what reads them: nothing from the trainer, the data pipeline, eval or export
    below = imported_modules(PACKAGE / "settings.py")
    assert not [m for m in below if m.startswith(("mvd_jax.train", "mvd_jax.data", "mvd_jax.eval", "mvd_jax.export"))]
    readers = [PACKAGE / "train" / "__main__.py", PACKAGE / "train_compile.py", PACKAGE / "sample.py",
               PACKAGE / "eval" / "fvd.py", PACKAGE / "eval" / "ucf101.py", ROOT / "export" / "tflite.py"]
    assert [str(p.relative_to(ROOT)) for p in readers if "mvd_jax.settings" not in imported_modules(p)] == []


def test_the_three_converters_save_through_one_helper():
    for name in ("diffusers_unet.py", "diffusers_vae.py", "transformers_clip.py"):
        source = (PACKAGE / "convert" / name).read_text()
        names = imported_modules(PACKAGE / "convert" / name)
        assert "mvd_jax.convert.strict.save_module" in names, name
        assert "write_safetensors" not in source and "os.replace" not in source, name
        assert "check_tensors" not in source and "nnx.eval_shape" not in source, name  # the strict load is shared too


def test_tf_log_noise_is_dropped_by_exact_text_and_the_rest_kept(capfd):
    """export/tflite.py's fd-2 filter: TensorFlow's known C++ notices vanish, any other stderr line survives."""
    import os

    from mvd_jax.export.tflite import without_tf_log_noise

    with without_tf_log_noise():
        os.write(2, b"W0000 00:00:1764.5   123 tf_tfl_flatbuffer_helpers.cc:365] Ignored output_format.\n")
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, b"E0000 something a user must see\n")
    err = capfd.readouterr().err
    assert err == "E0000 something a user must see\n"
