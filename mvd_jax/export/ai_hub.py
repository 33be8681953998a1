"""Run an exported `.tflite` on a phone through Qualcomm AI Hub and compare it with JAX.

A `.tflite` is not a compile-job input on AI Hub (compile jobs take ONNX/TorchScript); it is uploaded and
run as it is. One job does both halves of the work:

    hub.upload_model(path)                                     the model, once
    hub.submit_inference_job(model, device, inputs, profile=True)
        job.wait()                                             blocks until the phone is done
        job.download_output_data()                             {output name: [array]} → relative L2 vs JAX
        job.download_profile()                                 latency (µs) and the compute unit per layer

A UNet exported as a chain of graphs (unet_chain.py; MobileVD's and SVD's full-size UNets) runs as one such
job per part, in order (`run_chain_on_device`): each part's dataset is made of the step's inputs and the
outputs the phone returned for the earlier parts, so the comparison with JAX covers the phone's arithmetic
through the whole chain; the step's latency is the sum of the parts'.

qai-hub 0.56 deprecates `submit_profile_job`: it now returns an InferenceJob with random inputs, which is the
same job as `submit_inference_job(…, profile=True)` without the outputs; this module uses the latter.

Without `~/.qai_hub/client.ini` (written by `qai-hub configure --api_token …`) every hub call raises
`qai_hub.client.UserError`; `run_on_device` checks for the file first and raises HubUnavailable with one
line. Network failures and failed jobs raise HubUnavailable / ExportError the same way. The local export is
untouched either way.

This machine cannot reach AI Hub: the orchestration is tested against a stand-in object with qai_hub's
call signatures (tests/test_export.py), never against the service.
"""
from __future__ import annotations

import collections
import dataclasses
from pathlib import Path

import numpy as np

from mvd_jax.export import ExportError
from mvd_jax.export.functions import ExportFunction
from mvd_jax.export.verify import io_names, rel_l2


class HubUnavailable(ExportError):
    """AI Hub cannot be used from here: no qai-hub package, no credentials, or no network."""


def credentials_path() -> Path:
    return Path.home() / ".qai_hub" / "client.ini"


@dataclasses.dataclass
class DeviceResult:
    component: str
    precision: str
    device: str
    rel_l2: dict  # output name → relative L2 of the phone's output vs JAX
    latency_ms: float | None
    compute_units: dict  # "NPU"/"GPU"/"CPU" → number of layers placed there
    job_url: str = ""  # a chain: its parts' job URLs, space-separated
    # a chain: per part {name, latency_ms, compute_units, job_url}
    parts: list = dataclasses.field(default_factory=list)

    def line(self) -> str:
        units = ", ".join(f"{k} {v}" for k, v in self.compute_units.items() if v) or "no layer detail"
        latency = f"{self.latency_ms:.2f} ms" if self.latency_ms is not None else "latency n/a"
        err = max(self.rel_l2.values(), default=float("nan"))
        chain = f" ({len(self.parts)} graphs in a row)" if self.parts else ""
        return (f"{self.component} {self.precision}{chain} on {self.device}: {latency}; layers by compute unit: "
                f"{units}; rel L2 vs JAX {err:.2e}  {self.job_url}")


def _import_hub():
    try:
        import qai_hub
    except ImportError:
        raise HubUnavailable("AI Hub: the qai-hub package is not installed (pip install -e .[export])") from None
    return qai_hub


