"""Verification is part of export: a `.tflite` appears under its real name only after LiteRT has run it and
its outputs match the JAX function's within the precision's tolerance, and its op census holds TFLite
builtins only.

    tolerance (relative L2 = ‖tflite − jax‖ / ‖jax‖, per output, on random inputs and, when the function
               has them, on real ones — one clip of a run's data; the worst of all must pass)
        fp32  1e-4     the same arithmetic in another order
        fp16  5e-3     weights rounded to float16 (CPU kernels dequantise them; a phone GPU also computes
                       in fp16, which AI Hub's on-device comparison shows)
        int8  1e-1     weights and activations quantised (w8a8); the bound only separates "works" from
                       "broken" — whether the quality suffices is a question for the videos

The write protocol (`install_verified`): the model is written as `.NAME.tflite.partial` (a name no loader
takes for a model), checked, then renamed; on any failure the partial file is deleted and the error names
what was wrong. A stale `NAME.tflite` from an earlier export is removed before the new one is attempted, so
a failed export never leaves a model behind that looks like its result.

LiteRT runs in a child process (`python -m mvd_jax.export.verify`): a kernel that aborts in `Prepare` (as
int8 ADD does on the UNet step with LiteRT 2.3.0, see export/README.md) then fails this export with a
message instead of killing the exporting process.

The op census reads the flatbuffer itself (operator codes of every subgraph): a Flex op (a TensorFlow
kernel, `FlexXxx`) or any other custom op is refused — phones and AI Hub's TFLite runtime run builtins.
So is control flow (WHILE, IF) and DYNAMIC_UPDATE_SLICE, what a JAX loop writing its results becomes:
a phone NPU runs straight-line graphs, and none of the exported functions needs a loop (attention is
exported in XLA's batched form, models/attention_kernel.py).
"""
from __future__ import annotations

import collections
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mvd_jax.export import ExportError
from mvd_jax.export.child import run_child

TOLERANCES = {"fp32": 1e-4, "fp16": 5e-3, "int8": 1e-1}
CUSTOM = "custom:"


# ---- op census -----------------------------------------------------------------------------------------
def op_census(model: bytes | str | os.PathLike) -> collections.Counter:
    """{op name: count} over every subgraph. Builtins by name (CONV_2D); custom ops as "custom:" + their
    custom code (Flex ops: "custom:FlexXxx")."""
    from ai_edge_litert import schema_py_generated as schema

    buf = Path(model).read_bytes() if isinstance(model, (str, os.PathLike)) else model
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    m = schema.Model.GetRootAsModel(buf, 0)
    codes = []
    for i in range(m.OperatorCodesLength()):
        oc = m.OperatorCodes(i)
        # ops numbered above 127 keep the placeholder 127 in the deprecated field
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        if code == schema.BuiltinOperator.CUSTOM:
            codes.append(CUSTOM + (oc.CustomCode() or b"<unnamed>").decode())
        else:
            codes.append(names.get(code, f"BUILTIN_{code}"))
    census = collections.Counter()
    for g in range(m.SubgraphsLength()):
        sg = m.Subgraphs(g)
        for o in range(sg.OperatorsLength()):
            census[codes[sg.Operators(o).OpcodeIndex()]] += 1
    return census


def io_names(model) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(inputs, outputs) of the main subgraph in the model's own order, as (tensor name, signature name):
    tools that feed a model by tensor order (AI Hub datasets) need that order, which is not the
    signature's alphabetical one."""
    from ai_edge_litert import schema_py_generated as schema

    buf = Path(model).read_bytes() if isinstance(model, (str, os.PathLike)) else model
    m = schema.Model.GetRootAsModel(buf, 0)
    sig_names = collections.defaultdict(list)  # tensor index → its signature names (a chain's part can
    sg_index = 0                               # return one tensor under two names: hidden_1 and skip_3)
    if m.SignatureDefsLength():
        sig = m.SignatureDefs(0)
        sg_index = sig.SubgraphIndex()
        for i in range(sig.InputsLength()):
            sig_names[sig.Inputs(i).TensorIndex()].append(sig.Inputs(i).Name().decode())
        for i in range(sig.OutputsLength()):
            sig_names[sig.Outputs(i).TensorIndex()].append(sig.Outputs(i).Name().decode())
    sg = m.Subgraphs(sg_index)

    def named(indices):
        out, seen = [], collections.Counter()
        for t in indices:
            tensor = sg.Tensors(t).Name().decode()
            names = sig_names.get(t) or [tensor]
            out.append((tensor, names[min(seen[t], len(names) - 1)]))
            seen[t] += 1
        return out

    return (named(sg.Inputs(i) for i in range(sg.InputsLength())),
            named(sg.Outputs(i) for i in range(sg.OutputsLength())))


