"""Robust aggregation: hand-worked cases from each paper, properties over the whole registry,
a brute-force MDA, and cross-checks against the byzfl package."""

from __future__ import annotations

import doctest
import itertools
import math
import re

import byzfl
import pytest
import torch

from dpbr_lib import aggregators as A
from dpbr_lib._validation import finite_rows
from dpbr_lib.aggregators.preaggregation import bucketing, nnm

RULES = A.names()
ROBUST = [name for name in RULES if name != "average"]
COMPOSED = ["nnm+krum", "nnm+median", "bucketing+median", "bucketing+trimmed_mean"]


def close(actual: torch.Tensor, expected, atol: float = 1e-5) -> None:
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Hand-worked cases. X: four honest rows and one outlier x5; n = 5, f = 1.
#   x1 = (0, 0), x2 = (3, 0), x3 = (0, 4), x4 = (1, 1), x5 = (9, -6)
# Squared distances: d12 = 9, d13 = 16, d14 = 2, d15 = 117, d23 = 25, d24 = 5, d25 = 72,
#                    d34 = 10, d35 = 181, d45 = 113.
X = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0], [1.0, 1.0], [9.0, -6.0]])


def test_average_by_hand():
    # ((0 + 3 + 0 + 1 + 9) / 5, (0 + 0 + 4 + 1 - 6) / 5): the outlier drags it away
    close(A.get("average")(X, 1), [2.6, -0.2])


def test_median_by_hand():
    # column 1 sorted: 0 0 [1] 3 9; column 2 sorted: -6 0 [0] 1 4 (Yin et al. 2018, Def. 1)
    close(A.get("median")(X, 1), [1.0, 0.0])
    # even n: mean of the two middle values; column 1 of x1..x4 sorted 0 [0 1] 3 -> 0.5
    close(A.get("median")(X[:4], 1), [0.5, 0.5])


def test_trimmed_mean_by_hand():
    # drop the largest and smallest per column: column 1 keeps 0 1 3 -> 4/3, column 2 keeps
    # 0 0 1 -> 1/3 (Yin et al. 2018, Def. 2 with beta n = f = 1)
    close(A.get("trimmed_mean")(X, 1), [4 / 3, 1 / 3])


def test_krum_by_hand():
    # Blanchard et al. 2017: score = sum of the n - f - 2 = 2 smallest squared distances to
    # others. s1 = 2 + 9 = 11, s2 = 5 + 9 = 14, s3 = 10 + 16 = 26, s4 = 2 + 5 = 7,
    # s5 = 72 + 113 = 185 -> Krum selects x4.
    close(A.get("krum")(X, 1), [1.0, 1.0])


def test_multi_krum_by_hand():
    # same scores; the m = 2 smallest are x4 (7) and x1 (11): mean (0.5, 0.5)
    close(A.get("multi_krum", m=2)(X, 1), [0.5, 0.5])
    # default m = n - f = 4: x4, x1, x2, x3, i.e. the mean of the honest rows (1, 1.25)
    close(A.get("multi_krum")(X, 1), [1.0, 1.25])


def test_mda_by_hand():
    # f = 1: subsets of 4 rows. Without x5 the diameter is sqrt(25) (x2, x3); any subset with
    # x5 has a diameter of at least sqrt(72). Mean of x1..x4 = (1, 1.25).
    close(A.get("mda")(X, 1), [1.0, 1.25])
    # f = 2: subsets of 3 rows; squared diameters {1,2,4}: max(9, 2, 5) = 9, {1,3,4}: 16,
    # {1,2,3}: 25, {2,3,4}: 25, the rest contain x5. Mean of x1, x2, x4 = (4/3, 1/3).
    close(A.get("mda")(X, 2), [4 / 3, 1 / 3])


