"""dpbr_lib.privacy against hand-worked cases, the papers' definitions, Opacus and dp-accounting."""

import itertools
import math

import pytest
import torch
from scipy import stats
from torch import nn

from dpbr_lib import privacy as P


def tiny_cnn() -> nn.Module:
    with torch.random.fork_rng():  # same weights every call, global RNG left alone
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(1, 3, 3),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(3 * 4 * 4, 5),
        ).double()


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 1, 6, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (6,), generator=g)
    return x, y


# ------------------------------------------------------------------ per-sample gradients


def loop_gradients(model, x, y):
    rows = []
    for i in range(x.shape[0]):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    return torch.stack(rows)


def test_per_sample_gradients_equal_a_loop_of_backward_calls(batch):
    model = tiny_cnn()
    x, y = batch
    fast = P.flat_per_sample_gradients(model, nn.functional.cross_entropy, x, y)
    slow = loop_gradients(model, x, y)
    assert fast.shape == (6, P.num_parameters(model))
    torch.testing.assert_close(fast, slow, atol=1e-6, rtol=0)
    assert (fast.abs().sum(1) > 0).all()


@pytest.mark.filterwarnings("ignore:Full backward hook:UserWarning")
def test_per_sample_gradients_equal_opacus_grad_sample_module(batch):
    from opacus import GradSampleModule

    model = tiny_cnn()
    x, y = batch
    ours = P.flat_per_sample_gradients(model, nn.functional.cross_entropy, x, y)
    gsm = GradSampleModule(tiny_cnn(), loss_reduction="sum")
    nn.functional.cross_entropy(gsm(x), y, reduction="sum").backward()
    theirs = torch.cat([p.grad_sample.reshape(6, -1) for p in gsm._module.parameters()], dim=1)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


@pytest.mark.parametrize("clip", [1e-3, 0.5, 1e3])  # all clipped, some, none
def test_clipped_mean_gradients_equal_clipping_the_flat_matrix(batch, clip):
    model = tiny_cnn()
    x, y = batch  # 6 samples: 3 workers of 2
    flat = P.flat_per_sample_gradients(model, nn.functional.cross_entropy, x, y)  # [6, d]
    expected = P.per_sample_clip(flat.view(3, 2, -1), clip).mean(dim=1)  # [3, d]
    got = P.clipped_mean_gradients(
        model, nn.functional.cross_entropy, x.view(3, 2, *x.shape[1:]), y.view(3, 2), clip
    )
    torch.testing.assert_close(got, expected, atol=1e-7, rtol=1e-5)
    assert (got.norm(dim=1) <= clip * (1 + 1e-5)).all()


def test_clipped_mean_gradients_in_chunks_of_samples_give_the_same_means(batch, monkeypatch):
    model = tiny_cnn()
    x, y = batch
    grouped = (x.view(2, 3, *x.shape[1:]), y.view(2, 3))  # 2 workers of 3 samples
    whole = P.clipped_mean_gradients(model, nn.functional.cross_entropy, *grouped, 0.5)
    d = P.num_parameters(model)
    monkeypatch.setattr(P, "PER_SAMPLE_CHUNK_ELEMENTS", 2 * d)  # one sample per worker a chunk
    chunked = P.clipped_mean_gradients(model, nn.functional.cross_entropy, *grouped, 0.5)
    torch.testing.assert_close(chunked, whole, atol=1e-7, rtol=1e-5)


def test_worker_mean_gradients_are_the_mean_of_the_per_sample_gradients(batch):
    model = tiny_cnn()
    x, y = batch
    flat = P.flat_per_sample_gradients(model, nn.functional.cross_entropy, x, y)  # [6, d]
    got = P.worker_mean_gradients(
        model, nn.functional.cross_entropy, x.view(3, 2, *x.shape[1:]), y.view(3, 2)
    )
    torch.testing.assert_close(got, flat.view(3, 2, -1).mean(dim=1), atol=1e-7, rtol=1e-5)
    with pytest.raises(ValueError, match="'targets'"):
        P.worker_mean_gradients(model, nn.functional.cross_entropy, x, y)


