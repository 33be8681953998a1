"""Every setting of every command is checked before any work starts.

The walk takes its keys from the schema itself (mvd_jax/settings.py: schema_keys() and RULES; each command's
argparse parser; the trainer's own flags), so a key added tomorrow is walked tomorrow, and a numeric or
enumerated setting without a declared rule fails the walk. Each out-of-range value (below the minimum,
0 and −1 where not allowed, NaN and ±inf, one past a maximum; an unknown name for every enumerated key)
goes through the command's real entry point, `main(argv)`, in this one process — launching a process per
key would cost seconds of imports each — and must give exactly one `error:` line naming the key, the
value and what is allowed, exit status 2, and nothing written: no run directory or output created, the
trainer never entered, nothing compiled (a JAX compile listener counts backend compiles). Three real
subprocesses prove the same end to end for the trainer, the sampler and mvd_jax.train_compile.
"""
import contextlib
import importlib
import io
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import pytest
from absl import flags

from mvd_jax import settings
from mvd_jax.settings import Choice, Each, Flag, Float, Int, NameOrPattern, Subset, Text

ROOT = Path(__file__).resolve().parents[1]
DEMO = f"{ROOT / 'configs' / 'demo.py'}:micro"
TRAIN_MAIN = importlib.import_module("mvd_jax.train.__main__")
UNKNOWN = "no_such_name"
# The time to the error: a config file loaded and resolved takes milliseconds (the first case also imports
# the model configs), a compile of the micro train step takes tens of seconds. The bound leaves room for a
# machine shared with a parallel test run; the compile listener is the exact check.
SLOW_S = 10.0


# =============================================================================================
# Out-of-range values, derived from a rule
# =============================================================================================
def bad_values(rule) -> list:
    """Values the rule must refuse: below its minimum, 0 and −1 where not allowed, NaN/±inf for numbers,
    one past its maximum, an unknown name for a set of names."""
    if isinstance(rule, Int):
        out = []
        if rule.min is not None:
            out += [rule.min - 1] + [v for v in (0, -1) if v < rule.min]
        if rule.max is not None:
            out.append(rule.max + 1)
        if rule.also:
            out.append(min(rule.also) - 1)
        out = [v for v in dict.fromkeys(out) if v not in rule.also]
        return out + ["nan"]  # not an integer at all (a type error, named like a range error)
    if isinstance(rule, Float):
        out = [math.nan]
        if rule.min is not None:
            out += [rule.min if rule.min_open else rule.min - 1] + [v for v in (0.0, -1.0) if v < rule.min
                                                                     or (rule.min_open and v == rule.min)]
        else:
            out.append(-math.inf)
        out.append(math.inf if rule.max is None else (rule.max if rule.max_open else rule.max + 1))
        return list(dict.fromkeys(out))
    if isinstance(rule, (Choice, Subset)):
        return [UNKNOWN] if all(isinstance(v, (str, type(None))) for v in rule.values) else [max(rule.values) + 1]
    if isinstance(rule, NameOrPattern):
        return ["("]  # neither a group name nor a regular expression
    if isinstance(rule, Flag):
        return ["maybe"]
    if isinstance(rule, Each):
        return [[v] for v in bad_values(rule.rule)]
    if isinstance(rule, Text):
        return []  # any text: what it names is checked where it is opened
    raise AssertionError(f"no out-of-range values known for rule {rule!r}: teach bad_values() about it")


def walked(rule) -> bool:
    """Numeric and enumerated settings are walked (free text is not)."""
    return not isinstance(rule, Text) and not (isinstance(rule, Each) and isinstance(rule.rule, Text))


def as_text(value) -> str:
    return value if isinstance(value, str) else repr(value)


# =============================================================================================
# Calling a command in-process: stderr, exit status, time, and proof that no work started
# =============================================================================================
class NoWork:
    """Counts JAX backend compiles and calls into the trainer while active."""

    def __init__(self, monkeypatch):
        self.compiles = 0
        self.trainer_calls = 0

        def count(event, *args, **kwargs):
            if "backend_compile" in event:
                self.compiles += 1

        jax.monitoring.register_event_duration_secs_listener(count)
        self._listener = count
        jax.jit(lambda x: x + 1)(1.0)  # the listener hears a compile (so a compile in the walk would be seen)
        assert self.compiles == 1, "the compile listener heard nothing"
        self.compiles = 0

        def refuse(*args, **kwargs):
            self.trainer_calls += 1
            raise AssertionError("the trainer started")

        monkeypatch.setattr(TRAIN_MAIN, "run", refuse)

    def close(self):
        jax.monitoring.unregister_event_duration_listener(self._listener)


def call(main, argv) -> tuple[int, list[str], float]:
    """(exit status, stderr lines, seconds) of main(argv)."""
    err = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
            code = 0
        except SystemExit as e:
            code = e.code
    return code, err.getvalue().strip().splitlines(), time.perf_counter() - t0