def test_geometric_median_by_hand():
    # The geometric median of a convex quadrilateral's vertices is where its diagonals cross
    # (there the unit vectors to opposite vertices cancel). A=(0,0), C=(5,3) and B=(4,0),
    # D=(0,2): t (5, 3) = (4, 0) + s (-4, 2) gives s = 1.5 t, t = 4/11 -> (20/11, 12/11).
    quad = torch.tensor([[0.0, 0.0], [4.0, 0.0], [5.0, 3.0], [0.0, 2.0]], dtype=torch.float64)
    out = A.get("geometric_median", tol=1e-12, max_iter=2000)(quad, 1)
    close(out, [20 / 11, 12 / 11], atol=1e-8)
    # mean (2.25, 1.25) and coordinate-wise median (2, 1) differ from it
    assert not torch.allclose(out, quad.mean(0), atol=0.1)


def test_centered_clipping_by_hand():
    # Karimireddy et al. 2021: v <- v + mean_i clip_tau(x_i - v). From v0 = 0 with tau = 1:
    # x1 -> (0, 0), x2 -> (1, 0), x3 -> (0, 1), x4 -> (1, 1)/sqrt(2), x5 -> (9, -6)/sqrt(117).
    cc = A.get("centered_clipping", tau=1.0, iterations=1, init=torch.zeros(2))
    expected = [
        (1 + 1 / math.sqrt(2) + 9 / math.sqrt(117)) / 5,
        (1 + 1 / math.sqrt(2) - 6 / math.sqrt(117)) / 5,
    ]
    close(cc(X, 1), expected)
    # Default start: the coordinate-wise median v0 = (1, 0); tau = 2. Offsets and norms:
    # (-1, 0) 1, (2, 0) 2, (-1, 4) sqrt(17) -> scaled by 2/sqrt(17), (0, 1) 1,
    # (8, -6) 10 -> scaled by 0.2 to (1.6, -1.2).
    cc = A.get("centered_clipping", tau=2.0, iterations=1)
    expected = [
        1 + (-1 + 2 - 2 / math.sqrt(17) + 0 + 1.6) / 5,
        0 + (0 + 0 + 8 / math.sqrt(17) + 1 - 1.2) / 5,
    ]
    close(cc(X, 1), expected)


def test_bulyan_by_hand():
    # El Mhamdi et al. 2018, n = 7, f = 1, d = 1: theta = n - 2f = 5 rows by iterated Krum,
    # then the beta = theta - 2f = 3 values closest to their median are averaged.
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0], [11.0], [30.0], [-20.0]])
    # Krum on 7 rows, 4 neighbours: 0:180 1:141 3:93 7:117 11:301 30:2460 -20:2099 -> 3
    # Krum on 6 rows, 3 neighbours: 0:171 1:137 7:101 11:237 30:1731 -20:1570      -> 7
    # Krum on 5 rows, 2 neighbours: 0:122 1:101 11:221 30:1202 -20:841             -> 1
    # 4 rows, 1 neighbour: 0:121 11:121 (tie, broken by the total squared distance to all
    #   rows, 1421 < 1443) 30:361 -20:400                                          -> 0
    # 3 rows, 1 neighbour: 11:361 30:361 (totals 1322 < 2861) -20:961              -> 11
    # selected {3, 7, 1, 0, 11}, median 3, closest three: 3, 1, 0 -> 4/3
    close(A.get("bulyan")(x, 1), [4 / 3])
    # the other rules disagree on the same input
    close(A.get("median")(x, 1), [3.0])
    close(A.get("trimmed_mean")(x, 1), [22 / 5])


def test_nnm_by_hand():
    # Allouah et al. 2023: each row -> mean of its n - f = 4 nearest rows, itself included.
    # x1: x1, x4, x2, x3 (0, 2, 9, 16) -> (1, 1.25); x2: x2, x4, x1, x3 (0, 5, 9, 25) -> same;
    # x3: x3, x4, x1, x2 (0, 10, 16, 25) -> same; x4: x4, x1, x2, x3 -> same;
    # x5: x5, x2, x4, x1 (0, 72, 113, 117) -> ((9+3+1+0)/4, (-6+0+1+0)/4) = (3.25, -1.25)
    mixed = nnm(X, 1)
    close(mixed, [[1.0, 1.25]] * 4 + [[3.25, -1.25]])
    # then the average of the mixed rows: ((4 * 1 + 3.25) / 5, (4 * 1.25 - 1.25) / 5)
    close(A.get("nnm+average")(X, 1), [1.45, 0.75])