def test_clipped_mean_gradients_reject_bad_shapes_before_any_work(batch):
    model = tiny_cnn()
    x, y = batch
    loss = nn.functional.cross_entropy
    with pytest.raises(ValueError, match=r"'targets'.*shape \(h, b\)"):
        P.clipped_mean_gradients(model, loss, x, y, 1.0)
    with pytest.raises(ValueError, match=r"'inputs'.*\(3, 2, \.\.\.\)"):
        P.clipped_mean_gradients(model, loss, x, y.view(3, 2), 1.0)
    with pytest.raises(ValueError, match="'clip'"):
        P.clipped_mean_gradients(model, loss, x.view(3, 2, *x.shape[1:]), y.view(3, 2), 0.0)


def test_frozen_parameters_are_left_out_and_flat_vectors_round_trip(batch):
    model = tiny_cnn()
    model[0].bias.requires_grad_(False)
    x, y = batch
    grads = P.flat_per_sample_gradients(model, nn.functional.cross_entropy, x, y)
    d = sum(p.numel() for p in model.parameters()) - 3
    assert grads.shape == (6, d) == (6, P.num_parameters(model))
    # the mean of per-sample gradients is the batch gradient, written back in the right slots
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    expected = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    P.unflatten_into(model, grads.mean(0), into="grad")
    for p, e in zip([p for p in model.parameters() if p.requires_grad], expected, strict=True):
        torch.testing.assert_close(p.grad, e)
    flat = P.flatten_parameters(model)
    P.unflatten_into(model, flat + 1.0, into="param")
    torch.testing.assert_close(P.flatten_parameters(model), flat + 1.0)
    with pytest.raises(ValueError, match=r"'flat'.*length"):
        P.unflatten_into(model, flat[:-1])


# ------------------------------------------------------------------ clipping, sensitivity


def test_per_sample_clip_scales_rows_to_at_most_c_and_keeps_small_rows():
    g = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0], [-6.0, 8.0]])  # norms 5, 0.5, 0, 10
    out = P.per_sample_clip(g, 1.0)
    expected = torch.tensor([[0.6, 0.8], [0.3, 0.4], [0.0, 0.0], [-0.6, 0.8]])
    torch.testing.assert_close(out, expected)


def test_per_sample_clip_is_batched_over_a_leading_worker_dim():
    gen = torch.Generator().manual_seed(2)
    g = torch.randn(4, 7, 30, generator=gen) * 3  # [workers, B, d]
    out = P.per_sample_clip(g, 2.0)
    norms = out.norm(dim=-1)
    assert (norms <= 2.0 + 1e-5).all()
    for w in range(4):
        torch.testing.assert_close(out[w], P.per_sample_clip(g[w], 2.0))
    # direction unchanged
    cos = torch.nn.functional.cosine_similarity(out, g, dim=-1)
    torch.testing.assert_close(cos, torch.ones_like(cos))


def test_non_finite_rows_do_not_crash_clipping():
    g = torch.tensor([[float("nan"), 1.0], [3.0, 4.0]])
    out = P.per_sample_clip(g, 1.0)
    torch.testing.assert_close(out[1], torch.tensor([0.6, 0.8]))


def test_clip_batch_gradient_clips_the_last_dim():
    g = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    torch.testing.assert_close(
        P.clip_batch_gradient(g, 1.0), torch.tensor([[0.6, 0.8], [0.3, 0.4]])
    )
    torch.testing.assert_close(
        P.clip_batch_gradient(torch.tensor([6.0, 8.0]), 5.0), torch.tensor([3.0, 4.0])
    )


def test_sensitivity_is_2c_over_b_and_bounds_replace_one():
    assert P.sensitivity(0.01, 10) == pytest.approx(0.002)
    assert P.sensitivity(5.0, 25) == pytest.approx(0.4)
    gen = torch.Generator().manual_seed(3)
    b, c = 8, 1.5
    grads = P.per_sample_clip(torch.randn(b, 20, generator=gen) * 5, c)
    other = grads.clone()
    other[0] = -grads[0]  # the worst replacement: the opposite clipped gradient
    moved = (grads.mean(0) - other.mean(0)).norm().item()
    assert moved <= P.sensitivity(c, b) + 1e-6
    assert moved == pytest.approx(P.sensitivity(c, b), rel=1e-5)  # attained when ||g_0|| = C


# ------------------------------------------------------------------ Gaussian mechanism


def test_classic_sigma_on_a_hand_computed_value():
    # eps = 0.5, delta = 1e-5, Delta = 0.02: sqrt(2 ln 125000) = sqrt(23.472138) = 4.844805,
    # sigma = 0.02 * 4.844805 / 0.5 = 0.1937922
    assert P.gaussian_sigma(0.5, 1e-5, 0.02) == pytest.approx(0.1937922, rel=1e-6)


