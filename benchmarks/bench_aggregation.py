"""Aggregation rules: ours against byzfl's implementations and against Python-loop MDA / Krum.

Sizes: n in {11, 25, 51} workers, d in {10^4, 10^6} coordinates (quick: n = 11, d = 10^3).
Each rule runs with the largest f its condition allows (Krum, Multi-Krum: n >= 2f + 3; Bulyan:
n >= 4f + 3; the rest: n >= 2f + 1), except MDA, which enumerates C(n, f) subsets: it runs with
the largest f whose C(n, f) <= MDA_BENCH_SUBSETS (n = 11: f = 5, C = 462; n = 25: f = 4,
C = 12,650; n = 51: f = 2, C = 1,275), because byzfl's MDA and the loop spend Python time on
every subset. Our rule itself accepts C(n, f) <= MDA_MAX_SUBSETS = 10^6 (n = 25: f <= 7;
n = 51: f <= 4); rows "mda at the library limit" time it there, with no baseline.

Inputs (one set per n, f, d, drawn from a seeded generator): n - f honest rows around a common
mean, one of them close to it, and f Byzantine rows far away. On such inputs the variants agree
(byzfl's Krum scores n - f - 1 neighbours where Blanchard et al. use n - f - 2, and both pick
the central row), so every comparison checks the same answer before timing.

Baselines:
- ``byzfl`` 0.0.11: ``Average, Median, TrMean, GeometricMedian, Krum, MultiKrum,
  CenteredClipping, MDA`` and the ``NNM`` pre-aggregation (before ``average``); byzfl has no
  Bulyan. Its geometric median runs a fixed T Weiszfeld iterations from 0: it gets T = 100 and
  nu = 1e-6 (our ``max_iter`` and ``nu``; ours starts at the coordinate median and stops at its
  tolerance), and the check is that our objective sum_i ||z - x_i|| is no worse than byzfl's;
  at d = 10^6 it runs for n = 11 only (100 passes over [n, d] per call). Its centered clipping
  starts at 0: ours gets ``init = 0``, byzfl L = 3 and tau = 1.0 (our ``iterations``, ``tau``).
  Its NNM gathers an [n, n - f, d] tensor: skipped beyond 2e8 elements (n = 25, 51 at 10^6).
- ``loop``: MDA and Krum as the reference code writes them (LPD-EPFL DifferentialByzantine's
  ``aggregators/brute.py`` style): one ``x_i.sub(x_j).norm().item()`` per pair, then Python
  loops over subsets and their pairs (MDA) or over rows and their sorted distances (Krum). The
  loop MDA runs where C(n, f) * C(n - f, 2) <= LOOP_MDA_MAX_STEPS inner steps (n = 11, 25);
  the loop Krum at d = 10^6 for n = 11 only (seconds per call beyond).
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import math
import sys
import types
from collections.abc import Callable

import torch
from _harness import Row, Settings, allclose, compare, run_as_script

from dpbr_lib import aggregators


def _byzfl_modules() -> tuple[types.ModuleType, types.ModuleType]:
    """byzfl's ``aggregators`` and ``preaggregators`` modules, without running
    ``byzfl/__init__.py``: it imports byzfl's whole training framework (tens of seconds on a
    loaded 2-core machine), and only these two modules, which need ``byzfl.utils``, are used."""
    if "byzfl" not in sys.modules:
        spec = importlib.util.find_spec("byzfl")
        assert spec is not None and spec.submodule_search_locations is not None, "byzfl missing"
        package = types.ModuleType("byzfl")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["byzfl"] = package
    return (
        importlib.import_module("byzfl.aggregators.aggregators"),
        importlib.import_module("byzfl.aggregators.preaggregators"),
    )


byzfl_rules, byzfl_pre = _byzfl_modules()

TOPIC = "aggregation"
MDA_BENCH_SUBSETS = 20_000
LOOP_MDA_MAX_STEPS = 3_000_000
TARGET_LOOP_MDA = 20.0  # MDA >= 20x the loop at n = 11, f = 5
TARGET_BYZFL = 1.0  # every rule at least as fast as byzfl's


# --------------------------------------------------------------------------------------------- #
# Inputs


def make_gradients(n: int, f: int, d: int, seed: int = 0) -> torch.Tensor:
    """``Tensor[n, d]``: n - f honest rows N(mu, 1) with row 0 at mu + N(0, 0.1^2), then f
    Byzantine rows at mu + 10 (a shifted cluster, spread 0.1)."""
    generator = torch.Generator().manual_seed(seed)
    mu = torch.randn(d, generator=generator)  # [d]
    honest = mu + torch.randn(n - f, d, generator=generator)  # [n - f, d]
    honest[0] = mu + 0.1 * torch.randn(d, generator=generator)
    byzantine = mu + 10.0 + 0.1 * torch.randn(f, d, generator=generator)  # [f, d]
    return torch.cat([honest, byzantine])  # [n, d]


# --------------------------------------------------------------------------------------------- #
# Python-loop baselines in the reference's style


def _loop_distances(gradients: torch.Tensor) -> dict[tuple[int, int], float]:
    n = len(gradients)
    return {
        (i, j): gradients[i].sub(gradients[j]).norm().item()
        for i in range(n)
        for j in range(i + 1, n)
    }


def loop_mda(gradients: torch.Tensor, f: int) -> torch.Tensor:
    """MDA with one Python iteration per subset and per pair in it."""
    n = len(gradients)
    distances = _loop_distances(gradients)
    best, best_diameter = None, math.inf
    for subset in itertools.combinations(range(n), n - f):
        diameter = 0.0
        for i, j in itertools.combinations(subset, 2):
            if distances[i, j] > diameter:
                diameter = distances[i, j]
        if diameter < best_diameter:
            best, best_diameter = subset, diameter
    assert best is not None
    return sum(gradients[i] for i in best) / (n - f)


def loop_krum(gradients: torch.Tensor, f: int) -> torch.Tensor:
    """Krum (n - f - 2 nearest neighbours, squared distances) with Python loops over rows."""
    n = len(gradients)
    distances = _loop_distances(gradients)
    best, best_score = 0, math.inf
    for i in range(n):
        others = sorted(distances[min(i, j), max(i, j)] ** 2 for j in range(n) if j != i)
        score = sum(others[: n - f - 2])
        if score < best_score:
            best, best_score = i, score
    return gradients[best]


# --------------------------------------------------------------------------------------------- #
# The rules and their byzfl counterparts


def _f_default(n: int) -> int:
    return (n - 1) // 2


def _f_krum(n: int) -> int:
    return (n - 3) // 2


def _f_bulyan(n: int) -> int:
    return (n - 3) // 4


def _f_mda(n: int, limit: int = MDA_BENCH_SUBSETS) -> int:
    return max(f for f in range((n - 1) // 2 + 1) if math.comb(n, f) <= limit)


Ours = Callable[[torch.Tensor, int], torch.Tensor]
Baseline = Callable[[torch.Tensor, int], torch.Tensor]


def _byzfl(rule: str) -> Baseline | None:
    """byzfl's implementation of ``rule`` as ``fn(gradients, f)``; None if byzfl has none."""
    table: dict[str, Baseline] = {
        "average": lambda x, f: byzfl_rules.Average()(x),
        "median": lambda x, f: byzfl_rules.Median()(x),
        "trimmed_mean": lambda x, f: byzfl_rules.TrMean(f=f)(x),
        "geometric_median": lambda x, f: byzfl_rules.GeometricMedian(nu=1e-6, T=100)(x),
        "krum": lambda x, f: byzfl_rules.Krum(f=f)(x),
        "multi_krum": lambda x, f: byzfl_rules.MultiKrum(f=f)(x),
        # a fresh object per call: byzfl's CenteredClipping keeps its last output as the start
        "centered_clipping": lambda x, f: byzfl_rules.CenteredClipping(L=3, tau=1.0)(x),
        "mda": lambda x, f: byzfl_rules.MDA(f=f)(x),
        "nnm+average": lambda x, f: byzfl_rules.Average()(byzfl_pre.NNM(f=f)(x)),
    }
    return table.get(rule)