def test_bucketing_means_of_a_seeded_permutation():
    # Karimireddy et al. 2022: permute, buckets of s = 2 (the last has one row), means.
    order = torch.randperm(5, generator=torch.Generator().manual_seed(3))
    expected = torch.stack([X[order[:2]].mean(0), X[order[2:4]].mean(0), X[order[4]]])
    close(bucketing(X, 1, bucket_size=2, seed=3), expected)
    # through get, one generator per aggregator: two aggregators with one seed give the same
    # sequence, and successive calls draw fresh buckets
    a, b = A.get("bucketing+median", seed=3), A.get("bucketing+median", seed=3)
    first = [a(X, 1) for _ in range(4)]
    second = [b(X, 1) for _ in range(4)]
    for u, v in zip(first, second, strict=True):
        close(u, v)
    assert any(not torch.equal(first[0], other) for other in first[1:])


# ---------------------------------------------------------------------------------------------
# VN-ratio bounds and registry content.


def test_kappa_worked_numbers():
    # eta(7, 1) = sqrt(2 (6 + (1 * 4 + 1 * 5) / 3)) = sqrt(18); kappa = 1 / sqrt(18)
    assert A.get("krum").bound(7, 1) == pytest.approx(1 / math.sqrt(18))
    assert A.get("multi_krum").bound(7, 1) == pytest.approx(1 / math.sqrt(18))
    # eta(11, 2) = sqrt(2 (9 + (2 * 7 + 4 * 8) / 5)) = sqrt(2 * 18.2) = sqrt(36.4)
    assert A.get("bulyan").bound(11, 2) == pytest.approx(1 / math.sqrt(36.4))
    assert A.get("median").bound(7, 1) == pytest.approx(1 / math.sqrt(6))
    # MDA: (n - f) / (sqrt(8) f) = 6 / sqrt(8) = 2.1213...
    assert A.get("mda").bound(7, 1) == pytest.approx(6 / math.sqrt(8))
    assert A.get("mda").bound(7, 0) == math.inf
    for name in ["average", "trimmed_mean", "geometric_median", "centered_clipping"]:
        assert A.get(name).bound(7, 1) is None
    # bucketing (s = 2): 10 rows -> 5 buckets of 2, kappa = sqrt(2) * kappa_median(5, 2)
    assert A.get("bucketing+median").bound(10, 2) == pytest.approx(math.sqrt(2 / 3))
    # 9 rows -> 5 buckets, the last of 1 row: sqrt(1) * kappa_median(5, 2)
    assert A.get("bucketing+median").bound(9, 2) == pytest.approx(1 / math.sqrt(3))
    assert A.get("nnm+krum").bound(7, 1) is None
    with pytest.raises(ValueError, match="n >= 2f \\+ 3"):
        A.get("krum").bound(4, 1)


def test_names_content():
    assert A.names() == [
        "average",
        "bulyan",
        "centered_clipping",
        "geometric_median",
        "krum",
        "mda",
        "median",
        "multi_krum",
        "trimmed_mean",
    ]
    assert A.pre_aggregation_names() == ["bucketing", "nnm"]
    assert A.get("nnm+krum").name == "nnm+krum"
    assert A.get("bucketing+nnm+median").name == "bucketing+nnm+median"


# ---------------------------------------------------------------------------------------------
# Properties over the whole registry.


def honest_and_outliers(n: int, f: int, d: int, seed: int, far: float = 50.0):
    g = torch.Generator().manual_seed(seed)
    honest = torch.randn(n - f, d, generator=g)  # [h, d]
    byzantine = far + torch.randn(f, d, generator=g)  # [f, d]
    return honest, torch.cat([honest, byzantine])


