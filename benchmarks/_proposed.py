"""Patched copies of library hot spots, timed beside the library's versions (``--proposed``).

Each function here is a change proposed for a library file, measured before it is applied
there; once applied, its rows compare the library with itself and the function can go.

- :func:`finite_rows` for ``dpbr_lib/_validation.py::finite_rows``: one row sum instead of an
  elementwise ``isfinite`` mask. A row sum is non-finite iff the row holds a NaN/Inf or its sum
  overflows; only such rows (rare) get the exact elementwise check.
- :func:`pairwise_distances` for ``dpbr_lib/aggregators/distance.py::pairwise_distances``:
  ``torch.pdist`` (exact differences, like ``cdist(..., "donot_use_mm_for_euclid_dist")``, but
  only the n (n - 1) / 2 pairs and a faster kernel), mirrored into ``Tensor[n, n]``.
- :func:`mda`: the same rule with the subset-pair index table cached per (n, f) and one gather
  from the condensed distances.
- :func:`coordinate_median` for ``dpbr_lib/aggregators/coordinatewise.py``: ``torch.median``
  (selection) for odd n instead of a full sort.
- :func:`geometric_median` for ``dpbr_lib/aggregators/iterative.py``: the Weiszfeld weighted
  sum as one matrix-vector product.
- :func:`centered_clipping` for ``dpbr_lib/aggregators/iterative.py::centered_clipping``: the
  clipped mean as one matrix-vector product instead of an [n, d] ``torch.where`` and a mean.
- :func:`clipped_worker_means` for ``dpbr_lib/training.py::honest_gradients`` (clip_mode
  "per_sample"): per-sample norms from the per-parameter blocks, then one batched matmul per
  parameter reduces each worker's b scaled gradients, so the [h * b, d] matrix is never
  concatenated, scaled or summed as a whole.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from dpbr_lib import aggregators
from dpbr_lib.aggregators import _core, coordinatewise, distance, iterative, preaggregation


def finite_rows(gradients: torch.Tensor) -> torch.Tensor:
    """Boolean mask ``[n]`` of rows whose every coordinate is finite."""
    mask = torch.isfinite(gradients.sum(dim=1))  # [n]; False: a NaN/Inf, or an overflowing sum
    if not bool(mask.all()):
        suspects = (~mask).nonzero().squeeze(1)  # [k]
        mask[suspects] = torch.isfinite(gradients[suspects]).all(dim=1)
    return mask


def pairwise_distances(gradients: torch.Tensor) -> torch.Tensor:
    """Euclidean distances ``Tensor[n, n]`` from ``torch.pdist`` (exact differences)."""
    n = gradients.shape[0]
    out = gradients.new_zeros(n, n)  # [n, n]
    if n > 1:
        first, second = torch.triu_indices(n, n, offset=1, device=gradients.device)  # [P]
        condensed = torch.pdist(gradients)  # [P], the pairs in triu order
        out[first, second] = condensed
        out[second, first] = condensed
    return out


@functools.lru_cache(maxsize=16)
def _subset_pairs(n: int, size: int) -> torch.Tensor:
    """``[C(n, size), P]`` indices into ``pdist``'s condensed vector of every subset's pairs."""
    subsets = np.fromiter(
        itertools.chain.from_iterable(itertools.combinations(range(n), size)), dtype=np.int64
    ).reshape(-1, size)  # [C, size]
    i, j = np.triu_indices(size, k=1)
    a, b = subsets[:, i], subsets[:, j]  # [C, P], a < b
    return torch.from_numpy(n * a - a * (a + 1) // 2 + b - a - 1)  # condensed index of (a, b)


def mda(gradients: torch.Tensor, f: int) -> torch.Tensor:
    """MDA with a cached subset table: diameters = max over each subset's condensed pairs.
    For C(n, f) * P beyond ``MDA_CHUNK_ELEMENTS`` the library's chunked version runs."""
    n = gradients.shape[0]
    size = n - f
    pairs = size * (size - 1) // 2
    if pairs == 0 or math.comb(n, size) * pairs > distance.MDA_CHUNK_ELEMENTS:
        with patched():
            return distance.mda(gradients, f)
    table = _subset_pairs(n, size)  # [C, P]
    condensed = torch.pdist(gradients)  # [n (n - 1) / 2]
    best = int(condensed[table].amax(dim=1).argmin())  # first subset of least diameter
    subset = itertools.islice(itertools.combinations(range(n), size), best, best + 1)
    chosen = torch.tensor(next(subset), device=gradients.device)  # [size]
    return gradients[chosen].mean(dim=0)  # [d]