def _ours(rule: str, d: int) -> Ours:
    if rule == "centered_clipping":
        return aggregators.get(rule, init=torch.zeros(d))
    return aggregators.get(rule)


RULES: dict[str, Callable[[int], int]] = {
    "average": _f_default,
    "median": _f_default,
    "trimmed_mean": _f_default,
    "geometric_median": _f_default,
    "centered_clipping": _f_default,
    "krum": _f_krum,
    "multi_krum": _f_krum,
    "bulyan": _f_bulyan,
    "mda": _f_mda,
    "nnm+average": _f_default,
}
LOOPS = {"mda": loop_mda, "krum": loop_krum}


def _baseline_skipped(rule: str, baseline: str, n: int, f: int, d: int) -> str:
    """Why a baseline is not run at this size ("" if it is)."""
    if baseline == "byzfl" and rule == "bulyan":
        return "byzfl has no Bulyan"
    if baseline == "byzfl" and rule == "nnm+average" and n * (n - f) * d > 200_000_000:
        return "byzfl's NNM gathers an [n, n - f, d] tensor: over 2e8 elements"
    if baseline == "byzfl" and rule == "geometric_median" and d > 10**4 and n > 11:
        return "100 Weiszfeld passes over [n, d] per call, minutes per comparison: n = 11 only"
    if (
        baseline == "loop"
        and rule == "mda"
        and math.comb(n, f) * math.comb(n - f, 2) > LOOP_MDA_MAX_STEPS
    ):
        return f"loop: {math.comb(n, f) * math.comb(n - f, 2)} Python steps per call"
    if baseline == "loop" and rule == "krum" and d > 10**4 and n > 11:
        return "loop: n (n - 1) / 2 distances one by one, seconds per call: n = 11 only"
    return ""