def assert_refused(result, name: str, value_text: str, rule=None):
    code, lines, seconds = result
    assert code == 2, (name, value_text, code, lines)
    assert len(lines) == 1 and lines[0].startswith("error: "), (name, value_text, lines)
    line = lines[0]
    assert name in line and value_text in line, (name, value_text, line)
    allowed = ("must be", "invalid choice", "is not a")  # the rule's text, argparse's choices, absl's bounds
    assert any(a in line for a in allowed), line
    assert seconds < SLOW_S, (name, value_text, seconds)


# =============================================================================================
# The experiment config: every key of the schema
# =============================================================================================
def test_every_key_of_the_schema_has_a_rule():
    keys = settings.schema_keys()
    assert [k for k in keys if k not in settings.RULES] == [], "a config key without a rule in settings.RULES"
    assert [k for k in settings.RULES if k not in keys] == [], "a rule for a key the schema does not have"


def _config_file_case(tmp_path, key, value) -> str:
    """A config file (the demo's micro config with one value replaced) for values the command line cannot
    carry: lists (absl cannot override them) and keys the demo config does not hold."""
    cases = tmp_path / "cases.json"
    table = json.loads(cases.read_text()) if cases.exists() else []
    table.append([key, value if not isinstance(value, float) or math.isfinite(value) else repr(value)])
    cases.write_text(json.dumps(table))
    script = tmp_path / "walk_config.py"
    if not script.exists():
        script.write_text(
            "import importlib.util, json, math\nfrom pathlib import Path\nimport ml_collections\n"
            f"spec = importlib.util.spec_from_file_location('demo', {str(ROOT / 'configs' / 'demo.py')!r})\n"
            "demo = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(demo)\n"
            "def get_config(i):\n"
            "    key, value = json.loads((Path(__file__).parent / 'cases.json').read_text())[int(i)]\n"
            "    if isinstance(value, str):  # JSON has no NaN / infinity literals\n"
            "        value = {'nan': math.nan, 'inf': math.inf, '-inf': -math.inf}.get(value, value)\n"
            "    d = demo.get_config('micro').to_dict()\n"
            "    *parents, leaf = key.split('.')\n"
            "    node = d\n"
            "    for p in parents:\n"
            "        node = node.setdefault(p, {})\n"
            "    node[leaf] = value\n"
            "    return ml_collections.ConfigDict(d)\n")
    return f"--config={script}:{len(table) - 1}"


def test_every_config_key_out_of_range_is_refused_before_any_work(tmp_path, monkeypatch):
    demo = settings.load_config(DEMO)
    no_work = NoWork(monkeypatch)
    workdir = tmp_path / "run"
    walked_keys, cases, t0 = [], 0, time.perf_counter()
    try:
        for key in settings.schema_keys():
            rule = settings.RULES[key]
            if not walked(rule):
                continue
            walked_keys.append(key)
            for value in bad_values(rule):
                on_command_line = not isinstance(value, list) and settings.value_at(demo, key) is not settings.MISSING
                if on_command_line:
                    args = [f"--config={DEMO}", f"--config.{key}={as_text(value)}"]
                else:
                    args = [_config_file_case(tmp_path, key, value)]
                result = call(TRAIN_MAIN.main, ["mvd_jax.train", *args, f"--workdir={workdir}"])
                assert_refused(result, key, as_text(value) if not isinstance(value, list) else str(value), rule)
                cases += 1
    finally:
        no_work.close()
    assert no_work.compiles == 0 and no_work.trainer_calls == 0
    assert not workdir.exists()
    print(f"\nconfig walk: {len(walked_keys)} keys, {cases} values refused in {time.perf_counter() - t0:.1f} s")
    assert len(walked_keys) >= 80  # the schema as of this test; it only grows


def test_the_trainers_own_flags_are_bounded(tmp_path, monkeypatch):
    """--num_processes, --process_id: every numeric flag of the trainer declares a bound and keeps it."""
    no_work = NoWork(monkeypatch)
    values = TRAIN_MAIN.define_flags(["mvd_jax.train"])
    numeric = [f for f in values._flags().values() if isinstance(f.parser, (flags.IntegerParser, flags.FloatParser))]
    assert {f.name for f in numeric} == {"num_processes", "process_id"}
    try:
        for flag in numeric:
            assert flag.parser.lower_bound is not None, f"--{flag.name} declares no bound"
            bad = flag.parser.lower_bound - 1
            result = call(TRAIN_MAIN.main, ["mvd_jax.train", f"--config={DEMO}", f"--workdir={tmp_path / 'run'}",
                                            f"--{flag.name}={bad}"])
            assert_refused(result, f"--{flag.name}", str(bad))
    finally:
        no_work.close()
    assert no_work.compiles == 0 and not (tmp_path / "run").exists()


