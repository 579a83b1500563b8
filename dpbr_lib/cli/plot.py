"""``dpbr plot PRESET``: draw a preset's figures from its results folder into PNG files."""

from __future__ import annotations

import argparse
from pathlib import Path

from dpbr_lib import presets
from dpbr_lib.cli.sweep import default_results


def run(args: argparse.Namespace) -> int:
    from dpbr_lib import plots, results

    preset = presets.get(args.preset)
    preset.profile(args.profile)
    folder = Path(args.results) if args.results else default_results(preset.name, args.profile)
    if not results.result_files(folder):
        raise ValueError(
            f"No result file in {str(folder)!r}. Run `dpbr sweep {preset.name} --profile "
            f"{args.profile} --results {folder}` first."
        )
    out = Path(args.out) if args.out else folder / "figures"
    out.mkdir(parents=True, exist_ok=True)
    figures = plots.draw(preset.figures, results.load_results(folder),
                         results.load_summaries(folder))
    for name, figure in figures.items():
        path = out / f"{preset.name}-{name}.png"
        figure.savefig(path, dpi=args.dpi)
        print(path)
    return 0


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "plot", help="draw a preset's figures from its results",
        description="Draw a preset's figures (PNG) from the results of `dpbr sweep`.",
    )
    parser.add_argument("preset", choices=presets.names(), metavar="PRESET",
                        help=f"one of: {', '.join(presets.names())}")
    parser.add_argument("--profile", choices=presets.PROFILES, default="quick",
                        help="the profile whose default results folder to read (default: quick)")
    parser.add_argument("--results", default=None, metavar="DIR",
                        help="results folder (default: results/PRESET-PROFILE)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="folder for the PNG files (default: DIR/figures)")
    parser.add_argument("--dpi", type=int, default=120, help="resolution (default: 120)")
    parser.set_defaults(handler=run)