@pytest.mark.parametrize("name", [*RULES, "nnm+krum", "nnm+mda"])
def test_permutation_invariance(name):
    _, x = honest_and_outliers(11, 2, 6, seed=1, far=3.0)
    agg = A.get(name)
    order = torch.randperm(11, generator=torch.Generator().manual_seed(2))
    close(agg(x[order], 2), agg(x, 2), atol=1e-5)


@pytest.mark.parametrize("name", ["median", "trimmed_mean"])
def test_coordinatewise_output_inside_honest_range_for_any_byzantine_values(name):
    g = torch.Generator().manual_seed(4)
    honest = torch.randn(7, 5, generator=g)
    for scale in [0.5, 5.0, 1e6]:  # Byzantine rows inside, around and far outside
        byzantine = scale * torch.randn(3, 5, generator=g)
        out = A.get(name)(torch.cat([byzantine, honest]), 3)
        assert (out >= honest.min(0).values).all() and (out <= honest.max(0).values).all()


@pytest.mark.parametrize("name", ["median", "trimmed_mean", "mda", "krum", "bulyan"])
def test_output_inside_honest_range_with_far_outliers(name):
    honest, x = honest_and_outliers(11, 2, 5, seed=5)
    out = A.get(name)(x, 2)
    assert (out >= honest.min(0).values - 1e-6).all()
    assert (out <= honest.max(0).values + 1e-6).all()


def _inject(kind: str, f: int, d: int) -> torch.Tensor:
    rows = {
        "nan": torch.full((f, d), math.nan),
        "inf": torch.full((f, d), math.inf),
        "-inf": torch.full((f, d), -math.inf),
        "huge": torch.full((f, d), 1e30),
        "mixed": torch.tensor([[math.nan] * d, [1e30] * d]),  # one NaN row, one huge row
    }[kind]
    return rows


@pytest.mark.parametrize("kind", ["nan", "inf", "-inf", "huge", "mixed"])
@pytest.mark.parametrize("name", ROBUST + COMPOSED)
def test_non_finite_and_huge_rows_are_survived(name, kind):
    n, f, d = 11, 2, 5
    g = torch.Generator().manual_seed(6)
    honest = torch.randn(n - f, d, generator=g)  # [9, d]
    x = torch.cat([honest[:4], _inject(kind, f, d), honest[4:]])  # Byzantine rows in the middle
    out = A.get(name)(x, f)
    assert torch.isfinite(out).all(), out
    centre = honest.mean(0)
    radius = (honest - centre).norm(dim=1).max()
    assert (out - centre).norm() <= radius, (out, centre, radius)


def test_finite_rows_keeps_rows_whose_sum_overflows_and_flags_every_non_finite_row():
    big = torch.finfo(torch.float32).max
    x = torch.tensor([
        [big, big, 0.0],  # finite, but its row sum overflows: kept
        [1.0, math.nan, 2.0],
        [1.0, 2.0, 3.0],
        [-math.inf, 0.0, 0.0],
        [math.inf, -math.inf, 0.0],  # sum is NaN
    ])
    assert finite_rows(x).tolist() == [True, False, True, False, False]
    assert finite_rows(x).tolist() == torch.isfinite(x).all(dim=1).tolist()


def test_pairwise_distances_are_exact_differences_even_for_huge_rows():
    g = torch.Generator().manual_seed(11)
    x = torch.randn(7, 5, generator=g, dtype=torch.float64)
    expected = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")
    close(A.distance.pairwise_distances(x), expected, atol=1e-12)
    huge = torch.tensor([[1e20, 0.0], [1e20, 1.0], [0.0, 0.0]])  # |x|^2 trick gives 0 or NaN
    got = A.distance.pairwise_distances(huge)
    assert got[0, 1] == 1.0 and got[1, 0] == 1.0 and got[0, 0] == 0.0


