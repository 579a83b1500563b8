"""Byzantine gradient generators: ``get(name)(honest, f, aggregator=None, **kw) -> Tensor[f, d]``.

Threat model (Guerraoui et al. 2021): the f Byzantine workers are omniscient about the current
round: they see exactly what the server sees, i.e. the h honest gradients *after* clipping, noise or
sparsification, stacked as ``honest: Tensor[h, d]``, and may know the deployed aggregation rule.

Most attacks send f identical vectors (as in the papers). Two families take a ``factor``:

- ``little`` (Baruch et al. 2019, "A little is enough"): μ + z·s, with μ the honest mean and s the
  coordinate-wise (unbiased) standard deviation; ``negative=True`` sends μ − z·s;
- ``empire`` (Xie, Koyejo & Gupta 2019, "Fall of empires", inner product manipulation): −ε·μ.

With ``factor=None`` and an ``aggregator`` these two line-search the factor to maximise
‖agg(honest ∪ byzantine, f) − μ‖, the reference's "negative factor" mode (LPD-EPFL
DifferentialByzantine, ``attacks/identical.py``). Search: the factor on ``[0, max_factor]``
(default 100) over a grid of 0 and ``grid - 1`` log-spaced points from 1e-2 (default 20 points,
neighbours a factor 1.6 apart), then golden-section search on the bracket between the best grid
point's neighbours (``refine`` = 20 steps, shrinking it to 0.618^20 ≈ 7e-5 of its width); the
best factor ever evaluated is used. 42 aggregator calls in all, one per evaluated factor (the
rules take one ``[n, d]``; the reference spends 16 calls on its expand-and-contract search).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from scipy import stats

from dpbr_lib import _random
from dpbr_lib._registry import Registry
from dpbr_lib._validation import check_choice, check_float, check_gradients, check_int

Aggregator = Callable[[torch.Tensor, int], torch.Tensor]

GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0  # 0.618...


@dataclass(frozen=True)
class Attack:
    """A named attack; calling it validates the input once, then runs ``fn``."""

    name: str
    fn: Callable[..., torch.Tensor]

    def __call__(
        self, honest: torch.Tensor, f: int, aggregator: Aggregator | None = None, **kw: object
    ) -> torch.Tensor:
        honest = check_gradients(honest, "honest")  # [h, d]
        f = check_int("f", f, low=0)
        try:
            inspect.signature(self.fn).bind(honest, f, aggregator, **kw)
        except TypeError as err:
            raise TypeError(f"Attack {self.name!r}: {err}") from None
        if aggregator is not None and not callable(aggregator):
            raise TypeError(
                f"The 'aggregator' parameter must be callable as agg(gradients, f). "
                f"Got {type(aggregator).__name__} instead."
            )
        if f == 0:
            return honest.new_empty((0, honest.shape[1]))  # [0, d]
        return self.fn(honest, f, aggregator, **kw)  # [f, d]

    @property
    def doc(self) -> str:
        """The attack's definition (its function's docstring)."""
        return inspect.getdoc(self.fn) or ""


_REGISTRY: Registry[Attack] = Registry("attack")


def register(name: str) -> Callable[[Callable[..., torch.Tensor]], Callable[..., torch.Tensor]]:
    def add(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        _REGISTRY.register(name, Attack(name, fn))
        return fn

    return add


def get(name: str) -> Attack:
    """The attack registered under ``name``; the error lists the valid names."""
    return _REGISTRY.get(name)


def names() -> list[str]:
    return _REGISTRY.names()


# --------------------------------------------------------------------------------------------- #
# Helpers


def _repeat(row: torch.Tensor, f: int) -> torch.Tensor:
    return row.unsqueeze(0).expand(f, -1).clone()  # [f, d]


def honest_std(honest: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise standard deviation ``[d]``, unbiased (divides by h − 1), as the reference and
    byzfl compute it; 0 when there is a single honest row."""
    if honest.shape[0] < 2:
        return torch.zeros_like(honest[0])
    return honest.std(dim=0, correction=1)  # [d]


def distance_to_mean(
    honest: torch.Tensor, byzantine: torch.Tensor, aggregator: Aggregator, f: int
) -> float:
    """‖agg(honest ∪ byzantine, f) − mean(honest)‖, the objective the line search maximises
    (non-finite aggregates score −inf so they are never chosen)."""
    aggregate = aggregator(torch.cat([honest, byzantine], dim=0), f)  # [d]
    gap = torch.linalg.vector_norm(aggregate - honest.mean(dim=0)).item()
    return gap if math.isfinite(gap) else -math.inf


