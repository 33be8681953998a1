"""What the TPU-VM and xpk launchers share: the trainer config (file + overrides, parsed exactly as the
trainer parses them), the slice (accelerator type → chips, hosts), the checks a pod job must pass before
it is worth renting the pod, the trainer's command line and environment, gs:// paths, and a runner that
either runs each command or, with --dry-run, prints it (needing no credentials).

gs:// paths. The trainer opens gs:// URLs itself (mvd_jax/storage.py: workdir, video folders and
manifests, latent caches, previous runs, diffusers folders), so `--gcs=native` passes them through
unchanged. The default, `--gcs=fuse`, instead mounts every bucket a job names with Cloud Storage FUSE at
/gcs/<bucket> on each worker (TPU VMs: gcsfuse; GKE: the gcsfuse CSI driver through `xpk storage
attach`) and gives the trainer the mounted paths: the same files, with FUSE's local page cache.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python launch/tpu_vm.py` as well as `python -m launch.tpu_vm`
    sys.path.insert(0, str(ROOT))

from mvd_jax.errors import UserError  # noqa: E402
from mvd_jax.train_compile import TpuSlice, parse_tpu  # noqa: E402

ENTRY_POINT = ("python", "-m", "mvd_jax.train")
LIBTPU = "libtpu==0.0.42.1"  # the libtpu release paired with jax 0.10.2 (what `jax[tpu]==0.10.2` installs)
FUSE_ROOT = "/gcs"
# Config values that name files the trainer opens on every host.
PATH_KEYS = ("data.videos", "data.cache", "autoencoder.checkpoint", "init_from")


# =============================================================================================
# The trainer config
# =============================================================================================
def load_trainer_config(config: str, overrides: list[str]):
    """The config the trainer would run: `--config=FILE[:arg]` plus `--config.a.b=v` overrides, parsed by the
    same absl config flag the trainer defines (types, lock_config), then completed and checked."""
    from absl import flags
    from ml_collections import config_flags

    from mvd_jax.settings import resolve, validate

    bad = [o for o in overrides if not o.startswith("--config.")]
    if bad:
        raise UserError(f"unknown arguments {bad}: trainer overrides look like --config.train.batch_size=32")
    argv = ["launch", f"--config={config}", *overrides]
    values = flags.FlagValues()
    # sys_argv: the override flags are declared from this list (by default config_flags reads sys.argv)
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True, sys_argv=argv)
    try:
        values(argv)
    except Exception as e:  # absl's IllegalFlagValueError / UnrecognizedFlagError, or the config file's own error
        raise UserError(f"--config={config} {' '.join(overrides)}: {str(e).splitlines()[0]}") from None
    cfg = values.config
    validate(cfg, source=config)
    return resolve(cfg)


def config_value(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node.get(part, None) if hasattr(node, "get") else None
        if node is None:
            return None
    return node


# =============================================================================================
# The job: slice × slices, trainer processes, batch
# =============================================================================================
@dataclasses.dataclass
class Job:
    tpu: TpuSlice
    num_slices: int
    cfg: object  # the resolved trainer config
    config_arg: str  # --config=... as given
    overrides: list  # --config.a.b=v as given
    workdir: str  # as given (gs://... or a path on the workers)

    @property
    def chips(self) -> int:
        return self.tpu.chips * self.num_slices

    @property
    def processes(self) -> int:
        """One trainer process per TPU VM (host), in every slice."""
        return self.tpu.hosts * self.num_slices

    def check(self):
        """The checks the trainer makes at start-up, made here before anything is rented: the mesh uses
        exactly the job's chips, the batch splits over the data axes and the hosts, slices split mesh.data."""
        from mvd_jax.train.sharding import MESH_AXES, mesh_shape

        t = self.cfg.train
        shape = dict(zip(MESH_AXES, mesh_shape(dict(self.cfg.mesh), self.chips)))
        dp = shape["data"] * shape["fsdp"]
        where = f"{self.tpu.accelerator_type} × {self.num_slices} slice(s) = {self.chips} chips on {self.processes} hosts"
        if t.batch_size % dp:
            raise UserError(f"train.batch_size {t.batch_size} does not split over the data-parallel mesh size {dp} "
                            f"({where}, mesh {shape}); e.g. --config.train.batch_size={dp * max(1, t.batch_size // dp)}")
        if t.batch_size % self.processes:
            raise UserError(f"train.batch_size {t.batch_size} does not split over the {self.processes} trainer "
                            f"processes ({where})")
        if (t.batch_size // t.grad_accum) % dp:
            raise UserError(f"the micro-batch {t.batch_size // t.grad_accum} (batch_size / grad_accum) does not split "
                            f"over the data-parallel mesh size {dp} ({where})")
        if shape["data"] % self.num_slices:
            raise UserError(f"with {self.num_slices} slices mesh.data ({shape['data']}) must be a multiple of "
                            f"{self.num_slices}: slices are joined by the data-centre network, so they split the "
                            "data axis (fsdp and tensor stay inside a slice)")
        return shape

    def summary(self) -> list[str]:
        shape = self.check()
        t = self.cfg.train
        return [f"slice {self.tpu.topology} = {self.tpu.accelerator_type}: {self.tpu.chips} chips on {self.tpu.hosts} "
                f"TPU VM worker(s) × {self.num_slices} slice(s) → {self.processes} trainer processes, {self.chips} chips",
                f"mesh {shape}; global batch {t.batch_size} = {t.batch_size // self.processes} per host "
                f"(grad_accum {t.grad_accum}); TPU VM software {self.tpu.generation.runtime_version}"]


def make_job(tpu: str, num_slices: int, config: str, overrides: list[str], workdir: str) -> Job:
    if num_slices < 1:
        raise UserError("--num_slices must be ≥ 1")
    if not workdir:
        raise UserError("--workdir is required (gs://BUCKET/runs/NAME, checkpoints and metrics go there)")
    cfg = load_trainer_config(config, overrides)
    job = Job(parse_tpu(tpu), num_slices, cfg, worker_config_path(config), list(overrides), workdir)
    job.check()
    return job


def worker_config_path(config: str) -> str:
    """The config as the workers see it: relative to the repository root, which is what gets shipped."""
    path, colon, arg = config.partition(":")
    try:
        rel = Path(path).resolve().relative_to(ROOT)
    except ValueError:
        raise UserError(f"--config={config} is outside the repository {ROOT}; the workers get the repository, so "
                        "put the config file in it (e.g. configs/)") from None
    return f"{rel.as_posix()}{colon}{arg}"


# =============================================================================================
# gs:// paths
# =============================================================================================
_GS = re.compile(r"gs://([a-z0-9][a-z0-9._-]{1,220})(/.*)?$")


def split_gs(url: str):
    """('bucket', '/rest') of gs://bucket/rest, or None for anything else."""
    m = _GS.match(url)
    return (m.group(1), m.group(2) or "") if m else None


def mounted(url: str, mode: str) -> str:
    """The path the trainer is given for `url`: /gcs/<bucket>/<rest> under FUSE, the URL itself natively."""
    parts = split_gs(url)
    if parts is None or mode == "native":
        return url
    return f"{FUSE_ROOT}/{parts[0]}{parts[1]}"


def buckets_of(job: Job, extra: list[str] = ()) -> list[str]:
    urls = [job.workdir, *extra, *(str(config_value(job.cfg, k) or "") for k in PATH_KEYS)]
    return sorted({split_gs(u)[0] for u in urls if split_gs(u)})


def default_compilation_cache(job: Job) -> str:
    """Next to the run, in the workdir's bucket, so every worker and every later run share it."""
    parts = split_gs(job.workdir)
    return f"gs://{parts[0]}/jax_compilation_cache" if parts else os.path.join(job.workdir, "jax_compilation_cache")


def local_paths_to_check(job: Job) -> list[str]:
    """Config paths that are neither gs:// nor 'demo': they must exist on every worker."""
    out = []
    for k in PATH_KEYS:
        v = str(config_value(job.cfg, k) or "")
        if v and v != "demo" and not split_gs(v):
            out.append(f"{k}={v}")
    return out


# =============================================================================================
# The trainer's command and environment
# =============================================================================================
def trainer_env(job: Job, gcs: str, compilation_cache: str | None, extra_env: list[str]) -> dict:
    env = {
        # compiled steps are reused across workers, restarts and runs (the trainer defaults to ~/.cache otherwise)
        "JAX_COMPILATION_CACHE_DIR": mounted(compilation_cache or default_compilation_cache(job), gcs),
        # fail loudly if the TPU is not usable instead of quietly training on the host's CPU
        "JAX_PLATFORMS": "tpu,cpu",
    }
    for item in extra_env:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise UserError(f"--env takes KEY=VALUE, got {item!r}")
        env[key] = value
    return env


def trainer_args(job: Job, gcs: str) -> list[str]:
    """`python -m mvd_jax.train --config=... --workdir=... --multihost [overrides]`, with gs:// paths mounted."""
    args = [*ENTRY_POINT, f"--config={job.config_arg}", f"--workdir={mounted(job.workdir, gcs)}", "--multihost"]
    overridden = set()
    for o in job.overrides:
        key, _, value = o.partition("=")
        overridden.add(key[len("--config."):])
        args.append(f"{key}={mounted(value, gcs)}" if split_gs(value) else o)
    for k in PATH_KEYS:  # gs:// paths written in the config file itself
        v = str(config_value(job.cfg, k) or "")
        if k not in overridden and split_gs(v) and gcs == "fuse":
            args.append(f"--config.{k}={mounted(v, gcs)}")
    return args


def env_prefix(env: dict) -> str:
    return " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())


# =============================================================================================
# Running (or printing) commands
# =============================================================================================
@dataclasses.dataclass
class Step:
    what: str  # one line for the reader
    argv: list | None = None  # run directly
    shell: str | None = None  # run with bash -c
    poll_until: str | None = None  # repeat (every 30 s) until stdout's stripped text equals this

    def text(self) -> str:
        return self.shell if self.shell is not None else shlex.join(self.argv)


def run_steps(steps: list[Step], *, dry_run: bool, header: list[str] = (), out=None) -> int:
    """Prints every command (`# what` above it); without dry_run also runs them in order, stopping at the
    first failure (its exit status is returned)."""
    import time

    out = out or sys.stdout
    for line in header:
        print(f"# {line}", file=out)
    for step in steps:
        note = f" (repeated every 30 s until it prints {step.poll_until})" if step.poll_until else ""
        print(f"\n# {step.what}{note}", file=out)
        print(step.text(), file=out, flush=True)
        if dry_run:
            continue
        cmd = ["bash", "-c", step.shell] if step.shell is not None else step.argv
        if step.poll_until:
            while True:
                proc = subprocess.run(cmd, capture_output=True, text=True)
                state = proc.stdout.strip()
                print(f"  state: {state or proc.stderr.strip()[-200:]}", file=out, flush=True)
                if proc.returncode == 0 and state == step.poll_until:
                    break
                if state in ("FAILED", "SUSPENDED"):
                    return 1
                time.sleep(30)
            continue
        rc = subprocess.run(cmd).returncode
        if rc:
            print(f"# failed (exit {rc}): {step.what}", file=out)
            return rc
    return 0


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """(launcher arguments, trainer --config.* overrides) from a command line."""
    ours, theirs = [], []
    for a in argv:
        (theirs if a.startswith("--config.") else ours).append(a)
    return ours, theirs
