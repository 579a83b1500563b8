"""dpbr_lib.attacks on hand-worked cases from the papers' definitions, and against byzfl."""

import math

import pytest
import torch

from dpbr_lib import aggregators
from dpbr_lib import attacks as A

HONEST = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 0.0]])  # mean [3, 2], unbiased std [2, 2]


median = aggregators.get("median")
krum = aggregators.get("krum")
average = aggregators.get("average")


def random_honest(h=7, d=30, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(h, d, generator=g, dtype=dtype) + 1.0


# ------------------------------------------------------------------ hand-worked cases


def test_little_with_z_one_and_a_half():
    out = A.get("little")(HONEST, 2, factor=1.5)
    torch.testing.assert_close(out, torch.tensor([[6.0, 5.0], [6.0, 5.0]]))
    out = A.get("little")(HONEST, 2, factor=1.5, negative=True)
    torch.testing.assert_close(out, torch.tensor([[0.0, -1.0], [0.0, -1.0]]))


def test_little_default_factor_is_the_papers_z_max():
    # n = 3 + 2 = 5: s = floor(5/2 + 1) - 2 = 1, z = Phi^-1((5 - 1)/5) = Phi^-1(0.8) = 0.841621
    assert A.alie_z_max(5, 2) == pytest.approx(0.841621, abs=1e-6)
    # n = 50, f = 12: s = 26 - 12 = 14, z = Phi^-1(36/50) = Phi^-1(0.72) = 0.582842
    assert A.alie_z_max(50, 12) == pytest.approx(0.582842, abs=1e-6)
    out = A.get("little")(HONEST, 2)
    z = 0.8416212335729143
    torch.testing.assert_close(out[0], torch.tensor([3.0 + 2 * z, 2.0 + 2 * z]))
    with pytest.raises(ValueError, match="z_max"):
        A.alie_z_max(4, 3)


def test_empire_sends_minus_epsilon_times_the_mean():
    torch.testing.assert_close(A.get("empire")(HONEST, 1), torch.tensor([[-0.3, -0.2]]))
    torch.testing.assert_close(
        A.get("empire")(HONEST, 3, factor=1.1), torch.tensor([[-3.3, -2.2]] * 3)
    )


def test_sign_flip_mean_and_per_worker():
    torch.testing.assert_close(A.get("sign_flip")(HONEST, 2), torch.tensor([[-3.0, -2.0]] * 2))
    out = A.get("sign_flip")(HONEST, 4, per_worker=True)
    torch.testing.assert_close(out, -HONEST[[0, 1, 2, 0]])


def test_nan_and_inf_rows():
    assert A.get("nan")(HONEST, 3).isnan().all()
    assert A.get("nan")(HONEST, 3).shape == (3, 2)
    assert (A.get("inf")(HONEST, 2) == math.inf).all()


def test_mimic_copies_one_honest_worker():
    torch.testing.assert_close(A.get("mimic")(HONEST, 2, index=1), HONEST[[1, 1]])
    torch.testing.assert_close(A.get("mimic")(HONEST, 1), HONEST[[0]])
    # 'auto' picks the most extreme worker along the top principal direction
    honest = torch.tensor([[0.0, 0.1], [1.0, -0.1], [2.0, 0.0], [9.0, 0.05]])
    torch.testing.assert_close(A.get("mimic")(honest, 2, index="auto"), honest[[3, 3]])
    with pytest.raises(ValueError, match="'index'"):
        A.get("mimic")(HONEST, 1, index=3)


def test_gaussian_is_seeded_per_worker_random_with_the_right_moments():
    honest = random_honest(d=20000)
    a = A.get("gaussian")(honest, 3, sigma=2.0, mu=0.5, generator=torch.Generator().manual_seed(1))
    b = A.get("gaussian")(honest, 3, sigma=2.0, mu=0.5, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    assert not torch.equal(a[0], a[1])
    assert a.mean().item() == pytest.approx(0.5, abs=0.03)
    assert a.std().item() == pytest.approx(2.0, rel=0.02)
    c = A.get("gaussian")(honest, 2, sigma=0.0, around_mean=True)
    torch.testing.assert_close(c, honest.mean(0).expand(2, -1))


# ------------------------------------------------------------------ shapes, f = 0, validation


@pytest.mark.parametrize("name", A.names())
def test_every_attack_returns_f_rows_of_the_input_kind(name):
    honest = random_honest(h=5, d=11)
    out = A.get(name)(honest, 3)
    assert out.shape == (3, 11) and out.dtype == torch.float64
    empty = A.get(name)(honest, 0)
    assert empty.shape == (0, 11)


@pytest.mark.parametrize(
    ("honest", "f", "error", "match"),
    [
        (torch.ones(3), 1, ValueError, "'honest'.*2-D"),
        (torch.ones(0, 3), 1, ValueError, "'honest'.*non-empty"),
        (torch.ones(2, 3, dtype=torch.int64), 1, TypeError, "'honest'.*floating"),
        (HONEST, -1, ValueError, "'f'"),
        ([[1.0, 2.0]], 1, TypeError, "'honest'"),
    ],
)
def test_bad_input_is_refused(honest, f, error, match):
    with pytest.raises(error, match=match):
        A.get("little")(honest, f)


def test_unknown_names_and_keywords():
    with pytest.raises(ValueError, match=r"Unknown attack 'alie'\. Valid names: .*little.*mimic"):
        A.get("alie")
    with pytest.raises(TypeError, match=r"'sign_flip'.*factor"):
        A.get("sign_flip")(HONEST, 1, factor=2.0)


# ------------------------------------------------------------------ byzfl cross-check


def test_matches_byzfl_on_random_inputs():
    from byzfl import ALittleIsEnough, InnerProductManipulation, Mimic, SignFlipping

    honest = random_honest(h=9, d=50, seed=3, dtype=torch.float32)
    pairs = [
        (A.get("little")(honest, 2, factor=1.5), ALittleIsEnough(tau=1.5)(honest)),
        (A.get("little")(honest, 2, factor=1.5, negative=True), ALittleIsEnough(tau=-1.5)(honest)),
        (A.get("empire")(honest, 2, factor=2.0), InnerProductManipulation(tau=2.0)(honest)),
        (A.get("sign_flip")(honest, 2), SignFlipping()(honest)),
        (A.get("mimic")(honest, 2, index=4), Mimic(epsilon=4)(honest)),
    ]
    for ours, theirs in pairs:
        torch.testing.assert_close(ours, theirs.expand(2, -1), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ optimal factor


def test_line_search_finds_the_maximum_of_a_smooth_objective():
    x, y = A.line_search_factor(lambda t: -((t - 3.7) ** 2))
    assert x == pytest.approx(3.7, abs=1e-4) and y == pytest.approx(0.0, abs=1e-8)
    x, _ = A.line_search_factor(lambda t: -t)  # maximum at the range's left end
    assert x == 0.0


@pytest.mark.parametrize("aggregator", [median, krum], ids=["median", "krum"])
@pytest.mark.parametrize("name", ["little", "empire"])
def test_line_search_beats_the_fixed_factor(aggregator, name):
    honest = random_honest(h=8, d=20, seed=4)
    f = 3
    fixed = A.get(name)(honest, f, factor=1.5)
    searched = A.get(name)(honest, f, aggregator=aggregator)
    base = A.distance_to_mean(honest, fixed, aggregator, f)
    best = A.distance_to_mean(honest, searched, aggregator, f)
    assert best >= base - 1e-12
    if aggregator.name == "krum":  # median saturates once the f copies pass the honest extremes
        assert best > 1.5 * base
    assert torch.equal(searched[0], searched[-1])


@pytest.mark.parametrize("name", ["little", "empire"])
def test_line_search_does_at_least_as_well_as_byzfls_optimal_attacks(name):
    from byzfl import Median, Optimal_ALittleIsEnough, Optimal_InnerProductManipulation

    byzfl_attack = {"little": Optimal_ALittleIsEnough, "empire": Optimal_InnerProductManipulation}
    honest = random_honest(h=8, d=20, seed=5)
    f = 3
    theirs = byzfl_attack[name](agg=Median(), pre_agg_list=[], f=f)(honest)
    ours = A.get(name)(honest, f, aggregator=median)
    d_theirs = A.distance_to_mean(honest, theirs.expand(f, -1), median, f)
    d_ours = A.distance_to_mean(honest, ours, median, f)
    assert d_ours >= d_theirs - 1e-9


def test_declared_f_is_what_the_aggregator_receives():
    seen = []

    def spy(gradients, f):
        seen.append((gradients.shape[0], f))
        return gradients.mean(0)

    A.get("little")(HONEST, 2, aggregator=spy, declared_f=4)
    assert set(seen) == {(5, 4)}
    # against the plain average, the best ALIE factor is the largest one searched
    out = A.get("little")(HONEST, 2, aggregator=average, max_factor=10.0)
    torch.testing.assert_close(out[0], HONEST.mean(0) + 10.0 * torch.tensor([2.0, 2.0]))


def _rules_valid_at(n, f):
    for name in aggregators.names():
        rule = aggregators.get(name)
        try:
            rule.check(n, f)
        except ValueError:
            continue
        yield name


@pytest.mark.parametrize("rule", list(_rules_valid_at(11, 3)))
def test_line_search_never_loses_to_the_fixed_factor_on_any_rule(rule):
    agg = aggregators.get(rule)
    honest = random_honest(h=8, d=20, seed=6)
    for name in ("little", "empire"):
        fixed = A.distance_to_mean(honest, A.get(name)(honest, 3, factor=1.5), agg, 3)
        searched = A.distance_to_mean(honest, A.get(name)(honest, 3, aggregator=agg), agg, 3)
        assert searched >= fixed - 1e-9