def geometric_median_objective(z: torch.Tensor, gradients: torch.Tensor) -> float:
    """sum_i ||z - x_i||, the function both geometric medians minimise (float64)."""
    return float(torch.linalg.vector_norm(gradients.double() - z.double(), dim=1).sum())


def _check_for(rule: str, x: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], bool]:
    """Equal results; for the geometric median, whose two Weiszfeld runs start at different
    points (our median, byzfl's zero) and stop after at most 100 iterations, a value of the
    objective no worse than byzfl's (to 1e-6 relative)."""
    if rule == "geometric_median":
        return lambda a, b: (
            geometric_median_objective(a, x) <= geometric_median_objective(b, x) * (1 + 1e-6)
        )
    return lambda a, b: allclose(a, b, rtol=1e-5, atol=1e-5)


def _sizes(settings: Settings) -> list[tuple[int, int]]:
    if settings.quick:
        return [(11, 1000)]
    return [(n, d) for d in (10**4, 10**6) for n in (11, 25, 51)]


def _rule_rows(
    rule: str, n: int, d: int, settings: Settings, make: Callable[[str, int], Ours], label: str
) -> list[Row]:
    """Rows of one rule at one size: against byzfl (target: as fast) and the loop."""
    f = RULES[rule](n)
    x = make_gradients(n, f, d)  # [n, d]
    case = f"n={n} f={f} d={d}"
    agg = make(rule, d)
    method = (label, lambda: agg(x, f))
    check = _check_for(rule, x)
    rows = []
    # (name, function, target, whether a skipped run still gets a row saying why)
    baselines: list[tuple[str, Callable | None, str | None, bool]] = []
    byzfl = _byzfl(rule)
    if byzfl is not None or rule == "bulyan":
        baselines.append(("byzfl", byzfl, TARGET_BYZFL, True))
    if rule in LOOPS:
        target = TARGET_LOOP_MDA if rule == "mda" and (n, f) == (11, 5) else None
        baselines.append(("loop", LOOPS[rule], target, False))
    for name, baseline, target, report_skip in baselines:
        why = _baseline_skipped(rule, name, n, f, d)
        if why:  # a skipped loop is explained in the module docstring, a skipped byzfl in a row
            if report_skip:
                rows.append(compare(TOPIC, case, method, None, settings, note=why))
            continue
        rows.append(
            compare(
                TOPIC,
                case,
                method,
                (name, lambda baseline=baseline: baseline(x, f)),
                settings,
                target=target,
                check=check,
            )
        )
    return rows


def _limit_row(
    n: int, d: int, settings: Settings, make: Callable[[str, int], Ours], label: str
) -> list[Row]:
    """MDA at the library's limit C(n, f) <= MDA_MAX_SUBSETS, where no baseline is feasible."""
    f = _f_mda(n, aggregators.MDA_MAX_SUBSETS)
    if settings.quick or f <= _f_mda(n):
        return []
    x = make_gradients(n, f, d)
    mda = make("mda", d)
    note = f"at the library limit, C(n, f) = {math.comb(n, f)}; no baseline"
    return [
        compare(
            TOPIC,
            f"n={n} f={f} d={d}",
            (label, lambda: mda(x, f)),
            None,
            settings,
            note=note,
            repeats=3,
        )
    ]


def run(settings: Settings) -> list[Row]:
    rows: list[Row] = []
    for n, d in _sizes(settings):
        for rule in RULES:
            rows.extend(_rule_rows(rule, n, d, settings, _ours, rule))
        rows.extend(_limit_row(n, d, settings, _ours, "mda"))
    return rows


if __name__ == "__main__":
    run_as_script(run, __doc__)
