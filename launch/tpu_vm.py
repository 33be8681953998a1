"""Cloud TPU VMs: create a slice (queued resource), install mvd_jax on every worker, start the trainer on all
of them, stream its log, stop it, tear the slice down.

    python -m launch.tpu_vm ACTION --name=NAME --tpu=v5litepod-32 --zone=ZONE [--project=P] [--num_slices=N]
        --config=configs/X.py[:arg] --workdir=gs://BUCKET/runs/RUN [--config.a.b=v ...] [--dry-run]

ACTION   up       create + wait + install + run (the one command from a checkout to a running job)
         create   request the slice(s) as a queued resource (`--provisioning` spot | reserved | on-demand)
         wait     poll the queued resource until it is ACTIVE
         install  copy this checkout (or `--source=git`) to every worker, Python 3.11 venv, mvd_jax + libtpu,
                  Cloud Storage FUSE mounts of the job's buckets at /gcs/<bucket>
         run      start `python -m mvd_jax.train ... --multihost` on every worker (in the background; the
                  worker's output goes to ~/mvd_jax_train.log)
         logs     stream worker 0's log (process 0 prints the progress and metrics; `--worker=all` for all)
         stop     SIGTERM the trainer on every worker: it saves a checkpoint and exits; `run` resumes it
         status   the queued resource and its nodes
         delete   delete the queued resource and its TPU VMs

Every command is printed before it runs; `--dry-run` only prints (no credentials needed). The worker
count comes from the slice: one TPU VM per 4 chips (v5e/v6e slices of ≤ 8 chips are one VM), one trainer
process per VM; multi-slice (`--num_slices=N`) makes N nodes NAME-0 … NAME-(N-1) in one queued resource
and the slices split mesh.data. Before anything is created the config is loaded as the trainer would
load it and checked against the job: the mesh must use exactly the job's chips, the global batch must
split over the data axes and the hosts.

Example (the launch/README.md walk-through):

    python -m launch.tpu_vm up --name=mvd-demo --tpu=v5litepod-32 --zone=us-west4-a --project=my-project \\
        --config=configs/demo.py --workdir=gs://my-bucket/runs/demo --config.train.batch_size=32 --dry-run
"""
from __future__ import annotations

import argparse
import shlex
import sys

if __package__ in (None, ""):  # python launch/tpu_vm.py
    import os

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from launch import common  # noqa: E402
from launch.common import LIBTPU, Step, UserError  # noqa: E402

ACTIONS = ("up", "create", "wait", "install", "run", "logs", "stop", "status", "delete")
NEEDS_JOB = ("up", "install", "run")
REMOTE_DIR = "~/mvd_jax"
LOG = "~/mvd_jax_train.log"
PID = "~/mvd_jax_train.pid"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m launch.tpu_vm", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=ACTIONS)
    p.add_argument("--name", required=True, help="queued resource and TPU node name (multi-slice: NAME-0 … NAME-N-1)")
    p.add_argument("--tpu", required=True, help="accelerator type or topology: v5litepod-32, v5e:4x8, v5p-32, v6e-16")
    p.add_argument("--num_slices", type=int, default=1)
    p.add_argument("--zone", required=True)
    p.add_argument("--project", default=None, help="default: gcloud's configured project")
    p.add_argument("--config", default=None, help="trainer config configs/X.py[:arg] (a path inside the repository)")
    p.add_argument("--workdir", default=None, help="run directory, gs://BUCKET/runs/NAME")
    p.add_argument("--provisioning", choices=("on-demand", "spot", "reserved"), default="on-demand")
    p.add_argument("--runtime_version", default=None, help="TPU VM software (default: the generation's)")
    p.add_argument("--source", choices=("local", "git"), default="local",
                   help="local: this checkout as it is (git archive of the working tree); git: clone --repo at --ref")
    p.add_argument("--repo", default=None, help="git URL (with --source=git)")
    p.add_argument("--ref", default="main", help="git branch/tag (with --source=git)")
    p.add_argument("--gcs", choices=("fuse", "native"), default="fuse",
                   help="fuse: mount buckets at /gcs/<bucket> and give the trainer those paths; "
                        "native: pass gs:// URLs through (the trainer opens them itself: mvd_jax/storage.py)")
    p.add_argument("--compilation_cache", default=None, help="JAX compilation cache (default: gs://<workdir bucket>/"
                   "jax_compilation_cache)")
    p.add_argument("--env", action="append", default=[], help="KEY=VALUE for the trainer (repeatable), e.g. "
                   "LIBTPU_INIT_ARGS=...")
    p.add_argument("--worker", default="0", help="logs: which worker's log (0 … hosts−1, or all)")
    p.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true", help="print the commands only")
    return p


