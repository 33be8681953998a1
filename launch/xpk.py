"""GKE through xpk (github.com/AI-Hypercomputer/xpk, `pip install xpk`): a cluster of TPU slices, a bucket
mounted in every pod, and the trainer as an xpk workload (a JobSet: one pod per TPU VM, all slices).

    python -m launch.xpk ACTION --cluster=C --tpu=v5litepod-32 --zone=ZONE [--project=P] [--num_slices=N]
        [--workload=W] --config=configs/X.py[:arg] --workdir=gs://BUCKET/runs/RUN [--config.a.b=v ...] [--dry-run]

ACTION   cluster-create   the GKE cluster with N slices of the TPU type and the Cloud Storage FUSE CSI driver
         storage-attach   mount each bucket the job names at /gcs/<bucket> in every workload's pods
         run              `xpk workload create`: the trainer on every TPU VM of every slice
         logs             stream the log of the workload's first pod (process 0) with kubectl
         list             the cluster's workloads
         delete           `xpk workload delete` (the checkpoints in the bucket stay; `run` again resumes)
         cluster-delete   the whole cluster

The container: by default xpk layers this checkout (--script-dir) onto `--base_docker_image`
(python:3.11-slim) and the workload first pip-installs the project with libtpu; `--docker_image=IMAGE`
runs a prebuilt image instead (launch/Dockerfile builds one) and skips the install. The trainer's
environment goes in an --env-file. Workers = TPU VMs of the slice × slices, one trainer process each
(`--multihost`: JAX finds its peers from the JobSet's environment); the config is checked against that
before anything is submitted. `--dry-run` prints every command (no credentials needed).

Example:

    python -m launch.xpk run --cluster=mvd --tpu=v5litepod-32 --zone=us-west4-a --project=my-project \\
        --config=configs/demo.py --workdir=gs://my-bucket/runs/demo --config.train.batch_size=32 --dry-run
"""
from __future__ import annotations

import argparse
import shlex
import sys

if __package__ in (None, ""):  # python launch/xpk.py
    import os

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from launch import common  # noqa: E402
from launch.common import LIBTPU, Step, UserError  # noqa: E402

ACTIONS = ("cluster-create", "storage-attach", "run", "logs", "list", "delete", "cluster-delete")
NEEDS_JOB = ("storage-attach", "run")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m launch.xpk", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=ACTIONS)
    p.add_argument("--cluster", required=True)
    p.add_argument("--tpu", required=True, help="accelerator type or topology: v5litepod-32, v5e:4x8, v5p-32, v6e-16")
    p.add_argument("--num_slices", type=int, default=1)
    p.add_argument("--zone", required=True)
    p.add_argument("--project", default=None)
    p.add_argument("--workload", default="mvd-train", help="workload (JobSet) name")
    p.add_argument("--config", default=None, help="trainer config configs/X.py[:arg] (a path inside the repository)")
    p.add_argument("--workdir", default=None, help="run directory, gs://BUCKET/runs/NAME")
    p.add_argument("--capacity", choices=("on-demand", "spot", "reservation"), default="on-demand",
                   help="cluster-create: where the TPUs come from")
    p.add_argument("--reservation", default=None, help="with --capacity=reservation")
    p.add_argument("--docker_image", default=None, help="a prebuilt image with the project installed "
                   "(launch/Dockerfile); default: layer this checkout onto --base_docker_image and install at start")
    p.add_argument("--base_docker_image", default="python:3.11-slim")
    p.add_argument("--gcs", choices=("fuse", "native"), default="fuse",
                   help="fuse: buckets mounted at /gcs/<bucket> (storage-attach) and the trainer gets those paths; "
                        "native: gs:// URLs passed through (the trainer opens them itself: mvd_jax/storage.py)")
    p.add_argument("--compilation_cache", default=None)
    p.add_argument("--env", action="append", default=[], help="KEY=VALUE for the trainer (repeatable)")
    p.add_argument("--max_restarts", type=int, default=3,
                   help="restart the JobSet after a failure (the trainer resumes from its last checkpoint)")
    p.add_argument("--env_file", default=None, help="where to write the trainer's environment (default /tmp/...)")
    p.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true", help="print the commands only")
    return p


def _where(args) -> list[str]:
    return [f"--zone={args.zone}"] + ([f"--project={args.project}"] if args.project else [])


def region(zone: str) -> str:
    return zone.rsplit("-", 1)[0]  # us-west4-a → us-west4 (xpk clusters are regional)


def cluster_create_steps(args, tpu) -> list[Step]:
    cmd = ["xpk", "cluster", "create", f"--cluster={args.cluster}", f"--tpu-type={tpu.accelerator_type}",
           f"--num-slices={args.num_slices}", *_where(args), "--enable-gcsfuse-csi-driver"]
    if args.capacity == "reservation":
        if not args.reservation:
            raise UserError("--capacity=reservation needs --reservation=NAME")
        cmd.append(f"--reservation={args.reservation}")
    else:
        cmd.append(f"--{args.capacity}")
    return [Step(f"GKE cluster with {args.num_slices} × {tpu.accelerator_type} ({tpu.hosts} TPU VM node(s) per "
                 "slice) and the Cloud Storage FUSE CSI driver", cmd)]


