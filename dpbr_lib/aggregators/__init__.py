"""Robust aggregation rules and pre-aggregations, each with its VN-ratio bound kappa(n, f).

>>> import torch
>>> from dpbr_lib import aggregators
>>> agg = aggregators.get("nnm+krum")
>>> x = torch.tensor([[0.0], [1.0], [2.0], [3.0], [100.0]])
>>> agg(x, f=1)
tensor([1.5000])
>>> round(aggregators.get("krum").bound(7, 1), 4)
0.2357

``get(name, **options)`` returns an :class:`Aggregator`; ``names()`` lists the rules and
``pre_aggregation_names()`` the pre-aggregations that compose as ``"<pre>+<rule>"``.
Modules: ``coordinatewise`` (average, median, trimmed mean), ``distance`` (Krum, Multi-Krum,
MDA, Bulyan), ``iterative`` (geometric median, centered clipping), ``preaggregation`` (NNM,
bucketing), ``bounds`` (kappa formulas), ``_core`` (registry, options, non-finite rows).
"""

from dpbr_lib.aggregators import coordinatewise, distance, iterative, preaggregation
from dpbr_lib.aggregators._core import (
    Aggregator,
    drop_non_finite_rows,
    get,
    names,
    pre_aggregation_names,
)
from dpbr_lib.aggregators.distance import MDA_MAX_SUBSETS

__all__ = [
    "MDA_MAX_SUBSETS",
    "Aggregator",
    "coordinatewise",
    "distance",
    "drop_non_finite_rows",
    "get",
    "iterative",
    "names",
    "pre_aggregation_names",
    "preaggregation",
]