@pytest.mark.parametrize("chunk", [None, 1])  # the cached table; one subset per chunk
def test_mda_ties_go_to_the_first_subset_in_lexicographic_order(monkeypatch, chunk):
    if chunk is not None:
        monkeypatch.setattr(A.distance, "MDA_CHUNK_ELEMENTS", chunk)
    # {0, 1} and {1, 2} both have diameter 1 (and {0, 2} has 2): {0, 1} comes first
    x = torch.tensor([[0.0], [1.0], [2.0]], dtype=torch.float64)
    close(A.get("mda")(x, 1), torch.tensor([0.5], dtype=torch.float64), atol=0)
    close(A.get("mda")(x.flip(0), 1), torch.tensor([1.5], dtype=torch.float64), atol=0)


def test_average_propagates_nan_and_more_non_finite_rows_than_f_is_an_error():
    x = torch.cat([X, torch.full((1, 2), math.nan)])
    assert torch.isnan(A.get("average")(x, 1)).all()
    with pytest.raises(ValueError, match="2 rows with NaN or infinite values, more than f = 1"):
        A.get("median")(torch.cat([x, torch.full((1, 2), math.inf)]), 1)


@pytest.mark.parametrize("name", ["nnm+average", "bucketing+average"])
def test_pre_aggregation_drops_non_finite_rows_even_before_the_average(name):
    x = torch.cat([X, torch.full((1, 2), math.nan), torch.full((1, 2), -math.inf)])
    assert torch.isfinite(A.get(name)(x, 3)).all()


def test_docstring_examples_run():
    for module in [A, A._core, A.bounds]:
        assert doctest.testmod(module, raise_on_error=True).attempted > 0


@pytest.mark.parametrize("name", ["trimmed_mean", "mda"])
def test_f_zero_is_the_mean(name):
    _, x = honest_and_outliers(8, 2, 4, seed=7)
    close(A.get(name)(x, 0), x.mean(0))


@pytest.mark.parametrize(
    ("name", "f", "smallest_n", "condition"),
    [
        ("median", 2, 5, "n >= 2f + 1"),
        ("trimmed_mean", 2, 5, "n >= 2f + 1"),
        ("geometric_median", 2, 5, "n >= 2f + 1"),
        ("centered_clipping", 2, 5, "n >= 2f + 1"),
        ("mda", 2, 5, "n >= 2f + 1"),
        ("krum", 2, 7, "n >= 2f + 3"),
        ("multi_krum", 2, 7, "n >= 2f + 3"),
        ("bulyan", 2, 11, "n >= 4f + 3"),
        ("nnm+average", 2, 5, "n >= 2f + 1"),
        ("nnm+krum", 2, 7, "n >= 2f + 3"),
        # bucketing: 9 rows -> 5 buckets for the median; 8 rows -> 4 buckets, too few
        ("bucketing+median", 2, 9, "n >= 2f + 1"),
    ],
)
def test_validity_condition(name, f, smallest_n, condition):
    agg = A.get(name)
    agg.check(smallest_n, f)
    agg(torch.randn(smallest_n, 3), f)
    small = smallest_n - 1
    message = "needs " + re.escape(condition) + rf".*Got n = .*\b{small}\b.*, f = {f} "
    with pytest.raises(ValueError, match=message):
        agg.check(small, f)
    with pytest.raises(ValueError, match=message):
        agg(torch.randn(small, 3), f)


