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
from dpbr_lib.aggregators import _core, distance


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


@contextlib.contextmanager
def patched() -> Iterator[None]:
    """Library module attributes swapped for the proposed versions inside the block."""
    saved = (_core.finite_rows, distance.pairwise_distances)
    _core.finite_rows = finite_rows
    distance.pairwise_distances = pairwise_distances
    from dpbr_lib.aggregators import preaggregation

    saved_pre = preaggregation.pairwise_distances
    preaggregation.pairwise_distances = pairwise_distances
    try:
        yield
    finally:
        _core.finite_rows, distance.pairwise_distances = saved
        preaggregation.pairwise_distances = saved_pre


def aggregator(name: str, **options: object) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """The library's aggregator ``name`` run with the proposed helpers (and the proposed MDA)."""
    agg = aggregators.get(name, **options)
    if name == "mda":
        rule = dataclasses.replace(_core.RULES.get("mda"), fn=mda)
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
