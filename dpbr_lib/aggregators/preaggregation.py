"""Pre-aggregations, composed in front of any rule as ``"<pre>+<rule>"``: nearest-neighbour
mixing (Allouah et al. 2023) and bucketing (Karimireddy, He & Jaggi 2022)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from dpbr_lib.aggregators._core import pre_aggregation, sqrt_or_none
from dpbr_lib.aggregators.distance import pairwise_distances


def _unknown_bound(inner: float | None, n: int, f: int, options: Mapping[str, Any]) -> None:
    """NNM's guarantee (Allouah et al. 2023, Lemma 2) is stated in (f, kappa)-robustness,
    a different notion from the VN-ratio condition; no VN bound is claimed."""
    return None


@pre_aggregation("nnm", out_n=lambda n, options: n, kappa=_unknown_bound)
def nnm(gradients: torch.Tensor, f: int) -> torch.Tensor:
    """Nearest-neighbour mixing (Allouah et al. 2023, "Fixing by mixing", Algorithm 1):
    each x_i becomes the mean of its n - f nearest rows in Euclidean distance, itself
    included. Returns ``Tensor[n, d]``; the rule behind it sees the same n and f.
    Needs n >= 2f + 1 (the paper assumes f < n / 2), then the condition of the rule behind."""
    n = gradients.shape[0]
    k = n - f
    nearest = pairwise_distances(gradients).topk(k, dim=1, largest=False).indices  # [n, k]
    mixing = gradients.new_zeros(n, n).scatter_(1, nearest, 1.0 / k)  # [n, n], rows sum to 1
    return mixing @ gradients  # [n, d]


def _bucket_count(n: int, options: Mapping[str, Any]) -> int:
    return math.ceil(n / options["bucket_size"])


def _bucketing_bound(
    inner: float | None, n: int, f: int, options: Mapping[str, Any]
) -> float | None:
    """A bucket of s honest i.i.d. gradients has the same mean and 1/s of the variance, so
    its VN ratio is 1/sqrt(s) of the workers'; at most f of the ceil(n/s) buckets hold a
    Byzantine row. Hence kappa = sqrt(s_min) * kappa_rule(ceil(n/s), f), with s_min the size
    of the smallest bucket (the last one may be short). This is this project's argument
    from the construction of Karimireddy et al. (2022), not a bound stated in the paper."""
    s = options["bucket_size"]
    buckets = _bucket_count(n, options)
    smallest = n - s * (buckets - 1)
    return sqrt_or_none(inner, smallest)


def _resolve_generator(options: dict[str, Any]) -> dict[str, Any]:
    """Turn ``seed`` into one ``torch.Generator`` per aggregator, so successive calls draw
    fresh but reproducible buckets; ``seed`` and ``generator`` together are an error."""
    if options["seed"] is not None and options["generator"] is not None:
        raise ValueError(
            "The 'seed' and 'generator' parameters of 'bucketing' exclude each other. "
            f"Got seed = {options['seed']!r} and a generator instead."
        )
    if options["generator"] is None:
        seed = 0 if options["seed"] is None else options["seed"]
        options = {**options, "generator": torch.Generator().manual_seed(seed)}
    return options


@pre_aggregation(
    "bucketing",
    out_n=_bucket_count,
    kappa=_bucketing_bound,
    min_n=lambda f: 1,
    condition="n >= 1",
    resolve=_resolve_generator,
)
def bucketing(
    gradients: torch.Tensor,
    f: int,
    *,
    bucket_size: int = 2,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Bucketing (Karimireddy, He & Jaggi 2022, "Byzantine-robust learning on heterogeneous
    datasets via bucketing", Algorithm 1): permute the rows at random, split them into
    ceil(n / s) consecutive buckets of s rows (the last may be shorter) and return the bucket
    means ``Tensor[ceil(n / s), d]``. The rule behind it runs with the same f, since each
    Byzantine row spoils at most one bucket; it checks its condition on ceil(n / s).

    The permutation is drawn from ``generator`` (a CPU ``torch.Generator``), else from a
    generator seeded with ``seed`` (default 0). Through ``get`` one generator lives with the
    aggregator, so each call draws new buckets reproducibly.
    """
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else seed)
    n = gradients.shape[0]
    order = torch.randperm(n, generator=generator).to(gradients.device)  # [n]
    bucket = torch.arange(n, device=gradients.device) // bucket_size  # [n]
    count = math.ceil(n / bucket_size)
    sums = gradients.new_zeros(count, gradients.shape[1]).index_add_(0, bucket, gradients[order])
    sizes = torch.bincount(bucket, minlength=count).to(gradients.dtype)  # [count]
    return sums / sizes[:, None]  # [count, d]
