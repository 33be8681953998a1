"""User-facing errors.

Anything that is the user's fault (a bad path, a truncated checkpoint, a config key we do not know)
raises `UserError`. Command-line entry points catch it and print one line instead of a traceback;
library callers get an ordinary exception (it subclasses ValueError) whose message may carry more
lines of detail after the first (e.g. every mismatched parameter of a checkpoint).
"""
import argparse
import functools
import os
import sys


class UserError(ValueError):
    """An error caused by the caller's input, reported without a traceback on the CLI."""


def cli_main(fn):
    """Wraps a CLI `main`: a UserError becomes `error: <first line>` on stderr and exit code 2.

    Set MVD_JAX_VERBOSE_ERRORS=1 to print the whole message (all detail lines).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            lines = str(e).splitlines() or [type(e).__name__]
            if os.environ.get("MVD_JAX_VERBOSE_ERRORS") == "1":
                print("error: " + "\n".join(lines), file=sys.stderr)
            else:
                more = f" ({len(lines) - 1} more lines with MVD_JAX_VERBOSE_ERRORS=1)" if len(lines) > 1 else ""
                print(f"error: {lines[0]}{more}", file=sys.stderr)
            sys.exit(2)

    return wrapper


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose refusals read like every other user error: one `error:` line (no usage block), exit 2.
    An option whose `type=` is a rule of mvd_jax/settings.py is range-checked while parsing."""

    def error(self, message):
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
