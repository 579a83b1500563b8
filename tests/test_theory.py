"""dpbr_lib.theory: closed forms on hand-computed numbers, monotonicity, vectorization."""

import math

import numpy as np
import pytest

from dpbr_lib import aggregators, privacy
from dpbr_lib import theory as T


def test_dp_noise_std_is_the_gaussian_mechanism_at_2c_over_b():
    # Delta = 2 * 0.01 / 10 = 0.002; sqrt(2 ln(1.25e5)) = 4.844805; s = 0.002 * 4.844805 / 0.5
    assert T.dp_noise_std(0.5, 1e-5, 0.01, 10) == pytest.approx(0.01937922, rel=1e-6)
    assert T.dp_noise_std(2.0, 1e-5, 0.01, 10, mechanism="analytic") == pytest.approx(
        privacy.gaussian_sigma(2.0, 1e-5, 0.002, mechanism="analytic"), rel=1e-12
    )


def test_vn_ratio_on_hand_numbers():
    # sqrt(4/4 + 100 * 0.01) / 1 = sqrt(2); with b = 1: sqrt(4 + 1) = sqrt(5)
    np.testing.assert_allclose(
        T.vn_ratio(1.0, 2.0, np.array([4, 1]), 100, 0.1), [math.sqrt(2), math.sqrt(5)]
    )
    assert T.vn_ratio(2.0, 0.0, 1, 4, 1.0) == pytest.approx(1.0)  # sqrt(4 * 1) / 2


def test_noise_only_min_batch_is_the_closed_form():
    # 2 sqrt(2 d ln(1.25/delta)) / (eps kappa), d = 1e6, delta = 1e-6, eps = 0.5, kappa = 1:
    # ln(1.25e6) = 14.0386541, 2 * 1e6 * 14.0386541 = 28077308, sqrt = 5298.803, * 2 / 0.5
    real = T.min_batch_size(1e6, 11, 5, 0.5, 1e-6, 0.01, kappa=1.0, integer=False)
    assert real == pytest.approx(21195.21, rel=1e-6)
    assert T.min_batch_size(1e6, 11, 5, 0.5, 1e-6, 0.01, kappa=1.0) == 21196.0
    # the clip C cancels when the gradient norm is C
    assert T.min_batch_size(1e6, 11, 5, 0.5, 1e-6, 7.0, kappa=1.0, integer=False) == pytest.approx(
        real, rel=1e-12
    )


def test_min_batch_is_the_smallest_b_meeting_the_vn_condition():
    # with sampling noise, a gradient norm below C, and the real MDA bound (n = 11, f = 3)
    d, n, f, eps, delta, c, g, s1 = 5000, 11, 3, 0.4, 1e-5, 1.0, 0.6, 2.0
    kappa = aggregators.get("mda").bound(n, f)
    assert kappa == pytest.approx(8 / (math.sqrt(8) * 3))
    b = int(T.min_batch_size(d, n, f, eps, delta, c, "mda", grad_norm=g, sigma_sample=s1))

    def vn(batch):
        return T.vn_ratio(g, s1, batch, d, T.dp_noise_std(eps, delta, c, batch))

    assert vn(b) <= kappa < vn(b - 1)
    real = T.min_batch_size(d, n, f, eps, delta, c, "mda", g, s1, integer=False)
    s_unit = T.dp_noise_std(eps, delta, c, 1)
    vn_real = math.sqrt(s1**2 / real + d * (s_unit / real) ** 2) / g
    assert vn_real == pytest.approx(kappa, rel=1e-10)


def test_classic_bound_grows_like_sqrt_d_and_constant_bound_does_not():
    d = np.array([1e3, 4e3, 16e3, 64e3])
    b = T.min_batch_size(d, 11, 2, 0.5, 1e-5, 1.0, "median", integer=False)
    np.testing.assert_allclose(b[1:] / b[:-1], 2.0, rtol=1e-12)
    const = T.min_batch_size_constant(11, 2, 0.5, 1e-5, 1.0, "median", integer=False)
    # 2 sqrt(2 ln(1.25e5)) / (eps kappa), kappa = 1/sqrt(9) = 1/3: 2 * 4.844805 * 3 / 0.5
    assert const == pytest.approx(58.13766, rel=1e-6)
    np.testing.assert_allclose(b / const, np.sqrt(d), rtol=1e-12)
    assert T.min_batch_size_constant(11, 2, 0.5, 1e-5, 1.0, "median") == 59.0


