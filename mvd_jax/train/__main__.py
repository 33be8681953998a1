"""python -m mvd_jax.train --config=configs/X.py[:arg] --workdir=DIR [--config.section.key=value ...]

Runs or resumes training in DIR (checkpoints/, metrics.jsonl, tensorboard/, samples/, bad_videos.tsv).
Multi-host: every process runs the same command with --multihost (TPU pods find their peers
themselves) or with --coordinator_address/--num_processes/--process_id (e.g. CPU processes in tests).

The command line and every config value are checked first (mvd_jax/settings.py): a bad one is one
`error:` line and exit status 2, before JAX starts, any data is read or DIR is created.
"""
import sys
import types

from absl import app, flags
from ml_collections import config_flags

from mvd_jax.errors import UserError

HELP_FLAGS = ("-h", "--help", "--helpshort", "--helpfull")


def define_flags(argv) -> flags.FlagValues:
    """The command's flags, in a FlagValues of their own: parsing them twice (tests call main in-process)
    never meets flags a previous parse defined (config_flags defines one per --config.a.b override)."""
    values = flags.FlagValues()
    # sys_argv: the --config.a.b overrides are declared from this list (by default config_flags reads sys.argv)
    config_flags.DEFINE_config_file("config", None, "training config file (configs/*.py[:arg])", flag_values=values,
                                    lock_config=True, sys_argv=argv)
    flags.DEFINE_string("workdir", None, "run directory (resumed if it holds checkpoints)", flag_values=values)
    flags.DEFINE_bool("multihost", False, "call jax.distributed.initialize() (auto-detected peers)", flag_values=values)
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (explicit multi-process set-up)",
                        flag_values=values)
    flags.DEFINE_integer("num_processes", None, "number of processes (with --coordinator_address)", lower_bound=1,
                         flag_values=values)
    flags.DEFINE_integer("process_id", None, "this process's index (with --coordinator_address)", lower_bound=0,
                         flag_values=values)
    return values


def parse_command_line(argv: list[str]) -> types.SimpleNamespace:
    """The command's settings, the config resolved: every value checked (mvd_jax/settings.py). Any problem
    is a UserError whose message names the flag or key, the value and what is allowed."""
    from mvd_jax.settings import parse_flags, resolve

    values = define_flags(argv)
    parse_flags(values, argv)
    if values.config is None or not values.workdir:
        raise UserError("--config and --workdir are required")
    if values.coordinator_address and (values.num_processes is None or values.process_id is None):
        raise UserError("--coordinator_address needs --num_processes and --process_id")
    if values.process_id is not None and values.num_processes is not None and values.process_id >= values.num_processes:
        raise UserError(f"--process_id must be in 0..{values.num_processes - 1} (--num_processes), "
                        f"got {values.process_id}")
    return types.SimpleNamespace(config=resolve(values.config), workdir=values.workdir, multihost=values.multihost,
                                 coordinator_address=values.coordinator_address, num_processes=values.num_processes,
                                 process_id=values.process_id)


def run(args) -> None:
    """Training, once the command line is known to be good."""
    import jax
    from absl import logging

    from mvd_jax.compile_cache import enable_persistent_cache

    logging.set_verbosity(logging.WARNING)  # Orbax narrates every save at INFO
    enable_persistent_cache()  # repeated runs and resumes skip recompiling

    if args.coordinator_address:
        jax.distributed.initialize(args.coordinator_address, num_processes=args.num_processes,
                                   process_id=args.process_id)
    elif args.multihost:
        jax.distributed.initialize()
    from mvd_jax.train.trainer import train

    try:
        metrics = train(args.config, args.workdir).metrics
    except UserError as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        sys.exit(2)
    if metrics and jax.process_index() == 0:
        print("final: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()
                                    if k in ("loss_avg", "grad_norm", "steps_per_s")))


def main(argv=None) -> None:
    argv = list(sys.argv if argv is None else argv)
    if any(a in HELP_FLAGS for a in argv[1:]):
        print(__doc__ + "\n" + define_flags(argv[:1]).get_help())
        return
    try:
        args = parse_command_line(argv)
    except UserError as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        sys.exit(2)
    # Under absl's app.run (Grain's worker processes read absl's global flags, google/grain#1355); our flags
    # were parsed above, so it parses none.
    app.run(lambda _: run(args), argv=argv[:1])


if __name__ == "__main__":
    main()