# =============================================================================================
# gcloud pieces
# =============================================================================================
def _where(args) -> list[str]:
    return [f"--zone={args.zone}"] + ([f"--project={args.project}"] if args.project else [])


def node_names(args) -> list[str]:
    return [args.name] if args.num_slices == 1 else [f"{args.name}-{i}" for i in range(args.num_slices)]


def ssh(args, node: str, command: str, worker: str = "all") -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", node, *_where(args), f"--worker={worker}",
            f"--command={command}"]


def create_steps(args, tpu) -> list[Step]:
    qr = ["gcloud", "compute", "tpus", "queued-resources", "create", args.name, *_where(args),
          f"--accelerator-type={tpu.accelerator_type}",
          f"--runtime-version={args.runtime_version or tpu.generation.runtime_version}"]
    qr += [f"--node-id={args.name}"] if args.num_slices == 1 else [f"--node-count={args.num_slices}",
                                                                    f"--node-prefix={args.name}"]
    qr += {"on-demand": [], "spot": ["--spot"], "reserved": ["--reserved"]}[args.provisioning]
    nodes = f"{args.num_slices} × " if args.num_slices > 1 else ""
    return [Step(f"request {nodes}{tpu.accelerator_type} ({tpu.hosts} worker VM(s) each) as a queued resource", qr)]


def wait_steps(args) -> list[Step]:
    return [Step("wait until the queued resource is ACTIVE (capacity granted, VMs up)",
                 ["gcloud", "compute", "tpus", "queued-resources", "describe", args.name, *_where(args),
                  "--format=value(state.state)"], poll_until="ACTIVE")]


def install_script(args, job) -> str:
    """The shell script every worker runs: Python 3.11 (setup.py's python_requires; the TPU images ship
    3.10), the project in a venv via scripts/venv.sh, libtpu, and FUSE mounts of the job's buckets."""
    lines = ["set -eo pipefail",  # the workers' login shell is bash
             "sudo apt-get update -qq",
             "sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3.11 python3.11-venv git"]
    buckets = common.buckets_of(job, [args.compilation_cache or ""]) if args.gcs == "fuse" else []
    if buckets:
        lines += [  # Cloud Storage FUSE from Google's apt repository (cloud.google.com/storage/docs/gcsfuse-install)
            'echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt '
            'gcsfuse-$(lsb_release -c -s) main" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null',
            "curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee "
            "/usr/share/keyrings/cloud.google.asc >/dev/null",
            "sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcsfuse"]
        for b in buckets:
            mnt = f"{common.FUSE_ROOT}/{b}"
            # --rename-dir-limit: Orbax commits a checkpoint by renaming its temporary directory
            lines.append(f"sudo mkdir -p {mnt} && sudo chown $(id -u):$(id -g) {mnt} && (mountpoint -q {mnt} || "
                         f"gcsfuse --implicit-dirs --rename-dir-limit=200000 {b} {mnt})")
    if args.source == "git":
        repo = shlex.quote(args.repo)
        lines.append(f"rm -rf {REMOTE_DIR} && git clone --depth 1 --branch {shlex.quote(args.ref)} {repo} {REMOTE_DIR}")
    else:
        lines.append(f"rm -rf {REMOTE_DIR} && mkdir -p {REMOTE_DIR} && tar -xzf ~/mvd_jax.tgz -C {REMOTE_DIR}")
    lines += [f"cd {REMOTE_DIR}",
              'PYTHON=python3.11 EXTRAS="" . scripts/venv.sh',  # the repository's own venv recipe (pinned deps)
              f".venv/bin/pip install -q {LIBTPU}",  # gs:// support (gcsfs) comes with the project
              '.venv/bin/python -c "import jax, mvd_jax; print(\'jax\', jax.__version__, \'and mvd_jax installed\')"']
    return "\n".join(lines)