def coordinate_median(gradients: torch.Tensor) -> torch.Tensor:
    """The library's coordinate median; for odd n by selection (``torch.median``, exact since
    the middle value is unique) instead of a full sort along the strided dim 0."""
    n = gradients.shape[0]
    if n % 2 == 1:
        return gradients.median(dim=0).values  # [d]
    ordered = gradients.sort(dim=0).values  # [n, d]
    return (ordered[n // 2 - 1] + ordered[n // 2]) / 2  # [d]


def geometric_median(
    gradients: torch.Tensor,
    f: int,
    *,
    tol: float = 1e-6,
    max_iter: int = 100,
    nu: float = 1e-6,
) -> torch.Tensor:
    """The library's smoothed Weiszfeld iteration with the weighted sum as one matrix-vector
    product, w @ X / sum(w), instead of an [n, d] product and a sum."""
    z = coordinate_median(gradients)  # [d]
    for _ in range(max_iter):
        distances = torch.linalg.vector_norm(gradients - z, dim=1).clamp_min(nu)  # [n]
        weights = distances.reciprocal()  # [n]
        new = (weights @ gradients) / weights.sum()  # [d]
        moved = float(torch.linalg.vector_norm(new - z))
        z = new
        if moved <= tol * float(torch.linalg.vector_norm(z)):
            break
    return z


def centered_clipping(
    gradients: torch.Tensor,
    f: int,
    *,
    tau: float = 1.0,
    iterations: int = 3,
    init: torch.Tensor | None = None,
) -> torch.Tensor:
    """The library's centered clipping with the clipped mean as one matrix-vector product,
    (1/n) sum_i s_i (x_i - v) = s @ (X - v) / n, instead of an [n, d] ``torch.where`` and a
    mean (and the proposed median as the default start). Rows whose offset norm is infinite
    get weight 0, as ``torch.where`` gave them."""
    n = gradients.shape[0]
    v = coordinate_median(gradients) if init is None else init  # [d]
    for _ in range(iterations):
        offsets = gradients - v  # [n, d]
        norms = torch.linalg.vector_norm(offsets, dim=1)  # [n]
        scale = (tau / norms).clamp(max=1.0)  # [n]
        finite = torch.isfinite(norms)  # [n]
        if not bool(finite.all()):  # an overflowing offset: its row moves v by 0
            offsets = torch.where(finite[:, None], offsets, 0.0)
            scale = torch.where(finite, scale, 0.0)
        v = v + (scale @ offsets) / n  # [d]
    return v


#: Rules replaced by a proposed version (the others only get the proposed helpers).
RULES = {"mda": mda, "centered_clipping": centered_clipping, "geometric_median": geometric_median}


@contextlib.contextmanager
def patched() -> Iterator[None]:
    """Library module attributes swapped for the proposed versions inside the block."""
    swaps = [
        (_core, "finite_rows", finite_rows),
        (distance, "pairwise_distances", pairwise_distances),
        (preaggregation, "pairwise_distances", pairwise_distances),
        (coordinatewise, "coordinate_median", coordinate_median),
        (distance, "coordinate_median", coordinate_median),
        (iterative, "coordinate_median", coordinate_median),
    ]
    saved = [getattr(module, name) for module, name, _ in swaps]
    for module, name, new in swaps:
        setattr(module, name, new)
    try:
        yield
    finally:
        for (module, name, _), old in zip(swaps, saved, strict=True):
            setattr(module, name, old)


def aggregator(name: str, **options: object) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """The library's aggregator ``name`` run with the proposed helpers (and the proposed MDA)."""
    agg = aggregators.get(name, **options)
    if name in RULES:
        rule = dataclasses.replace(_core.RULES.get(name), fn=RULES[name])
        agg = _core.Aggregator((), rule, options)

    def call(gradients: torch.Tensor, f: int) -> torch.Tensor:
        with patched():
            return agg(gradients, f)

    return call


def clipped_worker_means(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    clip: float,
) -> torch.Tensor:
    """Each worker's mean of its per-sample gradients clipped to norm ``clip``, ``[h, d]``,
    from ``x: [h, b, ...]``, ``y: [h, b]`` (the result of ``honest_gradients``)."""
    h, b = y.shape
    batch = h * b
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}

    def sample_loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return loss_fn(torch.func.functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0))

    grads = torch.func.vmap(torch.func.grad(sample_loss), in_dims=(None, 0, 0))(
        params, x.reshape(batch, *x.shape[2:]), y.reshape(batch)
    )  # name -> [B, *shape]
    blocks = [grads[k].reshape(batch, -1) for k in params]  # [B, d_k] each
    norms = torch.stack([torch.linalg.vector_norm(g, dim=1) for g in blocks])  # [K, B]
    total = torch.linalg.vector_norm(norms, dim=0)  # [B], the per-sample gradient norm
    scale = ((clip / total).clamp(max=1.0) / b).view(h, 1, b)  # [h, 1, b]
    return torch.cat([torch.bmm(scale, g.view(h, b, -1)).squeeze(1) for g in blocks], dim=1)