def test_classic_sigma_refuses_epsilon_at_least_one_and_points_to_analytic():
    with pytest.raises(ValueError, match="analytic"):
        P.gaussian_sigma(1.0, 1e-5, 1.0, mechanism="classic")


def _theorem8_delta(sigma, epsilon, sens):
    # Balle & Wang 2018, Theorem 8: the exact delta of the Gaussian mechanism
    a, b = sens / (2 * sigma), epsilon * sigma / sens
    return stats.norm.cdf(a - b) - math.exp(epsilon) * stats.norm.cdf(-a - b)


@pytest.mark.parametrize("epsilon", [0.05, 0.3, 0.9, 1.0, 3.0, 12.0])
@pytest.mark.parametrize("delta", [1e-8, 1e-5, 0.1])
def test_analytic_sigma_matches_dp_accounting_and_theorem_8(epsilon, delta):
    from dp_accounting import get_sigma_gaussian

    sens = 0.04
    ours = P.gaussian_sigma(epsilon, delta, sens, mechanism="analytic")
    theirs = sens * get_sigma_gaussian(epsilon, delta)
    assert ours == pytest.approx(theirs, rel=1e-4)
    assert _theorem8_delta(ours, epsilon, sens) == pytest.approx(delta, rel=1e-6)
    if epsilon < 1:
        assert ours < P.gaussian_sigma(epsilon, delta, sens, mechanism="classic")


def test_add_gaussian_noise_is_seeded_and_has_the_right_std():
    g = torch.zeros(200_000)
    a = P.add_gaussian_noise(g, 0.3, torch.Generator().manual_seed(4))
    b = P.add_gaussian_noise(g, 0.3, torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b)
    assert a.std().item() == pytest.approx(0.3, rel=0.01)
    assert a.mean().abs().item() < 0.01
    assert (g == 0).all()  # input untouched


# ------------------------------------------------------------------ sparsification


def test_topk_keeps_exactly_the_k_largest_magnitudes():
    g = torch.tensor([[0.1, -5.0, 2.0, 0.3, -0.2, 4.0], [1.0, 2.0, 3.0, -4.0, 5.0, -6.0]])
    out = P.sparsify(g, 0.5)  # k = 3
    expected = torch.tensor([[0.0, -5.0, 2.0, 0.0, 0.0, 4.0], [0.0, 0.0, 0.0, -4.0, 5.0, -6.0]])
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize(("ratio", "k"), [(0.25, 3), (0.01, 1), (0.7, 7), (1.0, 10)])
def test_sparsify_keeps_ceil_ratio_d_per_row(ratio, k):
    gen = torch.Generator().manual_seed(5)
    g = torch.rand(2, 3, 10, generator=gen) + 0.5  # no zeros
    for mode in P.SPARSIFY_MODES:
        out = P.sparsify(g, ratio, mode, generator=torch.Generator().manual_seed(0))
        assert ((out != 0).sum(-1) == k).all()
        kept = out != 0
        torch.testing.assert_close(out[kept], g[kept])


def test_randk_is_reproducible_per_row_independent_and_uniform():
    g = torch.ones(4000, 10)
    a = P.sparsify(g, 0.3, "randk", generator=torch.Generator().manual_seed(6))
    b = P.sparsify(g, 0.3, "randk", generator=torch.Generator().manual_seed(6))
    c = P.sparsify(g, 0.3, "randk", generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)
    masks = a != 0
    assert len({tuple(m.tolist()) for m in masks}) > 100  # rows draw different subsets
    # each coordinate is kept with probability k/d = 0.3 (binomial sd ~ 0.007)
    assert torch.allclose(masks.float().mean(0), torch.full((10,), 0.3), atol=0.035)


def test_sparsify_survives_non_finite_rows():
    g = torch.tensor([[float("nan"), 1.0, -3.0, 0.5], [float("inf"), 2.0, 0.1, -0.2]])
    out = P.sparsify(g, 0.5)
    assert ((out != 0).sum(-1) == 2).all()
    assert out[1, 0] == math.inf and out[1, 1] == 2.0
    assert P.sparsify(g, 0.5, "randk", generator=torch.Generator().manual_seed(0)).shape == g.shape


