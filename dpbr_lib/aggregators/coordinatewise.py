"""Coordinate-wise rules: average, median, trimmed mean (Yin et al. 2018)."""

from __future__ import annotations

import torch

from dpbr_lib.aggregators._core import rule
from dpbr_lib.aggregators.bounds import median_kappa


def coordinate_median(gradients: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise median ``Tensor[d]``; for even n the mean of the two middle values.

    Odd n: ``torch.median`` (a selection, exact since the middle value is unique). Even n: one
    sort (``torch.median`` would return the lower middle value, and ``torch.quantile`` caps
    the input size).
    """
    n = gradients.shape[0]
    if n % 2 == 1:
        return gradients.median(dim=0).values  # [d]
    ordered = gradients.sort(dim=0).values  # [n, d]
    return (ordered[n // 2 - 1] + ordered[n // 2]) / 2  # [d]


@rule("average", min_n=lambda f: 1, condition="n >= 1", robust=False)
def average(gradients: torch.Tensor, f: int) -> torch.Tensor:
    """Arithmetic mean (1/n) sum_i x_i. Not Byzantine resilient: a single row moves it
    arbitrarily, NaN and infinities propagate, and no VN bound exists (``bound`` is None)."""
    return gradients.mean(dim=0)  # [d]


@rule("median", kappa=median_kappa)
def median(gradients: torch.Tensor, f: int) -> torch.Tensor:
    """Coordinate-wise median, [Med(x)]_k = median{x_1k, ..., x_nk} (Yin et al. 2018,
    Definition 1, "median-based gradient descent"); resilient for n >= 2f + 1."""
    return coordinate_median(gradients)  # [d]


@rule("trimmed_mean")
def trimmed_mean(gradients: torch.Tensor, f: int) -> torch.Tensor:
    """Coordinate-wise trimmed mean (Yin et al. 2018, Definition 2 with beta = f / n):
    per coordinate, drop the f largest and the f smallest values and average the n - 2f left,
    [TrMean(x)]_k = 1/(n - 2f) sum_{i = f+1}^{n-f} x_(i)k. Needs n >= 2f + 1. No VN-ratio
    bound is tabulated by Guerraoui et al. 2021, so ``bound`` is None."""
    n = gradients.shape[0]
    ordered = gradients.sort(dim=0).values  # [n, d]
    return ordered[f : n - f].mean(dim=0)  # [d]