def line_search_factor(
    objective: Callable[[float], float],
    *,
    max_factor: float = 100.0,
    grid: int = 20,
    refine: int = 20,
) -> tuple[float, float]:
    """Maximise ``objective`` over factors in ``[0, max_factor]``: a grid (0 and ``grid − 1``
    log-spaced points from 1e-2), then golden-section search between the best point's neighbours.
    Returns ``(factor, objective(factor))`` for the best factor evaluated."""
    points = [
        0.0,
        *torch.logspace(-2.0, math.log10(max_factor), grid - 1, dtype=torch.float64).tolist(),
    ]
    values = [objective(x) for x in points]
    best = max(range(len(points)), key=values.__getitem__)
    best_x, best_y = points[best], values[best]
    lo, hi = points[max(best - 1, 0)], points[min(best + 1, len(points) - 1)]
    a, b = hi - GOLDEN * (hi - lo), lo + GOLDEN * (hi - lo)
    ya, yb = objective(a), objective(b)
    for _ in range(refine):
        for x, y in ((a, ya), (b, yb)):
            if y > best_y:
                best_x, best_y = x, y
        if ya >= yb:
            hi, b, yb = b, a, ya
            a = hi - GOLDEN * (hi - lo)
            ya = objective(a)
        else:
            lo, a, ya = a, b, yb
            b = lo + GOLDEN * (hi - lo)
            yb = objective(b)
    for x, y in ((a, ya), (b, yb)):
        if y > best_y:
            best_x, best_y = x, y
    return best_x, best_y


def _factor_attack(
    honest: torch.Tensor,
    f: int,
    aggregator: Aggregator | None,
    factor: float | None,
    make: Callable[[float], torch.Tensor],
    default: Callable[[], float],
    declared_f: int | None,
    max_factor: float,
) -> torch.Tensor:
    if factor is None and aggregator is not None:
        agg_f = f if declared_f is None else check_int("declared_f", declared_f, low=0)
        max_factor = check_float("max_factor", max_factor, low=0.01, low_open=True)

        def objective(x: float) -> float:
            return distance_to_mean(honest, _repeat(make(x), f), aggregator, agg_f)

        factor, _ = line_search_factor(objective, max_factor=max_factor)
    elif factor is None:
        factor = default()
    else:
        factor = check_float("factor", factor)
    return _repeat(make(factor), f)  # [f, d]


# --------------------------------------------------------------------------------------------- #
# Attacks


def alie_z_max(n: int, f: int) -> float:
    """Baruch et al. 2019, the attack's choice of z: s = ⌊n/2 + 1⌋ − f supporters are needed for a
    majority, and z_max = Φ⁻¹((n − s)/n), the largest shift that still leaves s honest workers
    "further from the mean" than the Byzantine value. ``n`` counts all workers (h + f)."""
    n = check_int("n", n, low=1)
    f = check_int("f", f, low=1)
    s = math.floor(n / 2 + 1) - f
    if s <= 0:
        raise ValueError(
            f"ALIE's z_max needs f < floor(n/2 + 1) (s > 0). Got n = {n}, f = {f} instead."
        )
    return float(stats.norm.ppf((n - s) / n))


@register("little")
def little(
    honest: torch.Tensor,
    f: int,
    aggregator: Aggregator | None = None,
    *,
    factor: float | None = None,
    negative: bool = False,
    declared_f: int | None = None,
    max_factor: float = 100.0,
) -> torch.Tensor:
    """A little is enough (Baruch, Baruch & Goldberg 2019): f copies of μ + z·s.

    μ and s are the coordinate-wise mean and unbiased std of ``honest``; ``negative=True`` sends
    μ − z·s (the reference runs ``factor=1.5, negative=True``). ``factor`` is z; ``None`` without an
    aggregator uses the paper's z_max (:func:`alie_z_max`, with n = h + f); ``None`` with an
    aggregator line-searches z ≥ 0 against it (module docstring).
    """
    mean, std = honest.mean(dim=0), honest_std(honest)  # [d], [d]
    sign = -1.0 if negative else 1.0
    return _factor_attack(
        honest,
        f,
        aggregator,
        factor,
        make=lambda z: mean + sign * z * std,
        default=lambda: alie_z_max(honest.shape[0] + f, f),
        declared_f=declared_f,
        max_factor=max_factor,
    )


