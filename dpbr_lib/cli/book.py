"""``dpbr book``: execute the notebooks and build the Jupyter Book into ``book/_build/html``.

The work happens inside ``jb build`` (the :mod:`dpbr_lib.book_build` Sphinx extension fetches the
widget JavaScript and executes the notebooks with papermill, reusing unchanged runs); this
command chooses the profile, runs the build and prints where the HTML is.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from dpbr_lib import book_build
from dpbr_lib.notebook_runner import PROFILES


def repository_root() -> Path:
    """The checkout that holds ``book/`` (the package is installed editable from it)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "book").is_dir():
        raise ValueError(f"No book/ folder next to the package (looked in {root}).")
    return root


class BuildError(RuntimeError):
    """``jb build`` exited with an error (its own messages say why)."""


def build(
    book: Path, *, profile: str | None = None, warnings_as_errors: bool = False
) -> Path:
    """Run ``jb build`` on ``book`` (profile ``None``: the one ``_config.yml`` names)."""
    jb = "from jupyter_book.cli.main import main; main()"
    command = [sys.executable, "-c", jb, "build", str(book)]
    if warnings_as_errors:
        command += ["-W", "-n", "--keep-going"]
    environment = dict(os.environ)
    if profile is not None:
        environment[book_build.PROFILE_VARIABLE] = book_build.book_profile(profile)
    result = subprocess.run(command, cwd=book.parent, env=environment)
    if result.returncode:
        raise BuildError(f"jb build {book} failed with exit code {result.returncode}.")
    return book / "_build" / "html"


def run(args: argparse.Namespace) -> int:
    book = Path(args.book) if args.book else repository_root() / "book"
    if not (book / "_toc.yml").is_file():
        raise ValueError(
            f"The 'book' parameter must be a folder with a _toc.yml. Got {str(book)!r} instead."
        )
    start = time.perf_counter()
    try:
        html = build(book.resolve(), profile=args.profile, warnings_as_errors=args.strict)
    except BuildError as error:
        print(f"dpbr book: error: {error} See the messages above.", file=sys.stderr)
        return 1
    print(f"Book built in {time.perf_counter() - start:.0f} s: {html / 'index.html'}")
    return 0


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "book", help="execute the notebooks (papermill, cached) and build the Jupyter Book"
    )
    parser.add_argument(
        "--profile", choices=PROFILES, default=None,
        help="notebook profile (default: dpbr_profile in _config.yml, i.e. quick)",
    )
    parser.add_argument("--strict", action="store_true", help="treat warnings as errors (-W -n)")
    parser.add_argument("--book", default=None, help="book folder (default: the checkout's book/)")
    parser.set_defaults(handler=run)