CONTROL_FLOW_OPS = ("WHILE", "IF", "DYNAMIC_UPDATE_SLICE")


def control_flow_ops(census) -> list[str]:
    """The census entries that are loops, conditionals or a loop's result writes."""
    return sorted(op for op in census if op in CONTROL_FLOW_OPS)


def non_builtin_ops(census) -> list[str]:
    """The census entries that are not TFLite builtins (Flex and other custom ops)."""
    return sorted(op[len(CUSTOM):] for op in census if op.startswith(CUSTOM))


def format_census(census, top: int = 6) -> str:
    ops = sorted(census.items(), key=lambda kv: (-kv[1], kv[0]))
    head = ", ".join(f"{k}×{v}" for k, v in ops[:top])
    rest = f", +{len(ops) - top} kinds" if len(ops) > top else ""
    return f"{sum(census.values())} ops: {head}{rest}"


# ---- running LiteRT ------------------------------------------------------------------------------------
def run_litert(model_path, inputs: dict[str, np.ndarray], *, timeout_s: float = 3600) -> dict[str, np.ndarray]:
    """The model's outputs for `inputs` (keyed by signature input name), computed by ai_edge_litert's
    Interpreter (default delegates: XNNPACK on CPU) in a child process."""
    return run_litert_sets(model_path, [inputs], timeout_s=timeout_s)[0]


def run_litert_sets(model_path, input_sets: list[dict], *, timeout_s: float = 3600) -> list[dict[str, np.ndarray]]:
    """`run_litert` for several input sets, one after another in one child process (the model loads once).
    `model_path` may be a list: a chain whose parts run in order (run_litert_chain); the last one's outputs
    are returned."""
    models = [str(p) for p in (model_path if isinstance(model_path, (list, tuple)) else [model_path])]
    label = ", ".join(Path(m).name.removeprefix(".").removesuffix(".partial") for m in models)
    with tempfile.TemporaryDirectory(prefix="mvd_litert_") as tmp:
        paths = []
        for n, inputs in enumerate(input_sets):
            src, dst = Path(tmp) / f"inputs_{n}.npz", Path(tmp) / f"outputs_{n}.npz"
            np.savez(src, **inputs)
            paths += [str(src), str(dst)]
        cmd = [sys.executable, "-m", "mvd_jax.export.verify", *models, "--", *paths]
        run_child(cmd, f"LiteRT running {label}", timeout_s=timeout_s)
        outputs = []
        for dst in paths[1::2]:
            with np.load(dst) as out:
                outputs.append({k: out[k] for k in out.files})
        return outputs


def _litert_worker(*argv: str) -> None:
    """MODEL… -- (INPUTS.npz OUTPUTS.npz)…: runs every input set through the models in order, one model
    loaded at a time; each model takes its inputs by name from the set and the earlier models' outputs (one
    model: the set must be exactly its inputs). Writes the last model's outputs."""
    import gc

    from ai_edge_litert.interpreter import Interpreter

    split = argv.index("--")
    models, paths = argv[:split], argv[split + 1:]
    tensors = []
    for src in paths[::2]:
        with np.load(src) as f:
            tensors.append({k: f[k] for k in f.files})
    for n, model in enumerate(models):
        interpreter = Interpreter(model_path=model, num_threads=os.cpu_count() or 1)
        runner = interpreter.get_signature_runner()
        expected = set(runner.get_input_details())
        outputs = list(runner.get_output_details())
        for t in tensors:
            if len(models) == 1 and set(t) != expected:
                sys.exit(f"the model's inputs are {sorted(expected)}, given {sorted(t)}")
            if not expected <= set(t):
                sys.exit(f"part {n + 1} of the chain reads {sorted(expected - set(t))}, which nothing before it made")
            t.update(runner(**{k: t[k] for k in expected}))
        del runner, interpreter
        gc.collect()
    for t, dst in zip(tensors, paths[1::2]):
        np.savez(dst, **{k: t[k] for k in outputs})


