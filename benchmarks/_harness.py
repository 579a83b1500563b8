"""What every benchmark shares: interleaved timing, the correctness check, the table's rows.

A benchmark compares a *method* against a *baseline* run in the same process on the same
inputs. Before anything is timed the two results are compared (``torch.allclose``); then both
are timed after a warm-up, interleaved (method, baseline, method, ...) so that load from other
processes falls on both alike, and the table reports the median of the repeats. Each repeat
runs the callable ``number`` times, with ``number`` chosen so that one repeat lasts at least
``min_seconds`` (short calls are otherwise below the timer's resolution).
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

#: Columns of the table, in order.
COLUMNS = (
    "topic",  # aggregation, per_sample, hardware, training_step, dlg, profiles
    "case",  # the sizes, e.g. "n=11 f=5 d=10000"
    "method",  # what is measured (ours unless the row says otherwise)
    "baseline",  # what it is compared with, run in the same process ("" if nothing)
    "time_s",  # median seconds of one call of the method
    "baseline_s",  # median seconds of one call of the baseline
    "speedup",  # baseline_s / time_s: > 1 means the method is faster
    "metric",  # name of an extra figure (e.g. "share of step", "fraction of mm peak")
    "value",  # that figure
    "correct",  # True/False: the results agreed before timing; empty if nothing to compare
    "target",  # the target this row is held to, e.g. "speedup >= 20"
    "met",  # True/False against the target; empty if the row has no target
    "note",
)


@dataclass
class Row:
    """One line of the table (see :data:`COLUMNS`)."""

    topic: str
    case: str
    method: str
    baseline: str = ""
    time_s: float = math.nan
    baseline_s: float = math.nan
    speedup: float = math.nan
    metric: str = ""
    value: float = math.nan
    correct: bool | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Settings:
    """How hard to time: ``quick`` (tiny sizes, for the test suite) or full."""

    quick: bool = False
    repeats: int = 7  # timed repeats of each callable; the median is reported
    warmup: int = 1  # untimed calls before timing
    min_seconds: float = 0.02  # a repeat runs the callable enough times to last this long
    slow_seconds: float = 1.0  # a callable slower than this is timed over 3 repeats only

    @classmethod
    def make(cls, quick: bool, repeats: int | None = None) -> Settings:
        if quick:
            return cls(quick=True, repeats=repeats or 3, warmup=1, min_seconds=0.002)
        return cls(quick=False, repeats=repeats or 7)


def _single_call(fn: Callable[[], object]) -> float:
    tic = time.perf_counter()
    fn()
    return time.perf_counter() - tic


def time_interleaved(
    fns: Sequence[Callable[[], object]],
    settings: Settings,
    repeats: int | None = None,
    warmup: int | None = None,
    once: Sequence[float] | None = None,
) -> list[float]:
    """Median seconds per call of each callable, timed interleaved.

    First ``warmup`` (default ``settings.warmup``) untimed calls each, then one timed call that
    sizes the repeats (``once``: those seconds, when the caller already has them). A callable
    slower than ``settings.slow_seconds`` makes every callable run 3 repeats of one call."""
    repeats = repeats or settings.repeats
    if once is None:
        for fn in fns:
            for _ in range(settings.warmup if warmup is None else warmup):
                fn()
        once = [_single_call(fn) for fn in fns]
    numbers = [max(1, math.ceil(settings.min_seconds / max(t, 1e-9))) for t in once]
    if max(once) > settings.slow_seconds:
        repeats = min(repeats, 3)  # calls of seconds each: keep the full run within minutes
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, number, out in zip(fns, numbers, samples, strict=True):
            tic = time.perf_counter()
            for _ in range(number):
                fn()
            out.append((time.perf_counter() - tic) / number)
    return [statistics.median(s) for s in samples]


def _timed(fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float]:
    tic = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - tic


def allclose(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-6) -> bool:
    """Same shape and ``|a - b| <= atol + rtol * |b|`` everywhere (in float64)."""
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    if a.shape != b.shape:
        return False
    return bool(torch.allclose(a.double(), b.double(), rtol=rtol, atol=atol))


def compare(
    topic: str,
    case: str,
    method: tuple[str, Callable[[], torch.Tensor]],
    baseline: tuple[str, Callable[[], torch.Tensor]] | None,
    settings: Settings,
    *,
    target: float | None = None,
    check: Callable[[torch.Tensor, torch.Tensor], bool] | None = allclose,
    note: str = "",
    repeats: int | None = None,
) -> Row:
    """Check ``method`` against ``baseline`` (before timing), then time both interleaved.

    ``target``: the least acceptable speedup (baseline time / method time), e.g. 20.0, or 1.0
    for "at least as fast". ``check=None``: nothing to compare (``correct`` stays empty).
    """
    name, fn = method
    if baseline is None:
        (seconds,) = time_interleaved([fn], settings, repeats)
        return report(Row(topic, case, name, time_s=seconds, note=note))
    base_name, base_fn = baseline
    if check is None:  # results that are not meant to agree (e.g. a lower bound on the cost)
        correct = None
        seconds, base_seconds = time_interleaved([fn, base_fn], settings, repeats)
    else:
        (result, first), (expected, base_first) = _timed(fn), _timed(base_fn)
        correct = check(result, expected)
        del result, expected
        # the check was the warm-up; slow calls are sized by it, fast ones by one more call
        slow = max(first, base_first) > settings.slow_seconds
        seconds, base_seconds = time_interleaved(
            [fn, base_fn], settings, repeats, warmup=0, once=[first, base_first] if slow else None
        )
    speedup = base_seconds / seconds
    row = Row(
        topic,
        case,
        name,
        base_name,
        time_s=seconds,
        baseline_s=base_seconds,
        speedup=speedup,
        correct=correct,
        note=note,
    )
    if target is not None:
        row.target = f"speedup >= {target:g}"
        row.met = speedup >= target
    return report(row)


def report(row: Row) -> Row:
    """Print one line per measurement on stderr as it finishes (full runs take minutes)."""
    against = f" vs {row.baseline} {row.baseline_s:.4g} s" if row.baseline else ""
    verdict = "" if row.correct is None else ("  ok" if row.correct else "  MISMATCH")
    print(
        f"  {row.topic} | {row.case} | {row.method} {row.time_s:.4g} s{against}{verdict}",
        file=sys.stderr,
        flush=True,
    )
    return row


@dataclass
class Machine:
    """What the figures were measured on."""

    cores: int = field(default_factory=lambda: len(os.sched_getaffinity(0)))
    torch_threads: int = field(default_factory=torch.get_num_threads)
    torch_version: str = torch.__version__
    load_average: float = field(default_factory=lambda: os.getloadavg()[0])

    def describe(self) -> str:
        return (
            f"{self.cores} cores (nproc), torch {self.torch_version} with "
            f"{self.torch_threads} threads, 1-min load average {self.load_average:.1f}"
        )


def run_as_script(
    run: Callable[[Settings], list[Row]], doc: str | None, quick: bool = True
) -> None:
    """A topic script's ``__main__``: parse ``--quick`` (unless ``quick`` is False), run, print
    the rows as a table."""
    import argparse

    import pandas as pd

    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    if quick:
        parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rows = run(Settings.make(bool(getattr(args, "quick", False))))
    print(pd.DataFrame([r.as_dict() for r in rows]).to_string())
