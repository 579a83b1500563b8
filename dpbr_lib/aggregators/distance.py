"""Distance-based rules: Krum, Multi-Krum (Blanchard et al. 2017), minimum-diameter averaging
and Bulyan (El Mhamdi et al. 2018). Pairwise distances are computed once per call."""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from dpbr_lib.aggregators._core import rule
from dpbr_lib.aggregators.bounds import krum_kappa, mda_kappa
from dpbr_lib.aggregators.coordinatewise import coordinate_median

#: Largest number of candidate subsets C(n, f) that ``mda`` enumerates (its cost is
#: C(n, f) * (n - f)^2 / 2 distance look-ups); beyond it ``check`` raises ``ValueError``.
MDA_MAX_SUBSETS = 1_000_000
#: Distance look-ups held in memory at once by ``mda`` (subsets are processed in chunks).
MDA_CHUNK_ELEMENTS = 1 << 22


def condensed_distances(gradients: torch.Tensor) -> torch.Tensor:
    """Euclidean distances of the n (n - 1) / 2 pairs i < j, ``Tensor[P]`` in ``triu`` order,
    computed exactly from the differences (``torch.pdist``; no ``|x|^2 + |y|^2 - 2xy``
    shortcut, which loses precision and turns two huge rows into NaN)."""
    return torch.pdist(gradients)  # [P]


def pairwise_distances(gradients: torch.Tensor) -> torch.Tensor:
    """Euclidean distances ``Tensor[n, n]``: :func:`condensed_distances` mirrored."""
    n = gradients.shape[0]
    out = gradients.new_zeros(n, n)  # [n, n]
    if n > 1:
        first, second = torch.triu_indices(n, n, offset=1, device=gradients.device)  # [P]
        condensed = condensed_distances(gradients)  # [P]
        out[first, second] = condensed
        out[second, first] = condensed
    return out


def krum_scores(squared: torch.Tensor, f: int) -> torch.Tensor:
    """Krum scores ``Tensor[n]`` from squared distances ``[n, n]`` (Blanchard et al. 2017,
    Sec. 4, "Krum"): s(i) = sum of ||x_i - x_j||^2 over the n - f - 2 nearest j != i.

    With fewer than three rows left (only inside Bulyan's last iterations, where Krum's own
    condition n > 2f + 2 fails) one neighbour is used, so the choice still depends on the
    data and not on the row order.
    """
    n = squared.shape[0]
    neighbours = min(max(n - f - 2, 1), n - 1)
    others = squared + torch.diag(squared.new_full((n,), math.inf))  # [n, n], self excluded
    return others.topk(neighbours, dim=1, largest=False).values.sum(dim=1)  # [n]


def krum_choice(squared: torch.Tensor, f: int) -> int:
    """Index of the row Krum selects from squared distances ``[n, n]``.

    Ties in the score are broken by the sum of squared distances to all rows, then by the
    lowest index. Ties are systematic with one neighbour (two mutually nearest rows score
    the same), which happens in Bulyan's last iterations; the data, not the row order,
    then decides.
    """
    scores = krum_scores(squared, f)  # [n]
    total = squared.sum(dim=1).clamp(max=torch.finfo(squared.dtype).max)  # [n], inf -> max
    return int(torch.where(scores == scores.min(), total, math.inf).argmin())


@rule("krum", min_n=lambda f: 2 * f + 3, condition="n >= 2f + 3", kappa=krum_kappa)
def krum(gradients: torch.Tensor, f: int) -> torch.Tensor:
    """Krum (Blanchard et al. 2017, Sec. 4): the row x_i* with the smallest score
    s(i) = sum_{i -> j} ||x_i - x_j||^2, where i -> j ranges over the n - f - 2 rows closest
    to x_i. Needs n >= 2f + 3; kappa = 1 / eta(n, f) (Proposition 1)."""
    return gradients[krum_choice(pairwise_distances(gradients).square(), f)]  # [d]


def _check_m(n: int, f: int, options: Mapping[str, Any]) -> None:
    m = options.get("m")
    if m is not None and not 1 <= m <= n - f:
        raise ValueError(
            f"The 'multi_krum' rule needs 1 <= m <= n - f. Got m = {m}, n = {n}, f = {f} "
            "instead."
        )


@rule(
    "multi_krum",
    min_n=lambda f: 2 * f + 3,
    condition="n >= 2f + 3 and 1 <= m <= n - f",
    kappa=krum_kappa,
    extra_check=_check_m,
)
def multi_krum(gradients: torch.Tensor, f: int, *, m: int | None = None) -> torch.Tensor:
    """Multi-Krum (Blanchard et al. 2017, the variant of their experiments): the mean of
    the m rows with the smallest Krum scores (computed once); m = 1 is Krum, ``m=None``
    means m = n - f.
    ``bound`` reports Krum's kappa = 1 / eta(n, f), as the companion paper's reference
    code does for Multi-Krum (Blanchard et al. prove it for Krum)."""
    n = gradients.shape[0]
    m = n - f if m is None else m
    scores = krum_scores(pairwise_distances(gradients).square(), f)  # [n]
    chosen = scores.topk(m, largest=False).indices  # [m]
    return gradients[chosen].mean(dim=0)  # [d]


def _check_subsets(n: int, f: int, options: Mapping[str, Any]) -> None:
    count = math.comb(n, f)
    if count > MDA_MAX_SUBSETS:
        raise ValueError(
            f"The 'mda' rule enumerates C(n, n - f) = C({n}, {n - f}) = {count} subsets for "
            f"n = {n}, f = {f}, more than MDA_MAX_SUBSETS = {MDA_MAX_SUBSETS}; use a smaller f "
            "or another rule."
        )


