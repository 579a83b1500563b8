"""The benchmark runner: ``benchmarks/run_all.py --quick`` produces the whole table.

Only the table's shape and the correctness checks are asserted, never a time or a ratio:
timings belong to the benchmark's output, not to the test suite.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN_ALL = ROOT / "benchmarks" / "run_all.py"
COLUMNS = [
    "topic",
    "case",
    "method",
    "baseline",
    "time_s",
    "baseline_s",
    "speedup",
    "metric",
    "value",
    "correct",
    "target",
    "met",
    "note",
]
TOPICS = {"machine", "aggregation", "hardware", "per_sample", "training_step", "dlg"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("benchmarks")
    done = subprocess.run(
        [
            sys.executable,
            str(RUN_ALL),
            "--quick",
            "--threads",
            "1",
            "--out",
            str(out / "table.csv"),
            "--out",
            str(out / "table.md"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    return done, out


def test_quick_run_succeeds_and_every_check_passes(quick) -> None:
    done, out = quick
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = pd.read_csv(out / "table.csv")
    assert list(table.columns) == COLUMNS
    assert set(table["topic"]) == TOPICS
    # Every row that compares our output with a baseline's carries a correctness verdict; the
    # per-sample floor (a batched backward without per-sample gradients) is a reference point.
    comparisons = table[
        table["topic"].isin({"aggregation", "per_sample", "dlg"})
        & table["baseline"].notna()
        & ~table["method"].astype(str).str.startswith("floor")
    ]
    assert set(comparisons["topic"]) == {"aggregation", "per_sample", "dlg"}
    assert comparisons["correct"].notna().all(), comparisons.to_string()
    checked = table["correct"].dropna()
    assert len(checked) >= 14  # quick sizes: 11 aggregation, 2 per-sample (loop, Opacus), 1 DLG
    failed = table[table["correct"].eq(False)]
    assert failed.empty, failed.to_string()


def test_table_rows_are_complete(quick) -> None:
    _, out = quick
    table = pd.read_csv(out / "table.csv")
    timed = table[table["topic"] != "machine"]
    compared = timed[timed["baseline"].notna()]
    assert timed["time_s"].notna().all() and timed["time_s"].ge(0).all()
    assert compared["baseline_s"].gt(0).all()
    assert (compared["speedup"] - compared["baseline_s"] / compared["time_s"]).abs().max() < 1e-9
    assert set(table.loc[table["met"].notna(), "target"].dropna()) == set(
        table["target"].dropna()
    )  # every target has its verdict
    baselines = set(table.loc[table["topic"] == "aggregation", "baseline"].dropna())
    assert {"byzfl", "loop"} <= baselines
    assert {"loop", "opacus"} <= set(table.loc[table["topic"] == "per_sample", "baseline"])
    markdown = (out / "table.md").read_text()
    assert markdown.startswith("Measured on ") and "| topic" in markdown


def test_bad_arguments_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    sys.path.insert(0, str(RUN_ALL.parent))
    try:
        run_all = importlib.import_module("run_all")
    finally:
        sys.path.remove(str(RUN_ALL.parent))
    for argv, message in (
        (["--out", "table.txt"], "--out must end in .csv or .md"),
        (["--threads", "0"], "--threads must be >= 1"),
        (["--only", "nothing"], "invalid choice: 'nothing'"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            run_all.parse_args(argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