# ---- comparison ----------------------------------------------------------------------------------------
def rel_l2(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return float("inf")
    den = np.linalg.norm(want)
    num = np.linalg.norm(got - want)
    return float(num / den) if den > 0 else (0.0 if num == 0 else float("inf"))


@dataclasses.dataclass
class Report:
    """One component at one precision: what the verification table prints (and report.json records)."""

    component: str
    precision: str
    path: str | None = None  # the installed model; None when the export failed
    rel_l2: dict = dataclasses.field(default_factory=dict)  # output name → relative L2 vs JAX, random inputs
    rel_l2_real: dict = dataclasses.field(default_factory=dict)  # the same on the real inputs; {} without them
    tolerance: float = 0.0
    census: dict = dataclasses.field(default_factory=dict)
    size_bytes: int = 0
    num_params: int = 0
    convert_s: float = 0.0
    verify_s: float = 0.0
    error: str | None = None
    parts: list = dataclasses.field(default_factory=list)  # a chain's parts: name, path, size, params, census

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def worst(self) -> float:
        """The largest relative L2 over every output and both input sets (what the tolerance bounds)."""
        return max([*self.rel_l2.values(), *self.rel_l2_real.values()], default=float("nan"))

    @property
    def worst_random(self) -> float:
        return max(self.rel_l2.values(), default=float("nan"))

    @property
    def worst_real(self) -> float:
        return max(self.rel_l2_real.values(), default=float("nan"))


def check_model(model_path, f, precision: str, *, tolerance: float | None = None, seed: int = 0,
                report: Report | None = None) -> Report:
    """Census, then LiteRT vs JAX on `f.sample_inputs(seed)` and, when set, on `f.real_inputs`; raises
    ExportError (with `report` filled in as far as it got) when the model must not ship: the worst relative
    L2 of both sets must be within the tolerance."""
    report = report or Report(f.name, precision)
    report.tolerance = TOLERANCES[precision] if tolerance is None else tolerance
    report.size_bytes = Path(model_path).stat().st_size
    report.census = dict(op_census(model_path))
    _refuse_non_builtins(report.census, f"{f.name} {precision}")
    t0 = time.perf_counter()
    input_sets = f.verification_sets(seed)
    _compare(report, f, precision, input_sets, run_litert_sets(model_path, input_sets))
    report.verify_s = time.perf_counter() - t0
    return report


def _refuse_non_builtins(census, what: str) -> None:
    bad = non_builtin_ops(census)
    if bad:
        raise ExportError(f"{what}: non-builtin ops {bad} in the TFLite graph; phones run TFLite builtins only")
    loops = control_flow_ops(census)
    if loops:
        raise ExportError(f"{what}: control flow {', '.join(f'{op}×{census[op]}' for op in loops)} "
                          "in the TFLite graph; phone NPUs run straight-line graphs (was attention traced in a "
                          "loop form? export/functions.py builds XLA's)")


def _compare(report: Report, f, precision: str, input_sets: list[dict], got_sets: list[dict]) -> None:
    """Fills the report's errors: LiteRT's outputs for `input_sets` (f's verification sets) vs JAX's; raises
    ExportError when the worst is over the tolerance."""
    errors = []
    for inputs, got in zip(input_sets, got_sets):
        want = f.reference(inputs)
        missing = sorted(set(want) - set(got))
        if missing:
            raise ExportError(f"{f.name} {precision}: the model has no output(s) {missing} (it has {sorted(got)})")
        errors.append({k: rel_l2(got[k], want[k]) for k in f.outputs})
    report.rel_l2 = errors[0]
    report.rel_l2_real = errors[1] if len(errors) > 1 else {}
    if not report.worst <= report.tolerance:  # also catches NaN
        which, err = (("random", report.worst_random) if not report.worst_random <= report.tolerance
                      else ("real", report.worst_real))
        raise ExportError(f"{f.name} {precision}: LiteRT differs from JAX by relative L2 "
                          f"{err:.3g} on the {which} inputs > tolerance {report.tolerance:g}")


def partial_path(final_path) -> Path:
    """Where a model is written before it verifies: `.NAME.tflite.partial` beside its final name."""
    final_path = Path(final_path)
    return final_path.with_name(f".{final_path.name}.partial")


def install_verified(model, final_path, f, precision: str, *, tolerance: float | None = None,
                     seed: int = 0, report: Report | None = None) -> Report:
    """Renames the model to `final_path` only if `check_model` passes (see the module docstring). `model` is
    its bytes, or its file already written at `partial_path(final_path)`; the partial file is gone afterwards
    either way."""
    final_path = Path(final_path)
    partial = partial_path(final_path)
    if not isinstance(model, (str, os.PathLike)):
        partial.write_bytes(model)
    elif Path(model) != partial:
        raise ValueError(f"a written model must be at {partial}, got {model}")
    try:
        report = check_model(partial, f, precision, tolerance=tolerance, seed=seed, report=report)
        os.replace(partial, final_path)
    finally:
        partial.unlink(missing_ok=True)
    report.path = str(final_path)
    return report


# ---- a chain of models (the UNet step in parts, unet_chain.py) -------------------------------------------
def run_litert_chain(model_paths, input_sets: list[dict], *, timeout_s: float = 6 * 3600) -> list[dict]:
    """The chain's final outputs for each input set: one child process loads the parts one at a time, in
    order (only one part's weights in memory), runs every input set through it and feeds each part by name
    from the inputs and the earlier parts' outputs."""
    return run_litert_sets(list(model_paths), input_sets, timeout_s=timeout_s)


def check_chain(model_paths, chain, precision: str, *, tolerance: float | None = None, seed: int = 0,
                report: Report | None = None) -> Report:
    """`check_model` for a chain: every part's census (builtins only, no control flow), then the chain run
    end to end by LiteRT against the single-graph JAX function (`chain.full`) on its random and real inputs."""
    f = chain.full
    report = report or Report(f.name, precision)
    report.tolerance = TOLERANCES[precision] if tolerance is None else tolerance
    report.parts = []
    census = collections.Counter()
    for path, part in zip(model_paths, chain.parts):
        part_census = op_census(path)
        census.update(part_census)
        report.parts.append(dict(name=part.name, size_bytes=Path(path).stat().st_size, num_params=part.num_params,
                                 census=dict(part_census)))
    report.size_bytes = sum(p["size_bytes"] for p in report.parts)
    report.census = dict(census)
    _refuse_non_builtins(census, f"{f.name} {precision}")
    t0 = time.perf_counter()
    input_sets = f.verification_sets(seed)
    _compare(report, f, precision, input_sets, run_litert_chain(model_paths, input_sets))
    report.verify_s = time.perf_counter() - t0
    return report


def install_verified_chain(final_paths, chain, precision: str, *, tolerance: float | None = None, seed: int = 0,
                           report: Report | None = None) -> Report:
    """`install_verified` for a chain whose parts are written at their partial paths: all of them are renamed
    if the chain verifies, none otherwise."""
    partials = [partial_path(p) for p in final_paths]
    try:
        report = check_chain(partials, chain, precision, tolerance=tolerance, seed=seed, report=report)
        for partial, final in zip(partials, final_paths):
            os.replace(partial, final)
    finally:
        for partial in partials:
            partial.unlink(missing_ok=True)
    for part, final in zip(report.parts, final_paths):
        part["path"] = str(final)
    report.path = str(final_paths[0])
    return report


if __name__ == "__main__":  # the LiteRT child process of run_litert_sets: MODEL… -- (INPUTS.npz OUTPUTS.npz)…
    _litert_worker(*sys.argv[1:])
