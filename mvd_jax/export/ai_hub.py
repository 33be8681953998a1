"""Run an exported `.tflite` on a phone through Qualcomm AI Hub and compare it with JAX.

A `.tflite` is not a compile-job input on AI Hub (compile jobs take ONNX/TorchScript); it is uploaded and
run as it is. One job does both halves of the work:

    hub.upload_model(path)                                     the model, once
    hub.submit_inference_job(model, device, inputs, profile=True)
        job.wait()                                             blocks until the phone is done
        job.download_output_data()                             {output name: [array]} → relative L2 vs JAX
        job.download_profile()                                 latency (µs) and the compute unit per layer

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
    job_url: str = ""

    def line(self) -> str:
        units = ", ".join(f"{k} {v}" for k, v in self.compute_units.items() if v) or "no layer detail"
        latency = f"{self.latency_ms:.2f} ms" if self.latency_ms is not None else "latency n/a"
        err = max(self.rel_l2.values(), default=float("nan"))
        return (f"{self.component} {self.precision} on {self.device}: {latency}; layers by compute unit: {units}; "
                f"rel L2 vs JAX {err:.2e}  {self.job_url}")


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
    if hub is None:
        hub = _import_hub()
        if not credentials_path().is_file():
            raise HubUnavailable(f"AI Hub: no credentials ({credentials_path()} not found; run "
                                 "`qai-hub configure --api_token TOKEN`)")
    inputs_by_name = f.sample_inputs(seed)
    tensor_inputs, tensor_outputs = io_names(model_path)  # [(tensor name, signature name)] in model order
    dataset = {tensor: [inputs_by_name[sig]] for tensor, sig in tensor_inputs}
    name = Path(model_path).stem
    try:
        device = hub.Device(device_name)
        model = hub.upload_model(str(model_path), name=name)
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
    want = f.reference(inputs_by_name)
    got = {sig: np.asarray(outputs[tensor][0]) for tensor, sig in tensor_outputs if tensor in outputs}
    missing = sorted(set(f.outputs) - set(got))
    if missing:
        raise ExportError(f"AI Hub job for {name} returned {sorted(outputs)}, not the outputs {missing}")
    summary = (profile or {}).get("execution_summary", {})
    latency = summary.get("estimated_inference_time")
    units = collections.Counter(layer.get("compute_unit", "?") for layer in (profile or {}).get("execution_detail", []))
    return DeviceResult(f.name, precision, device_name, {k: rel_l2(got[k], want[k]) for k in f.outputs},
                        latency / 1000.0 if isinstance(latency, (int, float)) else None,
                        {u: units.get(u, 0) for u in ("NPU", "GPU", "CPU")} | {u: n for u, n in units.items()
                                                                                if u not in ("NPU", "GPU", "CPU")},
                        getattr(job, "url", ""))
