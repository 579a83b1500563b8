"""``dpbr sweep PRESET``: run a preset's grid into a results folder, resuming where it stopped.

``dpbr sweep reference --profile quick`` runs the quick reference grid on all cores into
``results/reference-quick``; rerunning it skips the finished runs. ``--scheduler tcp://HOST:PORT``
sends the runs to a Dask cluster (``--executor dask`` is then implied).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

from dpbr_lib import presets, sweep


def default_results(preset: str, profile: str) -> Path:
    return Path("results") / f"{preset}-{profile}"


def run(args: argparse.Namespace) -> int:
    preset = presets.get(args.preset)
    preset.profile(args.profile)
    executor = args.executor or ("dask" if args.scheduler else "process")
    folder = Path(args.results) if args.results else default_results(preset.name, args.profile)
    start = time.perf_counter()
    try:
        summaries = preset.sweep(
            args.profile, folder, executor=executor, scheduler=args.scheduler,
            max_workers=args.max_workers, progress=not args.no_progress, device=args.device,
        )
    except KeyboardInterrupt:
        print(f"\ndpbr sweep: interrupted. Finished runs are saved in {folder}; rerun the same "
              "command to resume.", file=sys.stderr)
        return 130
    except sweep.SweepError as error:
        print(f"dpbr sweep: {error}", file=sys.stderr)
        return 1
    wall = time.perf_counter() - start
    print(table(summaries))
    print(f"{len(summaries)} runs of {preset.name}/{args.profile} in {folder} "
          f"({wall:.1f} s wall).")
    return 0


def table(summaries: pd.DataFrame) -> str:
    """Final accuracy per rule/attack (and d, where the width varies) against privacy setting x b,
    mean over seeds."""
    from dpbr_lib import plots

    if summaries.empty:
        return "(no runs)"
    frame = summaries.assign(setting=plots.setting_labels(summaries),
                             privacy_setting=plots.privacy_labels(summaries),
                             key=plots.privacy_order(summaries))
    columns = list(frame.sort_values("key").drop_duplicates("privacy_setting")["privacy_setting"])
    index = ["setting", "d"] if summaries["width"].nunique() > 1 else ["setting"]
    pivot = frame.pivot_table(index=index, columns=["privacy_setting", "batch_size"],
                              values="final_accuracy", aggfunc="mean")
    pivot = pivot.reindex(columns=columns, level=0)
    return "Final test accuracy (mean over seeds):\n" + pivot.round(3).to_string()


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "sweep", help="run a preset's experiment grid (resumable)",
        description="Run a preset's grid of runs x seeds; finished runs are skipped.",
    )
    parser.add_argument("preset", choices=presets.names(), metavar="PRESET",
                        help=f"one of: {', '.join(presets.names())}")
    parser.add_argument("--profile", choices=presets.PROFILES, default="quick",
                        help="quick (digits, minutes on a laptop), paper (full grid), smoke "
                             "(seconds); default: quick")
    parser.add_argument("--executor", choices=sweep.EXECUTORS, default=None,
                        help="process (local pool, default), inline, or dask")
    parser.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                        help="a Dask scheduler's address (implies --executor dask)")
    parser.add_argument("--results", default=None, metavar="DIR",
                        help="results folder (default: results/PRESET-PROFILE)")
    parser.add_argument("--max-workers", type=int, default=None, metavar="N",
                        help="local processes (default: all cores)")
    parser.add_argument("--device", default=None, metavar="DEVICE",
                        help="where each run trains: cpu (default), cuda, cuda:N or auto; with "
                             "one GPU use --executor inline or a small --max-workers")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)
