"""``dpbr book``: build the Jupyter Book into ``book/_build/html``."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


def repository_root() -> Path:
    """The checkout that holds ``book/`` (the package is installed editable from it)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "book").is_dir():
        raise ValueError(f"No book/ folder next to the package (looked in {root}).")
    return root


def build(root: Path, *, warnings_as_errors: bool = False) -> Path:
    command = [sys.executable, "-m", "jupyter_book", "build", str(root / "book")]
    if warnings_as_errors:
        command += ["-W", "-n", "--keep-going"]
    subprocess.run(command, check=True, cwd=root)
    return root / "book" / "_build" / "html"


def run(args: argparse.Namespace) -> int:
    html = build(repository_root(), warnings_as_errors=args.strict)
    print(f"Book built: {html / 'index.html'}")
    return 0


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser("book", help="build the Jupyter Book (HTML)")
    parser.add_argument("--strict", action="store_true", help="treat warnings as errors")
    parser.set_defaults(handler=run)
