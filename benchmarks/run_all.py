"""Run every benchmark and print one table of times and ratios (see benchmarks/README.md).

    python benchmarks/run_all.py [--quick] [--out table.csv] [--out table.md] [--threads 1]
                                 [--only aggregation ...] [--quick-profiles]
                                 [--keep-freed-memory]

Each topic is a script in this folder with ``run(settings) -> list[Row]``. A topic that raises
is reported as a failed row (``correct`` False, the error in ``note``) and the other topics still
run. The exit status is 1 if any correctness check failed, 0 otherwise; a missed speed target is
a finding of the table, not a failure.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd
    from _harness import Machine, Row, Settings

#: Topic name -> module, in the order of the table.
TOPICS = {
    "aggregation": "bench_aggregation",
    "hardware": "bench_hardware",
    "per_sample": "bench_per_sample",
    "training_step": "bench_training_step",
    "dlg": "bench_dlg",
    "profiles": "bench_profiles",
}
#: Topics that only run when asked for (they take minutes).
OPTIONAL = {"profiles": "--quick-profiles"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run the benchmarks and print one table.")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the test suite's)")
    parser.add_argument(
        "--out",
        action="append",
        default=[],
        type=Path,
        help="write the table to this .csv or .md file (repeatable)",
    )
    parser.add_argument("--only", nargs="+", choices=list(TOPICS), help="run only these topics")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--repeats", type=int, help="timed repeats per measurement (median)")
    parser.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="first call dpbr_lib.allocator.keep_freed_memory(), as the dpbr command does",
    )
    parser.add_argument(
        "--quick-profiles",
        action="store_true",
        help="also time `dpbr sweep/reconstruct --profile quick` (minutes)",
    )
    args = parser.parse_args(argv)
    for path in args.out:
        if path.suffix not in (".csv", ".md"):
            parser.error(f"--out must end in .csv or .md. Got {str(path)!r} instead.")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1. Got {args.threads} instead.")
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be >= 1. Got {args.repeats} instead.")
    return args


def selected_topics(args: argparse.Namespace) -> list[str]:
    chosen = args.only or [t for t in TOPICS if t not in OPTIONAL]
    if args.quick_profiles and "profiles" not in chosen:
        chosen.append("profiles")
    return chosen


def run_topic(topic: str, settings: Settings) -> list[Row]:
    return importlib.import_module(TOPICS[topic]).run(settings)


def to_markdown(table: pd.DataFrame, machine: Machine) -> str:
    import pandas as pd

    shown = table.copy()
    for column in ("time_s", "baseline_s"):
        shown[column] = shown[column].map(_seconds)
    for column in ("speedup", "value"):
        shown[column] = shown[column].map(_number)
    for column in ("correct", "met"):
        shown[column] = shown[column].map(lambda v: "" if v is None or v is pd.NA else str(v))
    return f"Measured on {machine.describe()}.\n\n" + shown.to_markdown(index=False) + "\n"


def _seconds(value: float) -> str:
    if value is None or not math.isfinite(value):
        return ""
    if value < 1:
        return f"{value * 1e3:.3g} ms"
    return f"{value:.3g} s" if value < 100 else f"{value:.0f} s"


def _number(value: float) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.3g}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)  # before the heavy imports: a bad argument fails at once
    import pandas as pd
    import torch
    from _harness import COLUMNS, Machine, Row, Settings

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.keep_freed_memory:
        from dpbr_lib import allocator

        allocator.keep_freed_memory()
    # a parent that ran `dpbr` or built the book passes the same setting by environment
    kept = args.keep_freed_memory or "MALLOC_MMAP_THRESHOLD_" in os.environ
    settings = Settings.make(args.quick, args.repeats)
    machine = Machine()
    print(f"# {machine.describe()}", flush=True)
    rows = [
        Row(
            "machine",
            machine.describe(),
            "",
            metric="cores",
            value=machine.cores,
            note=f"torch threads {machine.torch_threads}; {'quick' if args.quick else 'full'} run"
            + ("; freed memory kept" if kept else ""),
        )
    ]
    for topic in selected_topics(args):
        tic = time.perf_counter()
        try:
            found = run_topic(topic, settings)
        except Exception as error:  # reported as a failed row; the other topics still run
            traceback.print_exc()
            found = [Row(topic, "", "", correct=False, note=f"{type(error).__name__}: {error}")]
        rows.extend(found)
        print(f"# {topic}: {len(found)} rows in {time.perf_counter() - tic:.1f} s", flush=True)
    table = pd.DataFrame([r.as_dict() for r in rows], columns=list(COLUMNS))
    with pd.option_context("display.max_rows", None, "display.width", 250):
        print(table.to_string(index=False))
    for path in args.out:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".csv":
            table.to_csv(path, index=False)
        else:
            path.write_text(to_markdown(table, machine))
    checked = table["correct"].dropna()
    targets = table["met"].dropna()
    print(
        f"# correctness checks passed: {int(checked.sum())}/{len(checked)}; "
        f"targets met: {int(targets.sum())}/{len(targets)}"
    )
    return 0 if bool(checked.all()) else 1


if __name__ == "__main__":
    sys.exit(main())