def storage_steps(args, job) -> list[Step]:
    if args.gcs != "fuse":
        return []
    steps = []
    for bucket in common.buckets_of(job, [args.compilation_cache or ""]):
        steps.append(Step(f"mount gs://{bucket} at {common.FUSE_ROOT}/{bucket} in every workload's pods "
                          "(the nodes' service account needs read/write on the bucket)",
                          ["xpk", "storage", "attach", f"{args.cluster}-{bucket}"[:63], "--type=gcsfuse",
                           f"--cluster={args.cluster}", *_where(args), f"--bucket={bucket}",
                           f"--mount-point={common.FUSE_ROOT}/{bucket}", "--readonly=false", "--size=1",
                           "--auto-mount=true"]))
    return steps


def env_file_path(args) -> str:
    return args.env_file or f"/tmp/{args.workload}.env"


def workload_command(args, job) -> str:
    """What each pod runs, in the image's working directory (the checkout)."""
    trainer = shlex.join(common.trainer_args(job, args.gcs))
    if args.docker_image:
        return trainer
    install = f"pip install -q --root-user-action=ignore -e . {LIBTPU}"  # gcsfs comes with the project
    return f"{install} && {trainer}"


def run_steps_for(args, job) -> list[Step]:
    env = common.trainer_env(job, args.gcs, args.compilation_cache, args.env)
    path = env_file_path(args)
    body = "\n".join(f"{k}={v}" for k, v in env.items())  # docker --env-file syntax: KEY=VALUE, no quoting
    cmd = ["xpk", "workload", "create", f"--cluster={args.cluster}", f"--workload={args.workload}",
           f"--tpu-type={job.tpu.accelerator_type}", f"--num-slices={args.num_slices}", *_where(args),
           f"--env-file={path}", f"--max-restarts={args.max_restarts}", f"--command={workload_command(args, job)}"]
    steps = [Step("the trainer's environment (docker --env-file)",
                  shell=f"cat > {shlex.quote(path)} <<'EOF'\n{body}\nEOF")]
    if args.docker_image:
        cmd.append(f"--docker-image={args.docker_image}")
    else:  # xpk builds its image from --script-dir: give it the tracked files only (no .venv, no runs/)
        stage = f"/tmp/{args.workload}-src"
        steps.append(Step("export this checkout (uncommitted changes to tracked files included) for xpk's image",
                          shell=f"rm -rf {stage} && mkdir -p {stage} && cd {shlex.quote(str(common.ROOT))} && "
                                f"ref=$(git stash create) && git archive ${{ref:-HEAD}} | tar -x -C {stage}"))
        cmd += [f"--base-docker-image={args.base_docker_image}", f"--script-dir={stage}"]
    steps.append(Step(f"the trainer on {job.processes} TPU VM(s): {job.tpu.hosts} per slice × {args.num_slices} "
                      "slice(s)", cmd))
    return steps


def logs_steps(args) -> list[Step]:
    return [Step("kubectl credentials for the cluster",
                 ["gcloud", "container", "clusters", "get-credentials", args.cluster, f"--region={region(args.zone)}"]
                 + ([f"--project={args.project}"] if args.project else [])),
            Step("stream the first pod's log (process 0: progress and metrics)",
                 ["kubectl", "logs", "-f", "--tail=200", "-l",
                  f"jobset.sigs.k8s.io/jobset-name={args.workload},batch.kubernetes.io/job-completion-index=0,"
                  "jobset.sigs.k8s.io/job-index=0"])]


def plan(argv: list[str]):
    ours, overrides = common.split_overrides(argv)
    args = parser().parse_args(ours)
    tpu = common.parse_tpu(args.tpu)
    header = [f"{args.action}: cluster {args.cluster}, {tpu.topology} = {tpu.accelerator_type} × {args.num_slices}"]
    job = None
    if args.action in NEEDS_JOB or args.config:
        if not args.config:
            raise UserError(f"{args.action} needs --config and --workdir")
        job = common.make_job(args.tpu, args.num_slices, args.config, overrides, args.workdir)
        header += job.summary()
        for item in common.local_paths_to_check(job):
            header.append(f"note: {item} is read in every pod: it must be in the image (or be gs://)")
    elif overrides:
        raise UserError(f"{args.action} takes no --config.* overrides")
    where = _where(args)
    steps = {
        "cluster-create": lambda: cluster_create_steps(args, tpu),
        "storage-attach": lambda: storage_steps(args, job),
        "run": lambda: run_steps_for(args, job),
        "logs": lambda: logs_steps(args),
        "list": lambda: [Step("the cluster's workloads", ["xpk", "workload", "list", f"--cluster={args.cluster}",
                                                          *where])],
        "delete": lambda: [Step("delete the workload (checkpoints stay in the bucket)",
                                ["xpk", "workload", "delete", f"--workload={args.workload}",
                                 f"--cluster={args.cluster}", *where])],
        "cluster-delete": lambda: [Step("delete the cluster", ["xpk", "cluster", "delete",
                                                               f"--cluster={args.cluster}", *where])],
    }[args.action]()
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
