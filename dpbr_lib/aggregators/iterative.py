"""Iterative rules: geometric median by smoothed Weiszfeld (Pillutla et al. 2019, RFA) and
centered clipping (Karimireddy et al. 2021). Python loops run over iterations only."""

from __future__ import annotations

import torch

from dpbr_lib.aggregators._core import rule
from dpbr_lib.aggregators.coordinatewise import coordinate_median


@rule("geometric_median")
def geometric_median(
    gradients: torch.Tensor,
    f: int,
    *,
    tol: float = 1e-6,
    max_iter: int = 100,
    nu: float = 1e-6,
) -> torch.Tensor:
    """Geometric median argmin_z sum_i ||z - x_i|| by the smoothed Weiszfeld algorithm
    (Pillutla et al. 2019, "Robust aggregation for federated learning", Algorithm 3):
    z <- sum_i beta_i x_i / sum_i beta_i with beta_i = 1 / max(nu, ||z - x_i||).

    Stops when ||z_new - z|| <= tol * ||z_new|| or after ``max_iter`` iterations. Starts at
    the coordinate-wise median rather than RFA's mean: the minimiser is the same (the
    smoothed objective is convex), but from the mean one huge Byzantine row costs many
    iterations. Needs n >= 2f + 1 (breakdown point 1/2); no VN bound is tabulated.
    """
    z = coordinate_median(gradients)  # [d]
    for _ in range(max_iter):
        distances = torch.linalg.vector_norm(gradients - z, dim=1).clamp_min(nu)  # [n]
        weights = distances.reciprocal()  # [n]; 0 for an overflowing (inf) distance
        new = (weights @ gradients) / weights.sum()  # [d], the weighted mean as one product
        moved = float(torch.linalg.vector_norm(new - z))
        z = new
        if moved <= tol * float(torch.linalg.vector_norm(z)):
            break
    return z


@rule("centered_clipping")
def centered_clipping(
    gradients: torch.Tensor,
    f: int,
    *,
    tau: float = 1.0,
    iterations: int = 3,
    init: torch.Tensor | None = None,
) -> torch.Tensor:
    """Centered clipping (Karimireddy, He & Jaggi 2021, "Learning from history for
    Byzantine robust optimization", Eq. (CC)), L = ``iterations`` times:
    v <- v + (1/n) sum_i (x_i - v) min(1, tau / ||x_i - v||).

    ``init`` is the starting point v_0 (the paper uses the previous aggregate, i.e. the
    server momentum); by default the coordinate-wise median, a robust start when no history
    is given. The paper tunes tau per task; the default 1.0 suits gradients clipped to norm
    about 1 as in DP-SGD. Needs n >= 2f + 1; no VN bound is tabulated.
    """
    n = gradients.shape[0]
    v = coordinate_median(gradients) if init is None else init  # [d]
    for _ in range(iterations):
        offsets = gradients - v  # [n, d]
        norms = torch.linalg.vector_norm(offsets, dim=1)  # [n]
        scale = (tau / norms).clamp(max=1.0)  # [n]
        finite = torch.isfinite(norms)  # [n]
        if not bool(finite.all()):  # an overflowing offset moves v by 0 (not 0 * inf = NaN)
            offsets = torch.where(finite[:, None], offsets, 0.0)
            scale = torch.where(finite, scale, 0.0)
        v = v + (scale @ offsets) / n  # [d], the mean of the clipped offsets as one product
    return v