def _hub_errors(hub) -> tuple:
    errors = [OSError, TimeoutError]
    for name in ("Error", "UserError", "InternalError"):
        cls = getattr(hub, name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            errors.append(cls)
    try:
        import requests

        errors.append(requests.exceptions.RequestException)
    except ImportError:
        pass
    return tuple(errors)


def _first_line(e: BaseException) -> str:
    return next((line.strip(" |│") for line in str(e).splitlines() if line.strip(" |│┌─┐")), type(e).__name__)


def run_on_device(model_path, f: ExportFunction, precision: str, device_name: str, *, hub=None, seed: int = 0,
                  timeout_s: int | None = None) -> DeviceResult:
    """Upload `model_path`, run it on `device_name` with `f.sample_inputs(seed)` and profile it.

    `hub` is the qai_hub module (default) or an object with the same functions (tests). Raises
    HubUnavailable without credentials or network, ExportError when the job fails.
    """
    return run_chain_on_device([model_path], f, precision, device_name, hub=hub, seed=seed, timeout_s=timeout_s)


def run_chain_on_device(part_paths, f: ExportFunction, precision: str, device_name: str, *, hub=None,
                        seed: int = 0, timeout_s: int | None = None) -> DeviceResult:
    """`run_on_device` for a UNet exported as a chain of graphs (unet_chain.py): one profiled inference job
    per part, in order, each fed by name from `f`'s inputs and the earlier parts' outputs as the phone
    computed them (so the phone's rounding carries through the chain, as it would in the app); the last
    part's outputs are compared with `f` (the single-graph JAX function). The step's latency is the sum of
    the parts' (the phone runs them one after another); `parts` lists each part's own."""
    if hub is None:
        hub = _import_hub()
        if not credentials_path().is_file():
            raise HubUnavailable(f"AI Hub: no credentials ({credentials_path()} not found; run "
                                 "`qai-hub configure --api_token TOKEN`)")
    inputs_by_name = f.sample_inputs(seed)
    tensors = dict(inputs_by_name)
    parts, urls = [], []
    for path in part_paths:
        tensor_inputs, tensor_outputs = io_names(path)  # [(tensor name, signature name)] in model order
        missing = [sig for _, sig in tensor_inputs if sig not in tensors]
        if missing:
            raise ExportError(f"{Path(path).name} reads {missing}, which neither the inputs nor an earlier part make")
        # AI Hub matches a dataset to the model's inputs by order: the flatbuffer's
        dataset = {tensor: [tensors[sig]] for tensor, sig in tensor_inputs}
        outputs, profile, url = _inference_job(hub, path, dataset, device_name, timeout_s)
        got = {sig: np.asarray(outputs[tensor][0]) for tensor, sig in tensor_outputs if tensor in outputs}
        if len(got) < len(tensor_outputs):
            raise ExportError(f"AI Hub job for {Path(path).stem} returned {sorted(outputs)}, not the outputs "
                              f"{sorted(t for t, _ in tensor_outputs)}")
        tensors.update(got)
        latency, units = _profile_summary(profile)
        parts.append(dict(name=Path(path).stem, latency_ms=latency, compute_units=units, job_url=url))
        urls.append(url)
    missing = sorted(set(f.outputs) - set(tensors))
    if missing:
        raise ExportError(f"the chain's last part did not make the outputs {missing}")
    want = f.reference(inputs_by_name)
    latencies = [p["latency_ms"] for p in parts]
    total_units = collections.Counter()
    for p in parts:
        total_units.update(p["compute_units"])
    return DeviceResult(f.name, precision, device_name, {k: rel_l2(tensors[k], want[k]) for k in f.outputs},
                        sum(latencies) if None not in latencies else None,
                        {u: total_units.get(u, 0) for u in ("NPU", "GPU", "CPU")} | dict(total_units),
                        " ".join(u for u in urls if u), parts if len(parts) > 1 else [])


def _inference_job(hub, path, dataset: dict, device_name: str, timeout_s) -> tuple[dict, dict, str]:
    """Uploads `path` and runs one profiled inference job: (outputs {tensor: [array]}, profile, job URL)."""
    name = Path(path).stem
    try:
        device = hub.Device(device_name)
        model = hub.upload_model(str(path), name=name)
        job = hub.submit_inference_job(model=model, device=device, inputs=dataset, name=name, profile=True)
        status = job.wait(timeout=timeout_s)
        if not status.success:
            raise ExportError(f"AI Hub job for {name} on {device_name} did not succeed: "
                              f"{status.code if hasattr(status, 'code') else status} {status.message or ''}".strip())
        outputs = job.download_output_data()
        profile = job.download_profile()
    except _hub_errors(hub) as e:
        if isinstance(e, ExportError):
            raise
        raise HubUnavailable(f"AI Hub: {type(e).__name__}: {_first_line(e)}") from None
    if not outputs:
        raise ExportError(f"AI Hub job for {name} returned no output data")
    return outputs, profile or {}, getattr(job, "url", "")


def _profile_summary(profile: dict) -> tuple[float | None, dict]:
    """(estimated latency in ms or None, {compute unit: number of layers}) of an AI Hub profile."""
    latency = profile.get("execution_summary", {}).get("estimated_inference_time")  # µs
    units = collections.Counter(layer.get("compute_unit", "?") for layer in profile.get("execution_detail", []))
    return (latency / 1000.0 if isinstance(latency, (int, float)) else None,
            {u: units.get(u, 0) for u in ("NPU", "GPU", "CPU")} | {u: n for u, n in units.items()
                                                                 if u not in ("NPU", "GPU", "CPU")})