def test_randk_rescale_makes_it_unbiased():
    g = torch.arange(1.0, 9.0).expand(20000, 8)
    out = P.sparsify(g, 0.25, "randk", generator=torch.Generator().manual_seed(8), rescale=True)
    assert set(out.unique().tolist()) <= {0.0, *(4.0 * g[0]).tolist()}
    torch.testing.assert_close(out.mean(0), g[0], rtol=0.06, atol=0)


# ------------------------------------------------------------------ accounting


CONFIGS = [(1000, 0.01, 1.1, 1e-5), (100, 0.1, 2.0, 1e-5), (300, 0.02, 0.8, 1e-6)]


@pytest.mark.parametrize(("steps", "q", "sigma", "delta"), CONFIGS)
def test_rdp_epsilon_matches_opacus(steps, q, sigma, delta):
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [(sigma, q, steps)]
    assert P.epsilon_spent(steps, q, sigma, delta) == pytest.approx(
        acc.get_epsilon(delta=delta), rel=1e-4
    )


def test_epsilon_grows_with_steps_and_pld_prv_are_tighter():
    eps = [P.epsilon_spent(t, 0.02, 1.0, 1e-5) for t in (0, 10, 100, 1000)]
    assert eps[0] == 0.0
    assert all(a < b for a, b in itertools.pairwise(eps))
    pld = P.epsilon_spent(1000, 0.02, 1.0, 1e-5, accountant="pld")
    prv = P.epsilon_spent(1000, 0.02, 1.0, 1e-5, accountant="prv")
    assert pld < eps[-1] and prv < eps[-1]
    assert pld == pytest.approx(prv, rel=0.02)


@pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha:UserWarning")
def test_noise_multiplier_for_inverts_epsilon_spent_like_opacus():
    from opacus.accountants.utils import get_noise_multiplier

    sigma = P.noise_multiplier_for(2.0, 1e-5, 1000, 0.01)
    assert P.epsilon_spent(1000, 0.01, sigma, 1e-5) == pytest.approx(2.0, rel=1e-5)
    opacus_sigma = get_noise_multiplier(
        target_epsilon=2.0,
        target_delta=1e-5,
        sample_rate=0.01,
        steps=1000,
        epsilon_tolerance=1e-4,
    )
    assert sigma == pytest.approx(opacus_sigma, rel=1e-3)


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: P.gaussian_sigma(0.0, 1e-5, 1.0), "'epsilon'"),
        (lambda: P.gaussian_sigma(-1.0, 1e-5, 1.0, "analytic"), "'epsilon'"),
        (lambda: P.gaussian_sigma(0.5, 0.0, 1.0), "'delta'"),
        (lambda: P.gaussian_sigma(0.5, 1.0, 1.0), "'delta'"),
        (lambda: P.gaussian_sigma(0.5, 1e-5, 0.0), "'sensitivity'"),
        (lambda: P.gaussian_sigma(0.5, 1e-5, 1.0, "laplace"), "'mechanism'.*'analytic'"),
        (lambda: P.sparsify(torch.ones(3), 0.0), "'ratio'"),
        (lambda: P.sparsify(torch.ones(3), 1.5), "'ratio'"),
        (lambda: P.sparsify(torch.ones(3), 0.5, "bottomk"), "'mode'.*'randk'"),
        (lambda: P.per_sample_clip(torch.ones(2, 3), 0.0), "'clip'"),
        (lambda: P.per_sample_clip(torch.ones(3), 1.0), "'per_sample'"),
        (lambda: P.clip_batch_gradient(torch.ones(3), -1.0), "'clip'"),
        (lambda: P.sensitivity(1.0, 0), "'batch_size'"),
        (lambda: P.epsilon_spent(10, 0.0, 1.0, 1e-5), "'sampling_rate'"),
        (lambda: P.epsilon_spent(10, 1.5, 1.0, 1e-5), "'sampling_rate'"),
        (lambda: P.epsilon_spent(10, 0.1, 0.0, 1e-5), "'noise_multiplier'"),
        (lambda: P.epsilon_spent(10, 0.1, 1.0, 2.0), "'delta'"),
        (lambda: P.epsilon_spent(-1, 0.1, 1.0, 1e-5), "'steps'"),
        (lambda: P.epsilon_spent(10, 0.1, 1.0, 1e-5, "moments"), "'accountant'"),
    ],
)
def test_bad_input_is_refused_with_the_argument_name(call, match):
    with pytest.raises(ValueError, match=match):
        call()