def install_steps(args, job) -> list[Step]:
    steps = []
    if args.source == "local":
        tgz = f"/tmp/mvd_jax-{args.name}.tgz"
        steps.append(Step("pack this checkout, uncommitted changes to tracked files included",
                          shell=f"cd {shlex.quote(str(common.ROOT))} && ref=$(git stash create) && "
                                f"git archive --format=tar.gz -o {tgz} ${{ref:-HEAD}}"))
        for node in node_names(args):
            steps.append(Step(f"copy it to every worker of {node}",
                              ["gcloud", "compute", "tpus", "tpu-vm", "scp", tgz, f"{node}:mvd_jax.tgz",
                               *_where(args), "--worker=all"]))
    elif not args.repo:
        raise UserError("--source=git needs --repo=URL")
    script = install_script(args, job)
    for node in node_names(args):
        steps.append(Step(f"install on all {job.tpu.hosts} worker(s) of {node}",
                          ssh(args, node, script)))
    return steps


def run_command(args, job) -> str:
    env = common.trainer_env(job, args.gcs, args.compilation_cache, args.env)
    python, *rest = common.trainer_args(job, args.gcs)
    trainer = shlex.join([f".venv/bin/{python}", *rest])
    # setsid + nohup: the trainer outlives the ssh session; $! is the trainer itself (kept for `stop`)
    return (f"cd {REMOTE_DIR} || exit 1; {common.env_prefix(env)} setsid nohup {trainer} > {LOG} 2>&1 "
            f"< /dev/null & echo $! > {PID}")


def run_steps_for(args, job) -> list[Step]:
    command = run_command(args, job)
    return [Step(f"start the trainer on all {job.tpu.hosts} worker(s) of {node} ({job.processes} processes in all)",
                 ssh(args, node, command)) for node in node_names(args)]


def logs_steps(args) -> list[Step]:
    return [Step(f"stream the trainer's log on worker {args.worker} of {node_names(args)[0]} (Ctrl-C stops "
                 "watching, not training)", ssh(args, node_names(args)[0], f"tail -n 200 -F {LOG}", args.worker))]


def stop_steps(args) -> list[Step]:
    command = f"test -f {PID} && kill -TERM $(cat {PID}) || echo 'no trainer pid file'"
    return [Step(f"SIGTERM the trainer on every worker of {node}: it checkpoints and exits", ssh(args, node, command))
            for node in node_names(args)]


def status_steps(args) -> list[Step]:
    return [Step("the queued resource", ["gcloud", "compute", "tpus", "queued-resources", "describe", args.name,
                                         *_where(args)]),
            Step("its TPU nodes", ["gcloud", "compute", "tpus", "tpu-vm", "list", *_where(args)])]


def delete_steps(args) -> list[Step]:
    return [Step("delete the queued resource and its TPU VMs (the workdir bucket is kept)",
                 ["gcloud", "compute", "tpus", "queued-resources", "delete", args.name, *_where(args), "--force",
                  "--quiet"])]


def plan(argv: list[str]):
    """(header lines, steps) for a command line — what the launcher would print and run."""
    ours, overrides = common.split_overrides(argv)
    args = parser().parse_args(ours)
    tpu = common.parse_tpu(args.tpu)
    job = None
    header = [f"{args.action}: {args.name}, {tpu.topology} = {tpu.accelerator_type} × {args.num_slices}"]
    if args.action in NEEDS_JOB or args.config:
        if not args.config:
            raise UserError(f"{args.action} needs --config and --workdir")
        job = common.make_job(args.tpu, args.num_slices, args.config, overrides, args.workdir)
        header += job.summary()
        for item in common.local_paths_to_check(job):
            header.append(f"note: {item} is read on every worker: it must exist there (or be gs://)")
        if args.gcs == "native" and common.split_gs(job.workdir):
            header.append("note: --gcs=native: the trainer opens the gs:// paths itself (gcsfs, TensorStore); "
                          "the workers' service account needs read/write on the workdir bucket")
    elif overrides:
        raise UserError(f"{args.action} takes no --config.* overrides")
    steps = {
        "create": lambda: create_steps(args, tpu),
        "wait": lambda: wait_steps(args),
        "install": lambda: install_steps(args, job),
        "run": lambda: run_steps_for(args, job),
        "up": lambda: create_steps(args, tpu) + wait_steps(args) + install_steps(args, job) + run_steps_for(args, job),
        "logs": lambda: logs_steps(args),
        "stop": lambda: stop_steps(args),
        "status": lambda: status_steps(args),
        "delete": lambda: delete_steps(args),
    }[args.action]()
    if args.action == "up":
        steps += logs_steps(args)
    return args, header, steps


def main(argv=None) -> int:
    try:
        args, header, steps = plan(sys.argv[1:] if argv is None else argv)
    except UserError as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    return common.run_steps(steps, dry_run=args.dry_run, header=header)


if __name__ == "__main__":
    sys.exit(main())
