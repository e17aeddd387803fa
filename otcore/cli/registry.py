"""The subcommand registry: each command module registers its flag builder and its runner."""
from __future__ import annotations

import argparse
from collections.abc import Callable

COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], dict]]] = {}


def command(name: str, add_args: Callable[[argparse.ArgumentParser], None]) -> Callable:
    """Register a subcommand: its argument builder and its runner (returns the JSON result)."""

    def wrap(run: Callable[[argparse.Namespace], dict]) -> Callable:
        COMMANDS[name] = (add_args, run)
        return run

    return wrap
