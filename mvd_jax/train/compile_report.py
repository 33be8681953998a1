"""What the compiler says about a compiled train step: per-device memory and FLOPs.

XLA compiles an SPMD program once per device shape, so `Compiled.memory_analysis()` and
`Compiled.cost_analysis()` describe ONE device's share (checked in tests: a 4-way data-parallel matmul
reports a quarter of the lowered, global FLOPs). The figures:

    arguments   parameters, optimizer state, EMA, batch held by the device when the step starts
    outputs     what the step returns (the new state; donated arguments alias it — `aliased`)
    temporaries activations kept for the backward pass, gradients, collectives' buffers
    total       arguments + outputs − aliased + temporaries: what the device must hold (the temporaries
                are one preallocated arena), the figure to compare with a chip's memory — as maxtext does.
                XLA's own `peak_memory_in_bytes` is kept beside it where the backend fills it in (on CPU
                it counts arguments only)
"""
from __future__ import annotations

import json
import re

from mvd_jax import storage

GIB = 1024 ** 3


def compiled_report(compiled) -> dict:
    """Per-device bytes and FLOPs of a `jax.stages.Compiled` (values in bytes / FLOPs, floats)."""
    mem = compiled.memory_analysis()
    report = {}
    if mem is not None:
        report.update(
            argument_bytes=float(mem.argument_size_in_bytes),
            output_bytes=float(mem.output_size_in_bytes),
            aliased_bytes=float(mem.alias_size_in_bytes),
            temp_bytes=float(mem.temp_size_in_bytes),
            generated_code_bytes=float(mem.generated_code_size_in_bytes),
        )
        report["total_bytes"] = float(mem.argument_size_in_bytes + mem.output_size_in_bytes
                                      - mem.alias_size_in_bytes + mem.temp_size_in_bytes)
        report["xla_peak_bytes"] = float(getattr(mem, "peak_memory_in_bytes", 0) or 0)
    # Pallas TPU kernels (Mosaic) appear in the compiled program as custom calls of this target: their
    # count says the attention kernel made it through the compiler (models/attention_kernel.py)
    # and the compiled program's collective-permutes, where XLA:TPU's windowed einsum (collective matmul) loops
    # show (train/sharding.py step_compiler_options turns it off; full-size steps keep some from other passes)
    try:
        text = compiled.as_text()
        report["pallas_kernel_calls"] = text.count('custom_call_target="tpu_custom_call"')
        report["collective_permutes"] = len(re.findall(r" collective-permute(?:-start)?\(", text))
    except Exception:  # a backend without a text form of its executable
        pass
    cost = compiled.cost_analysis()
    if isinstance(cost, list):  # older JAX: one dict per partition
        cost = cost[0] if cost else {}
    if cost and cost.get("flops"):
        report["flops"] = float(cost["flops"])
    return report


def format_report(report: dict, *, devices: int, label: str = "train step") -> str:
    if "total_bytes" not in report:
        return f"{label}: the compiler gave no memory analysis on this backend"
    g = {k: report[k] / GIB for k in report if k.endswith("_bytes")}
    line = (f"{label}, per device (of {devices}): {g['total_bytes']:.3f} GiB = arguments "
            f"{g['argument_bytes']:.3f} + temporaries {g['temp_bytes']:.3f} + outputs {g['output_bytes']:.3f} "
            f"− aliased {g['aliased_bytes']:.3f} (donated state)")
    if "flops" in report:
        line += f"; {report['flops'] / 1e12:.4g} TFLOPs per device per step (XLA cost analysis)"
    return line


def format_attention(records: list) -> str:
    """The attention form of each distinct attention call in the step (models/attention_kernel.py
    `recording()`), one line each: form, q and k shapes (batch·frames or batch·positions, tokens, heads,
    head width), dtype and how many calls share them."""
    if not records:
        return "attention: none traced"
    lines = ["attention, per distinct shape (models/attention_kernel.py):"]
    for r in sorted(records, key=lambda r: (r["form"], r["q"], r["k"])):
        lines.append(f"  {r['form']:<10} q {tuple(r['q'])} k {tuple(r['k'])} {r['dtype']}  × {r['count']}")
    return "\n".join(lines)


def write_report(path, report: dict, **extra):
    path = storage.path(path)  # local or gs://
    path.write_text(json.dumps({**extra, **report}, indent=1) + "\n")
    return path
