"""``dpbr rerun NOTEBOOK -p NAME VALUE ...``: execute one notebook with new parameters.

The same path as the book build (papermill on the notebook's text form), so a rerun and the
book agree. ``NOTEBOOK`` is a name (``theory_bounds``) or a path (``notebooks/theory_bounds.md``);
the parameters are checked inside the notebook's first cells.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dpbr_lib import notebook_runner


def resolve_notebook(name: str, root: Path) -> Path:
    """A notebook path from a path or a bare name under ``root/notebooks``."""
    path = Path(name)
    if path.is_file():
        return path
    candidate = root / "notebooks" / f"{path.stem}.md"
    if candidate.is_file():
        return candidate
    available = sorted(p.stem for p in (root / "notebooks").glob("*.md"))
    raise ValueError(
        f"The 'notebook' parameter must be a notebook file or one of {', '.join(available)}. "
        f"Got {name!r} instead."
    )


def run(args: argparse.Namespace) -> int:
    from dpbr_lib.cli.book import repository_root

    root = repository_root()
    source = resolve_notebook(args.notebook, root)
    if args.list_parameters:
        declared = notebook_runner.declared_parameters(notebook_runner.read_notebook(source))
        for item in declared.values():
            print(f"{item.name}: {item.annotation} = {item.default!r}  # {item.comment}")
        return 0
    names = [name for name, _ in args.parameter]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ValueError(f"Parameters given twice: {', '.join(duplicated)}.")
    parameters = {name: notebook_runner.parse_value(value) for name, value in args.parameter}
    output = Path(args.out) if args.out else root / "_executed" / "rerun" / f"{source.stem}.ipynb"
    notebook_runner.execute(source, output, parameters, cwd=args.cwd or root, progress=True)
    print(f"Executed notebook: {output}")
    return 0


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "rerun", help="execute one notebook with new parameters (papermill)"
    )
    parser.add_argument("notebook", help="notebook name (theory_bounds) or path")
    parser.add_argument(
        "-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
        help="override a parameter; VALUE is a Python literal (0.3, [0, 1], None) or a string",
    )
    parser.add_argument(
        "--out", default=None, help="executed notebook (default: _executed/rerun/NAME.ipynb)"
    )
    parser.add_argument(
        "--cwd", default=None, help="working directory of the kernel (default: the checkout)"
    )
    parser.add_argument(
        "--list-parameters", action="store_true", help="print the notebook's parameters and exit"
    )
    parser.set_defaults(handler=run)