def test_array_inputs_equal_elementwise_scalar_calls():
    d = np.array([[100], [10_000]])  # [2, 1]
    eps = np.array([0.1, 0.5, 0.9])  # [3]
    grid = T.min_batch_size(d, 11, 2, eps, 1e-5, 0.5, "krum", sigma_sample=0.3)
    assert grid.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            scalar = T.min_batch_size(
                int(d[i, 0]), 11, 2, float(eps[j]), 1e-5, 0.5, "krum", sigma_sample=0.3
            )
            assert isinstance(scalar, float)
            assert grid[i, j] == scalar
    analytic = T.dp_noise_std(
        np.array([0.5, 2.0, 8.0]), 1e-5, 1.0, np.array([[1], [10]]), mechanism="analytic"
    )
    assert analytic.shape == (2, 3)
    assert analytic[1, 2] == pytest.approx(T.dp_noise_std(8.0, 1e-5, 1.0, 10, "analytic"))
    fs = np.array([1, 2, 3])
    np.testing.assert_array_equal(
        T.min_batch_size_constant(11, fs, 0.5, 1e-5, 1.0, "mda"),
        [T.min_batch_size_constant(11, int(f), 0.5, 1e-5, 1.0, "mda") for f in fs],
    )


def test_analytic_mechanism_needs_smaller_batches_and_works_for_large_epsilon():
    classic = T.min_batch_size(1e4, 11, 2, 0.5, 1e-5, 1.0, "mda")
    analytic = T.min_batch_size(1e4, 11, 2, 0.5, 1e-5, 1.0, "mda", mechanism="analytic")
    assert analytic < classic
    assert math.isfinite(T.min_batch_size(1e4, 11, 2, 4.0, 1e-5, 1.0, mechanism="analytic"))
    with pytest.raises(ValueError, match="analytic"):
        T.min_batch_size(1e4, 11, 2, np.array([0.5, 1.5]), 1e-5, 1.0)


def test_no_bound_gives_inf_and_no_constraint_gives_one():
    assert aggregators.get("average").bound(11, 2) is None
    assert T.min_batch_size(100, 11, 2, 0.5, 1e-5, 1.0, "average") == math.inf
    assert T.min_batch_size(100, 11, 2, 0.5, 1e-5, 1.0, kappa=0.0) == math.inf
    assert T.min_batch_size(100, 11, 0, 0.5, 1e-5, 1.0, "mda") == 1.0  # kappa = inf at f = 0
    with pytest.raises(ValueError, match=r"'krum'.*n >= 7"):
        T.min_batch_size(100, 3, 2, 0.5, 1e-5, 1.0, "krum")


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: T.dp_noise_std(0.0, 1e-5, 1.0, 10), "'epsilon'"),
        (lambda: T.dp_noise_std(np.array([0.5, -1.0]), 1e-5, 1.0, 10), "'epsilon'.*-1"),
        (lambda: T.dp_noise_std(0.5, 1.0, 1.0, 10), "'delta'"),
        (lambda: T.dp_noise_std(0.5, 1e-5, 0.0, 10), "'clip'"),
        (lambda: T.dp_noise_std(0.5, 1e-5, 1.0, 0), "'batch_size'"),
        (lambda: T.dp_noise_std(0.5, 1e-5, 1.0, 10, "laplace"), "'mechanism'"),
        (lambda: T.vn_ratio(0.0, 1.0, 1, 1, 1.0), "'grad_norm'"),
        (lambda: T.vn_ratio(1.0, -1.0, 1, 1, 1.0), "'sigma_sample'"),
        (lambda: T.min_batch_size(0, 11, 2, 0.5, 1e-5, 1.0), "'d'"),
        (lambda: T.min_batch_size(10, 11, -1, 0.5, 1e-5, 1.0), "'f'"),
        (lambda: T.noise_std_fixed_budget(10, 100, 1.0, 1e-5, 1.0), "'steps' and 'epochs'"),
        (lambda: T.noise_std_fixed_budget(200, 100, 1.0, 1e-5, 1.0, steps=5), "'batch_size'"),
    ],
)
def test_bad_input_is_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_fixed_budget_noise_is_invariant_to_b_at_many_steps_and_falls_at_fixed_epochs():
    # Raisa, Jalko & Honkela 2024: at a fixed number of steps, sigma_m / q tends to a constant
    n, eps, delta = 60_000, 1.0, 1e-5
    at_steps = T.noise_std_fixed_budget(np.array([512, 2048]), n, eps, delta, 1.0, steps=10_000)
    assert at_steps[1] == pytest.approx(at_steps[0], rel=0.05)
    sigma_m = privacy.noise_multiplier_for(eps, delta, 10_000, 512 / n)
    assert at_steps[0] == pytest.approx(sigma_m / 512, rel=1e-9)
    at_epochs = T.noise_std_fixed_budget(np.array([64, 256]), 1797, 2.0, delta, 1.0, epochs=5)
    assert at_epochs[1] < 0.6 * at_epochs[0]