def test_train_compiles_own_flags_are_bounded(tmp_path, monkeypatch):
    """python -m mvd_jax.train_compile: its numeric flags and the topology, and a config override of the wrong
    type (absl would print "FATAL Flags parsing error" and more), each one error line before anything is
    compiled or written."""
    compile_main = importlib.import_module("mvd_jax.train_compile").main
    out = tmp_path / "r.json"
    base = ["mvd_jax.train_compile", f"--config={DEMO}", f"--out={out}"]
    cases = [("--num_slices", "0"), ("--num_slices", "-1"), ("--utilization", "0"), ("--utilization", "1.5"),
             ("--utilization", "nan"), ("--hbm_gib", "0"), ("--hbm_gib", "-1"), ("--hbm_gib", "nan"),
             ("--topology", "cpu:0"), ("--topology", UNKNOWN), ("--config.train.steps", "abc")]
    no_work = NoWork(monkeypatch)
    try:
        for flag, value in cases:
            assert_refused(call(compile_main, base + [f"{flag}={value}"]), flag, value)
    finally:
        no_work.close()
    assert no_work.compiles == 0 and not out.exists()


# =============================================================================================
# The commands' own options: sampler, exporter, FVD, UCF-101
# =============================================================================================
def _commands(tmp_path):
    """(module, argv that is valid but for paths that do not exist, the output it must not create)."""
    missing = tmp_path / "missing"
    out = tmp_path / "out"
    return [
        ("mvd_jax.sample", ["--checkpoint", str(missing), "--image", str(missing / "a.png"), "--out",
                            str(out / "v.mp4")], out),
        ("export.tflite", ["--run", str(missing), "--out", str(out)], out),
        ("mvd_jax.edit", ["--checkpoint", str(missing), "--video", str(missing / "a.mp4"), "--prompt", "x", "--out",
                          str(out / "v.mp4")], out),
        ("mvd_jax.eval.fvd", ["--real", str(missing), "--generated", str(missing), "--out", str(out / "r.json")], out),
        ("mvd_jax.eval.ucf101", ["--ucf_root", str(missing), "--checkpoint", str(missing), "--fps", "7",
                                 "--num_videos", "3", "--out", str(out)], out),
    ]


def test_every_command_option_out_of_range_is_refused_before_any_work(tmp_path, monkeypatch):
    no_work = NoWork(monkeypatch)
    options, cases = [], 0
    try:
        for name, base, out in _commands(tmp_path):
            module = importlib.import_module(name)
            for action in module.parser()._actions:
                rule = action.type
                if not action.option_strings or action.nargs == 0:
                    continue
                if action.choices is not None:
                    values = [max(action.choices) + 1] if all(isinstance(c, int) for c in action.choices) else [UNKNOWN]
                elif isinstance(rule, settings.Rule):
                    values = bad_values(rule)
                else:
                    assert rule in (None, str), f"{name} {action.option_strings[0]}: a {rule} option without a rule"
                    continue
                flag = action.option_strings[0]
                options.append(f"{name} {flag}")
                for value in values:
                    argv = [a for a in _without(base, flag)] + [flag, as_text(value)]
                    assert_refused(call(module.main, argv), flag, as_text(value))
                    assert not out.exists(), (name, flag, value)
                    cases += 1
    finally:
        no_work.close()
    assert no_work.compiles == 0
    print(f"\ncommand options walk: {len(options)} options, {cases} values refused")
    assert len(options) >= 34  # the commands as of this test; they only grow


def _without(argv, flag):
    """argv without `flag` and its value (the walk sets it)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == flag:
            skip = True
        else:
            out.append(a)
    return out


# =============================================================================================
# End to end: real processes
# =============================================================================================
def _run(args, tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    env.pop("MVD_JAX_VERBOSE_ERRORS", None)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    return proc, time.perf_counter() - t0


@pytest.mark.parametrize("command", ["train", "sample", "train_compile"])
def test_a_bad_value_stops_the_real_command_at_once(tmp_path, command):
    """The issue's example (sample_steps=0 used to train, then die at the end-of-run sample), and one bad
    value for the sampler and the AOT compiler, each in a process of its own: one line, exit 2, nothing
    written, and back in the time it takes to import (a compile of the micro step takes far longer)."""
    workdir = tmp_path / "run"
    args, expected = {
        "train": (["mvd_jax.train", f"--config={DEMO}", "--config.train.sample_steps=0", f"--workdir={workdir}"],
                  "train.sample_steps must be ≥ 1, got 0"),
        "sample": (["mvd_jax.sample", "--checkpoint", str(tmp_path), "--image", "x.png", "--out", str(workdir / "v.mp4"),
                    "--steps", "0"], "argument --steps: must be ≥ 1, got 0"),
        "train_compile": (["mvd_jax.train_compile", f"--config={DEMO}", "--config.optimizer.b2=1.0",
                           f"--out={workdir / 'r.json'}"], "optimizer.b2 must be in [0, 1), got 1.0"),
    }[command]
    proc, seconds = _run(args, tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert expected in lines[0], lines[0]
    assert not workdir.exists() and proc.stdout == ""
    assert seconds < 60, seconds