def test_multi_krum_m_and_mda_subset_cap():
    with pytest.raises(ValueError, match=r"1 <= m <= n - f\. Got m = 6, n = 7, f = 2"):
        A.get("multi_krum", m=6)(torch.randn(7, 2), 2)
    A.get("multi_krum", m=5)(torch.randn(7, 2), 2)
    with pytest.raises(ValueError, match=r"C\(40, 25\) = \d+ subsets.*MDA_MAX_SUBSETS"):
        A.get("mda").check(40, 15)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: A.get("median")(torch.ones(3), 0), ValueError, "2-D"),
        (lambda: A.get("median")(torch.ones(0, 3), 0), ValueError, "non-empty"),
        (lambda: A.get("median")(torch.ones(3, 2, dtype=torch.int64), 0), TypeError, "floating"),
        (lambda: A.get("median")([[1.0]], 0), TypeError, "torch.Tensor"),
        (lambda: A.get("median")(torch.ones(3, 2), -1), ValueError, "'f'.*-1"),
        (lambda: A.get("median")(torch.ones(3, 2), 1.0), TypeError, "'f'"),
        (lambda: A.get("medain"), ValueError, "Valid names: average, bulyan"),
        (lambda: A.get("foo+median"), ValueError, "Valid names: bucketing, nnm"),
        (lambda: A.get("nnm"), ValueError, "pre-aggregation"),
        (lambda: A.get("krum", m=2), ValueError, "Unknown option.*'m'.*Valid options: none"),
        (lambda: A.get("multi_krum", m=0), ValueError, r"'m'.*\[1, inf\)"),
        (lambda: A.get("geometric_median", tol=-1.0), ValueError, "'tol'"),
        (lambda: A.get("centered_clipping", tau=0.0), ValueError, "'tau'"),
        (lambda: A.get("bucketing+median", bucket_size=0), ValueError, "'bucket_size'"),
        (
            lambda: A.get("bucketing+median", seed=1, generator=torch.Generator()),
            ValueError,
            "exclude each other",
        ),
        (
            lambda: A.get("centered_clipping", init=torch.zeros(3))(torch.ones(3, 2), 1),
            ValueError,
            "'init'.*shape",
        ),
    ],
)
def test_bad_input_is_a_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("name", RULES + COMPOSED)
def test_float64_works_and_agrees_with_float32(name):
    _, x = honest_and_outliers(11, 2, 4, seed=8, far=5.0)
    out64 = A.get(name)(x.double(), 2)
    assert out64.dtype == torch.float64
    close(A.get(name)(x, 2).double(), out64, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# MDA against a plain brute force written from the definition.


def mda_brute_force(x: torch.Tensor, f: int) -> torch.Tensor:
    n = x.shape[0]
    best, best_diameter = None, math.inf
    for subset in itertools.combinations(range(n), n - f):
        diameter = 0.0
        for i in subset:
            for j in subset:
                diameter = max(diameter, float((x[i] - x[j]).norm()))
        if diameter < best_diameter:
            best, best_diameter = subset, diameter
    return x[list(best)].mean(0)


@pytest.mark.parametrize(("n", "f", "seed"), [(5, 1, 0), (7, 2, 1), (9, 3, 2), (8, 3, 3)])
def test_mda_matches_brute_force(n, f, seed):
    x = torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    close(A.get("mda")(x, f), mda_brute_force(x, f), atol=1e-12)


def test_mda_chunks_give_the_same_answer(monkeypatch):
    x = torch.randn(9, 3, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    whole = A.get("mda")(x, 3)
    monkeypatch.setattr(A.distance, "MDA_CHUNK_ELEMENTS", 40)  # 15 pairs -> 2 subsets a chunk
    close(A.get("mda")(x, 3), whole, atol=0)


def bulyan_reference(x: torch.Tensor, f: int) -> torch.Tensor:
    """Plain loops over El Mhamdi et al.'s definition, with the same Krum tie-break."""
    remaining = list(range(x.shape[0]))
    chosen = []
    while len(chosen) < x.shape[0] - 2 * f:
        k = max(len(remaining) - f - 2, 1)

        keys = {}
        for i in remaining:
            dists = sorted(float((x[i] - x[j]).norm() ** 2) for j in remaining if j != i)
            keys[i] = (sum(dists[:k]), sum(dists))
        best = min(remaining, key=keys.__getitem__)
        chosen.append(best)
        remaining.remove(best)
    selected = x[chosen]
    beta = len(chosen) - 2 * f
    out = torch.empty(x.shape[1], dtype=x.dtype)
    for c in range(x.shape[1]):
        column = sorted(selected[:, c].tolist())
        median = column[len(column) // 2]  # theta = n - 2f is odd in these cases
        nearest = sorted(column, key=lambda v: abs(v - median))[:beta]
        out[c] = sum(nearest) / beta
    return out


@pytest.mark.parametrize(("n", "f", "seed"), [(7, 1, 0), (11, 2, 1), (13, 2, 2)])
def test_bulyan_matches_plain_reference(n, f, seed):
    x = torch.randn(n, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x[:f] += 4.0  # a cluster of Byzantine rows
    close(A.get("bulyan")(x, f), bulyan_reference(x, f), atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Cross-checks against byzfl 0.0.11 (which computes in float32).

CASES = [(7, 2, 0), (9, 3, 1), (10, 1, 2)]


def random_case(n: int, seed: int, d: int = 6) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("n", "f", "seed"), CASES)
def test_byzfl_median_trimmed_mean_mda_nnm(n, f, seed):
    x = random_case(n, seed)
    close(A.get("median")(x, f), byzfl.Median()(x))
    close(A.get("trimmed_mean")(x, f), byzfl.TrMean(f)(x))
    close(A.get("mda")(x, f), byzfl.MDA(f)(x))
    close(nnm(x, f), byzfl.NNM(f)(x))
    close(A.get("nnm+median")(x, f), byzfl.Median()(byzfl.NNM(f)(x)))


@pytest.mark.parametrize(("n", "f", "seed"), CASES)
def test_byzfl_krum_and_multi_krum_with_their_neighbour_count(n, f, seed):
    # byzfl's Krum(f) sums the n - f - 1 nearest others; Blanchard et al. (and we) use
    # n - f - 2, which is byzfl's Krum(f + 1). byzfl's MultiKrum(f) averages n - f rows with
    # those scores, so MultiKrum(f + 1) is ours with m = n - f - 1.
    x = random_case(n, seed)
    close(A.get("krum")(x, f), byzfl.Krum(f + 1)(x))
    close(A.get("multi_krum", m=n - f - 1)(x, f), byzfl.MultiKrum(f + 1)(x))


def test_byzfl_krum_neighbour_count_really_differs():
    # d = 1, n = 5, f = 1, values 0 1 5 6 8. Ours, 2 neighbours: 0: 1+25 = 26, 1: 1+16 = 17,
    # 5: 1+9 = 10, 6: 1+4 = 5, 8: 4+9 = 13 -> 6. byzfl's Krum(1), 3 neighbours: 0: 62,
    # 1: 42, 5: 1+9+16 = 26, 6: 1+4+25 = 30, 8: 62 -> 5.
    y = torch.tensor([[0.0], [1.0], [5.0], [6.0], [8.0]])
    close(A.get("krum")(y, 1), [6.0])
    close(byzfl.Krum(1)(y), [5.0])
    close(byzfl.Krum(2)(y), [6.0])


@pytest.mark.parametrize(("n", "f", "seed"), CASES)
def test_byzfl_geometric_median_at_convergence(n, f, seed):
    # byzfl runs T smoothed-Weiszfeld steps from 0; we start at the median and stop on tol.
    # Both converge to the same minimiser of the smoothed objective.
    x = random_case(n, seed)
    ours = A.get("geometric_median", nu=0.1, tol=1e-9, max_iter=1000)(x, f)
    close(ours, byzfl.GeometricMedian(nu=0.1, T=1000)(x))


@pytest.mark.parametrize(("n", "f", "seed"), CASES)
def test_byzfl_centered_clipping_from_zero(n, f, seed):
    # byzfl's CenteredClipping always starts at 0: its check on `m` rejects every tensor
    # (`not isinstance(m, ndarray) or not isinstance(m, Tensor)` is always true).
    x = random_case(n, seed)
    ours = A.get("centered_clipping", tau=0.7, iterations=4, init=torch.zeros(6))(x, f)
    close(ours, byzfl.CenteredClipping(L=4, tau=0.7)(x))


def test_byzfl_bucketing_with_the_same_permutation():
    # byzfl draws its permutation from torch's global generator; seed it inside fork_rng
    # so the test leaves global state alone.
    x = random_case(9, 3)
    with torch.random.fork_rng():
        torch.manual_seed(11)
        theirs = byzfl.Bucketing(s=2)(x)
    close(bucketing(x, 2, bucket_size=2, seed=11), theirs)
