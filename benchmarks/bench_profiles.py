"""Wall time of each quick profile: ``dpbr sweep PRESET --profile quick`` for every preset and
``dpbr reconstruct EXPERIMENT --profile quick`` for every experiment (minutes in all; run_all
runs this topic only with ``--quick-profiles``).

Each command runs once, as a user would type it, in a fresh process (``python -m
dpbr_lib.cli``) writing into a temporary folder, so no cached result is reused. The preset and
experiment names are read from the ``dpbr`` parser itself. ``correct`` is the command's success
(exit status 0); the time includes the interpreter's start and imports. The commands get
``OMP_NUM_THREADS`` = this process's torch thread count (``run_all.py --threads``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _harness import Row, Settings, report, run_as_script

from dpbr_lib.cli import build_parser

TOPIC = "profiles"


def subcommand_choices(*path: str) -> list[str]:
    """Names accepted after ``dpbr <path...>``: a subcommand's sub-subcommands, or the choices
    of its first positional argument."""
    parser = build_parser()
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
        if not action.option_strings and action.choices:
            return list(action.choices)
    raise ValueError(f"'dpbr {' '.join(path)}' takes no named argument")


def commands(folder: Path) -> list[list[str]]:
    out = []
    for preset in subcommand_choices("sweep"):
        out.append(
            [
                "sweep",
                preset,
                "--profile",
                "quick",
                "--results",
                str(folder / preset),
                "--no-progress",
            ]
        )
    for experiment in subcommand_choices("reconstruct"):
        out.append(
            [
                "reconstruct",
                experiment,
                "--profile",
                "quick",
                "--out",
                str(folder / experiment),
                "--quiet",
            ]
        )
    return out


def run(settings: Settings) -> list[Row]:
    rows = []
    # run_all's --threads reaches the commands (sweep workers still set their own share)
    environment = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    with tempfile.TemporaryDirectory(prefix="dpbr-profiles-") as tmp:
        for argv in commands(Path(tmp)):
            shown = "dpbr " + " ".join(argv[:4])
            tic = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "dpbr_lib.cli", *argv],
                capture_output=True,
                text=True,
                env=environment,
            )
            seconds = time.perf_counter() - tic
            last = (done.stderr.strip().splitlines() or [""])[-1] if done.returncode else ""
            rows.append(
                report(
                    Row(
                        TOPIC,
                        shown,
                        "wall time",
                        time_s=seconds,
                        correct=done.returncode == 0,
                        note=f"exit {done.returncode}: {last[:200]}" if done.returncode else "",
                    )
                )
            )
    return rows


if __name__ == "__main__":
    run_as_script(run, __doc__, quick=False)
