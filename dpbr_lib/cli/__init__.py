"""The ``dpbr`` command. Each subcommand lives in its own module with a ``register`` function."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from dpbr_lib import __version__, allocator

#: Subcommand modules under :mod:`dpbr_lib.cli`, in the order ``dpbr --help`` lists them.
COMMANDS: tuple[str, ...] = ("book", "plot", "reconstruct", "rerun", "sweep", "train")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dpbr",
        description="Data privacy and Byzantine resilience in distributed ML.",
    )
    parser.add_argument("--version", action="version", version=f"dpbr {__version__}")
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"dpbr_lib.cli.{name}").register(subcommands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    allocator.keep_freed_memory()  # speed only: same numbers
    try:
        return int(args.handler(args) or 0)
    except ValueError as error:  # bad input: one clear line, no traceback
        print(f"dpbr {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
