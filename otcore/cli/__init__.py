"""Command line: python -m otcore train|list|fuse|... [--json].

Every subcommand calls the same pipeline functions as the dashboard. With --json, stdout
carries exactly one JSON object; progress always goes to stderr. A user's mistake (a
`UserError`, a missing or unreadable file) exits with code 2 and one line on stderr; anything
else is a bug and exits with code 1 and its traceback.

One module per group of commands (train, fusion, sweep, hessian), each registering itself in
`registry.COMMANDS`; `flags` builds the shared flags and the specs they make.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

# Registration order is the order of `--help`.
# Each command module registers its commands on import; this order is the order of `--help`.
import otcore.cli.train  # noqa: F401
import otcore.cli.fusion  # noqa: F401
import otcore.cli.sweep  # noqa: F401
import otcore.cli.hessian  # noqa: F401
import otcore.cli.check  # noqa: F401
from otcore.cli.output import dumps
from otcore.cli.registry import COMMANDS, command
from otcore.errors import UserError
from otcore.threads import apply_policy
from otcore.user_paths import checked

__all__ = ["COMMANDS", "command", "dumps", "main"]


def main(argv: list[str] | None = None) -> int:
    """Parse, run, print; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m otcore", description="OT Fusion Studio, headless.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_args, run) in COMMANDS.items():
        add_args(sub.add_parser(name, help=(run.__doc__ or "").strip()))
    args = parser.parse_args(argv)
    apply_policy(small_models=getattr(args, "dataset", None) == "digits")  # 8x8 inputs: one thread is fastest
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s: %(message)s")
    if getattr(args, "cache_dir", None):
        os.environ["OTCORE_CACHE_DIR"] = args.cache_dir
    try:
        if os.environ.get("OTCORE_CACHE_DIR"):  # a name the system refuses is the user's to fix, not a degraded cache
            checked(os.environ["OTCORE_CACHE_DIR"], "--cache-dir" if getattr(args, "cache_dir", None)
                    else "the cache folder ($OTCORE_CACHE_DIR)")
        result = COMMANDS[args.command][1](args)
    except (UserError, FileNotFoundError, PermissionError) as err:  # what the user can fix: one line
        print(f"error: {err}", file=sys.stderr)
        return 2
    # Anything else is a bug: it propagates, and Python prints its traceback and exits with 1.
    code = result.pop("exit_code", 0)  # a command whose answer is 'no' (check) says so in its exit code
    text = result.pop("text", None)
    if args.json or text is None:
        try:
            text = dumps(result)
        except ValueError as err:  # a non-finite number: a diverged computation, not valid JSON
            print(f"error: {err}", file=sys.stderr)
            return 1
    print(text)
    return code