@rule(
    "mda",
    condition=f"n >= 2f + 1 and C(n, f) <= {MDA_MAX_SUBSETS}",
    kappa=mda_kappa,
    extra_check=_check_subsets,
)
def mda(gradients: torch.Tensor, f: int) -> torch.Tensor:
    """Minimum-diameter averaging (El Mhamdi et al. 2018): among all subsets S of
    n - f rows, take one of smallest diameter max_{i, j in S} ||x_i - x_j|| and return its
    mean. Exact: all C(n, n - f) subsets are enumerated as an index table into the condensed
    distances (cached per (n, f) when it holds at most ``MDA_CHUNK_ELEMENTS`` look-ups, else
    built in chunks of that size) and scored by one gather and a max over their pairs.
    Needs n >= 2f + 1; kappa = (n - f) / (sqrt(8) f). Ties go to the first subset in
    lexicographic order."""
    n = gradients.shape[0]
    size = n - f
    if size < 2:  # a single row per subset: every diameter is 0, the first subset wins
        return gradients[:size].mean(dim=0)  # [d]
    condensed = condensed_distances(gradients)  # [n (n - 1) / 2]
    pairs = size * (size - 1) // 2
    if math.comb(n, size) * pairs <= MDA_CHUNK_ELEMENTS:
        subsets, table = _subset_tables(n, size)  # [C, n - f], [C, P]
        best = int(condensed[table.to(condensed.device)].amax(dim=1).argmin())  # first minimum
        return gradients[subsets[best].to(gradients.device)].mean(dim=0)  # [d]
    chunk = max(1, MDA_CHUNK_ELEMENTS // pairs)
    combinations = itertools.combinations(range(n), size)
    best_diameter, best_subset = math.inf, None
    while True:
        flat = itertools.chain.from_iterable(itertools.islice(combinations, chunk))
        block = np.fromiter(flat, dtype=np.int64).reshape(-1, size)  # [c, n - f]
        if block.shape[0] == 0:
            break
        table = torch.from_numpy(_pair_positions(n, block)).to(condensed.device)  # [c, P]
        diameters = condensed[table].amax(dim=1)  # [c]
        position = int(diameters.argmin())
        if best_subset is None or float(diameters[position]) < best_diameter:
            best_diameter, best_subset = float(diameters[position]), block[position]
    assert best_subset is not None
    return gradients[torch.from_numpy(best_subset).to(gradients.device)].mean(dim=0)  # [d]


def _pair_positions(n: int, subsets: np.ndarray) -> np.ndarray:
    """``[C, P]`` positions in the condensed distances of each subset's pairs (a < b), from
    ``subsets: [C, size]`` with increasing indices: pair (a, b) of n rows sits at
    n a - a (a + 1) / 2 + b - a - 1."""
    size = subsets.shape[1]
    i, j = np.triu_indices(size, k=1)
    a, b = subsets[:, i], subsets[:, j]  # [C, P]
    return n * a - a * (a + 1) // 2 + b - a - 1


@functools.lru_cache(maxsize=8)
def _subset_tables(n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every subset of ``size`` of n rows in lexicographic order, ``[C, size]``, and its pairs'
    positions in the condensed distances, ``[C, P]`` (cached: a training run calls MDA with
    the same (n, f) at every step; each table holds at most ``MDA_CHUNK_ELEMENTS`` int64, 32 MiB,
    so the cache stays under 300 MiB)."""
    subsets = np.fromiter(
        itertools.chain.from_iterable(itertools.combinations(range(n), size)), dtype=np.int64
    ).reshape(-1, size)  # [C, size]
    return torch.from_numpy(subsets), torch.from_numpy(_pair_positions(n, subsets))


def bulyan_select(gradients: torch.Tensor, f: int) -> torch.Tensor:
    """Indices ``[theta]`` of theta = n - 2f rows chosen by Krum applied repeatedly to the
    rows not yet chosen (El Mhamdi et al. 2018, first step of Bulyan)."""
    n = gradients.shape[0]
    squared = pairwise_distances(gradients).square()  # [n, n]
    remaining = torch.arange(n, device=gradients.device)  # [r]
    chosen = []
    for _ in range(n - 2 * f):
        local = squared[remaining][:, remaining]  # [r, r]
        pick = krum_choice(local, f)
        chosen.append(remaining[pick])
        remaining = torch.cat([remaining[:pick], remaining[pick + 1 :]])
    return torch.stack(chosen)  # [theta]


@rule("bulyan", min_n=lambda f: 4 * f + 3, condition="n >= 4f + 3", kappa=krum_kappa)
def bulyan(gradients: torch.Tensor, f: int) -> torch.Tensor:
    """Bulyan over Krum (El Mhamdi et al. 2018): select theta = n - 2f rows by
    iterated Krum; then per coordinate k average the beta = theta - 2f selected values closest
    to their median, [Bulyan(x)]_k = 1/beta sum_{i in M_k} x_ik with M_k the beta indices
    minimising |x_ik - median_k|. Needs n >= 4f + 3; kappa = 1 / eta(n, f)."""
    selected = gradients[bulyan_select(gradients, f)]  # [theta, d]
    beta = selected.shape[0] - 2 * f
    centre = coordinate_median(selected)  # [d]
    closest = (selected - centre).abs().topk(beta, dim=0, largest=False).indices  # [beta, d]
    return selected.gather(0, closest).mean(dim=0)  # [d]