@register("empire")
def empire(
    honest: torch.Tensor,
    f: int,
    aggregator: Aggregator | None = None,
    *,
    factor: float | None = None,
    declared_f: int | None = None,
    max_factor: float = 100.0,
) -> torch.Tensor:
    """Fall of empires / inner product manipulation (Xie, Koyejo & Gupta 2019):
    f copies of −ε·μ, so that ⟨μ, aggregate⟩ turns negative. ``factor`` is ε (default 0.1).

    Sign convention: Xie et al. and byzfl's ``InnerProductManipulation(tau)`` send −ε·μ. The
    reference code sends μ + φ·(−μ) = (1 − φ)·μ, so its ``factor:1.1`` is ε = φ − 1 = 0.1 here.
    ``None`` with an aggregator line-searches ε ≥ 0 (the reference also tries φ ∈ [0, 1), i.e.
    positive multiples of μ, which are not inner-product manipulation and are left out).
    """
    mean = honest.mean(dim=0)  # [d]
    return _factor_attack(
        honest,
        f,
        aggregator,
        factor,
        make=lambda eps: -eps * mean,
        default=lambda: 0.1,
        declared_f=declared_f,
        max_factor=max_factor,
    )


@register("nan")
def nan(honest: torch.Tensor, f: int, aggregator: Aggregator | None = None) -> torch.Tensor:
    """f rows of NaN (reference ``attacks/nan.py``): a rule that does not filter non-finite input
    (the average) is destroyed; a robust rule must ignore them."""
    return torch.full((f, honest.shape[1]), math.nan, dtype=honest.dtype, device=honest.device)


@register("inf")
def inf(honest: torch.Tensor, f: int, aggregator: Aggregator | None = None) -> torch.Tensor:
    """f rows of +inf (byzfl's ``Inf`` attack)."""
    return torch.full((f, honest.shape[1]), math.inf, dtype=honest.dtype, device=honest.device)


@register("sign_flip")
def sign_flip(
    honest: torch.Tensor,
    f: int,
    aggregator: Aggregator | None = None,
    *,
    per_worker: bool = False,
) -> torch.Tensor:
    """Sign flipping (Allen-Zhu et al. 2021; byzfl ``SignFlipping``): f copies of −μ.

    ``per_worker=True`` instead lets Byzantine worker j send −x_{j mod h}, the negation of one
    honest gradient each (the "each worker flips its own gradient" variant; rows then differ).
    """
    if per_worker:
        index = torch.arange(f, device=honest.device) % honest.shape[0]  # [f]
        return -honest[index]  # [f, d]
    return _repeat(-honest.mean(dim=0), f)


@register("gaussian")
def gaussian(
    honest: torch.Tensor,
    f: int,
    aggregator: Aggregator | None = None,
    *,
    sigma: float = 1.0,
    mu: float = 0.0,
    around_mean: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Gaussian noise (byzfl ``Gaussian``): every coordinate of every row ~ N(mu, sigma²),
    independently per Byzantine worker; ``around_mean=True`` centres the rows on μ instead of mu.
    Draws come from ``generator``."""
    sigma = check_float("sigma", sigma, low=0.0)
    mu = check_float("mu", mu)
    noise = torch.randn(
        (f, honest.shape[1]), generator=generator, dtype=honest.dtype,
        device=_random.draw_device(honest, generator),
    ).to(honest.device)
    centre = honest.mean(dim=0) if around_mean else torch.full_like(honest[0], mu)  # [d]
    return centre + sigma * noise  # [f, d]


@register("mimic")
def mimic(
    honest: torch.Tensor,
    f: int,
    aggregator: Aggregator | None = None,
    *,
    index: int | str = 0,
) -> torch.Tensor:
    """Mimic (Karimireddy, He & Jaggi 2022, ICLR): all f Byzantine workers copy one honest
    worker, over-representing it so that heterogeneous honest data are under-weighted.

    ``index`` is that worker (default 0, byzfl's ``Mimic(epsilon=0)``), or ``"auto"``: the
    paper picks the worker whose gradient is most extreme along the top principal direction of
    the honest gradients; here that direction is estimated from the current round only (the paper
    averages it over a warm-up phase), i* = argmax_i |⟨v, x_i − μ⟩| with v the top right singular
    vector of the centred ``honest``.
    """
    h = honest.shape[0]
    if index == "auto":
        centred = honest - honest.mean(dim=0)  # [h, d]
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)  # vh: [min(h, d), d]
        chosen = int((centred @ vh[0]).abs().argmax())
    elif isinstance(index, str):
        check_choice("index", index, ("auto",))
        raise AssertionError  # unreachable
    else:
        chosen = check_int("index", index, low=0, high=h - 1)
    return _repeat(honest[chosen], f)
