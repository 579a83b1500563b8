"""Closed-form bounds of the theory chapter (numpy, vectorized: array arguments broadcast).

Setting (Guerraoui, Gupta, Pinot, Rouault & Stephan 2021, "Differential privacy and Byzantine
resilience in SGD: do they add up?", PODC): each honest worker averages b per-sample gradients
clipped to norm C and adds N(0, s² I_d), with s the Gaussian-mechanism std for sensitivity
Δ = 2C/b (:func:`dp_noise_std`), so that *each step* is (ε, δ)-DP. A robust rule is
(α, f)-Byzantine resilient when the honest gradients' variance-to-norm (VN) ratio stays below the
rule's bound κ(n, f) (``aggregators.get(gar).bound(n, f)``).

Symbols: d parameters, σ₁² = E‖g_i − ∇Q‖² the per-sample gradient variance (trace), G = ‖∇Q‖,
s₁ = the noise std at b = 1 (σ is linear in Δ for both mechanisms, so s = s₁/b).

- :func:`vn_ratio`: √(σ₁²/b + d·s²)/G (Guerraoui et al. 2021).
- :func:`min_batch_size`: smallest b with VN ≤ κ; solving σ₁²/b + d s₁²/b² ≤ κ²G² gives
  b* = (σ₁² + √(σ₁⁴ + 4 d s₁² κ² G²)) / (2 κ² G²); the noise term alone (σ₁ = 0) gives
  b* = √d·s₁/(κG), and with the classic mechanism and G = C,
  b* = 2·√(2·d·ln(1.25/δ)) / (ε·κ), growing like √d (Guerraoui et al.'s negative result).
  Since ‖∇Q‖ ≤ C whenever clipping is inactive, G = C is the most favourable case, so this b* is
  a *necessary* batch size for the VN condition.
- :func:`min_batch_size_constant`: the same condition on the noise component along the gradient
  direction only (std s, not √d·s), i.e. the formula above with d = 1: noise alone, classic,
  G = C gives b* = 2·√(2·ln(1.25/δ))/(ε·κ), independent of d — this project's argument for the
  seed's claim that a large *constant* batch suffices (its docstring says what is and is not
  proved, and weighs it against Räisä, Jälkö & Honkela 2024).
- :func:`noise_std_fixed_budget`: the per-step noise on the mean when the *whole run* (fixed
  steps or epochs) is held at (ε, δ) by a maintained accountant, for the comparison with
  Räisä, Jälkö & Honkela 2024.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from dpbr_lib import privacy
from dpbr_lib._validation import check_choice, check_float, check_int

ArrayLike = float | int | np.ndarray

# --------------------------------------------------------------------------------------------- #
# Elementwise validation (the first offending element goes through the shared scalar check)


def _real(name: str, value: ArrayLike, **bounds: object) -> np.ndarray:
    arr = np.asarray(value, dtype=float)
    low, high = bounds.get("low"), bounds.get("high")
    low_open, high_open = bool(bounds.get("low_open")), bool(bounds.get("high_open"))
    bad = ~np.isfinite(arr)
    if low is not None:
        bad |= (arr <= low) if low_open else (arr < low)
    if high is not None:
        bad |= (arr >= high) if high_open else (arr > high)
    if bad.any():
        check_float(name, arr[bad].flat[0].item(), **bounds)  # type: ignore[arg-type]
    return arr


def _integer(name: str, value: ArrayLike, low: int) -> np.ndarray:
    arr = np.asarray(value)
    if not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(
            np.isfinite(arr) & (arr == np.round(arr))
        ):
            arr = arr.astype(np.int64)
        else:
            flat = arr.reshape(-1)
            bad = [
                v
                for v in flat.tolist()
                if not (isinstance(v, (int, float)) and float(v).is_integer())
            ]
            check_int(name, bad[0] if bad else value, low=low)
            raise TypeError(f"The {name!r} parameter must hold integers. Got {value!r} instead.")
    if (arr < low).any():
        check_int(name, int(arr[arr < low].flat[0]), low=low)
    return arr.astype(np.int64)


def _out(arr: np.ndarray) -> np.ndarray | float:
    return arr if arr.ndim else float(arr)


# --------------------------------------------------------------------------------------------- #
# Noise and VN ratio


@functools.lru_cache(maxsize=4096)
def _unit_sigma(epsilon: float, delta: float, mechanism: str) -> float:
    return privacy.gaussian_sigma(epsilon, delta, 1.0, mechanism=mechanism)


def _noise_at_unit_sensitivity(
    epsilon: np.ndarray, delta: np.ndarray, mechanism: str
) -> np.ndarray:
    if mechanism == "classic":
        if (epsilon >= 1.0).any():
            privacy.gaussian_sigma(float(epsilon[epsilon >= 1.0].flat[0]), 0.5, 1.0, "classic")
        return np.sqrt(2.0 * np.log(1.25 / delta)) / epsilon  # Dwork & Roth 2014, Thm A.1
    solve = np.vectorize(lambda e, p: _unit_sigma(float(e), float(p), mechanism), otypes=[float])
    return solve(epsilon, delta)  # Balle & Wang 2018, Algorithm 1


def dp_noise_std(
    epsilon: ArrayLike,
    delta: ArrayLike,
    clip: ArrayLike,
    batch_size: ArrayLike,
    mechanism: str = "classic",
) -> np.ndarray | float:
    """Per-coordinate std s of the Gaussian mechanism for Δ = 2C/b (Guerraoui et al. 2021).

    ``mechanism="classic"``: s = (2C/b)·√(2 ln(1.25/δ))/ε (Dwork & Roth 2014, Theorem A.1,
    ε < 1); ``"analytic"``: Balle & Wang 2018's exact calibration (:func:`privacy.gaussian_sigma`).
    """
    check_choice("mechanism", mechanism, privacy.MECHANISMS)
    eps = _real("epsilon", epsilon, low=0.0, low_open=True)
    dlt = _real("delta", delta, low=0.0, high=1.0, low_open=True, high_open=True)
    c = _real("clip", clip, low=0.0, low_open=True)
    b = _integer("batch_size", batch_size, low=1)
    eps, dlt = np.broadcast_arrays(eps, dlt)
    return _out(2.0 * c / b * _noise_at_unit_sensitivity(eps, dlt, mechanism))


def vn_ratio(
    grad_norm: ArrayLike,
    sigma_sample: ArrayLike,
    batch_size: ArrayLike,
    d: ArrayLike,
    noise_std: ArrayLike,
) -> np.ndarray | float:
    """VN ratio of a honest DP gradient, √(σ₁²/b + d·s²)/‖g‖ (Guerraoui et al. 2021).

    ``sigma_sample`` is σ₁ (the per-sample gradient std, √ of the trace of the covariance),
    ``noise_std`` the per-coordinate DP noise std s; the two noises are independent, so their
    variances add.
    """
    g = _real("grad_norm", grad_norm, low=0.0, low_open=True)
    s1 = _real("sigma_sample", sigma_sample, low=0.0)
    b = _integer("batch_size", batch_size, low=1)
    dim = _integer("d", d, low=1)
    s = _real("noise_std", noise_std, low=0.0)
    return _out(np.sqrt(s1**2 / b + dim * s**2) / g)


# --------------------------------------------------------------------------------------------- #
# Minimum batch sizes


def _kappa(n: np.ndarray, f: np.ndarray, gar: str, kappa: ArrayLike | None) -> np.ndarray:
    if kappa is not None:  # inf: no constraint; nan or <= 0: no batch size works
        return np.asarray(kappa, dtype=float)
    from dpbr_lib import aggregators

    rule = aggregators.get(gar)

    def one(n_: int, f_: int) -> float:
        value = rule.bound(int(n_), int(f_))
        return math.nan if value is None else float(value)

    return np.vectorize(one, otypes=[float])(n, f)


def _solve_b(
    energy: np.ndarray,
    s1: np.ndarray,
    sigma_sample: np.ndarray,
    kappa: np.ndarray,
    g: np.ndarray,
    integer: bool,
) -> np.ndarray:
    """Smallest b with σ²/b + energy·s₁²/b² ≤ κ²G² (energy = d, or 1 along the gradient)."""
    kg2 = (kappa * g) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        b = (sigma_sample**2 + np.sqrt(sigma_sample**4 + 4.0 * energy * s1**2 * kg2)) / (2.0 * kg2)
        if integer:  # the 1e-9 guards float round-off when b* is an integer
            b = np.maximum(1.0, np.ceil(b - 1e-9 * np.maximum(b, 1.0)))
    b = np.where(np.isposinf(kappa), 1.0, b)  # no constraint (e.g. MDA with f = 0)
    return np.where(np.isnan(kappa) | (kappa <= 0), np.inf, b)  # no known bound, or none holds


def _min_batch(
    energy: ArrayLike | None,
    n: ArrayLike,
    f: ArrayLike,
    epsilon: ArrayLike,
    delta: ArrayLike,
    clip: ArrayLike,
    gar: str,
    grad_norm: ArrayLike | None,
    sigma_sample: ArrayLike,
    mechanism: str,
    kappa: ArrayLike | None,
    integer: bool,
) -> np.ndarray | float:
    check_choice("mechanism", mechanism, privacy.MECHANISMS)
    dim = np.asarray(1) if energy is None else _integer("d", energy, low=1)
    n_ = _integer("n", n, low=1)
    f_ = _integer("f", f, low=0)
    eps = _real("epsilon", epsilon, low=0.0, low_open=True)
    dlt = _real("delta", delta, low=0.0, high=1.0, low_open=True, high_open=True)
    c = _real("clip", clip, low=0.0, low_open=True)
    g = c if grad_norm is None else _real("grad_norm", grad_norm, low=0.0, low_open=True)
    s1 = _real("sigma_sample", sigma_sample, low=0.0)
    k = _kappa(n_, f_, gar, kappa)
    eps, dlt = np.broadcast_arrays(eps, dlt)
    unit = 2.0 * c * _noise_at_unit_sensitivity(eps, dlt, mechanism)  # s at b = 1
    return _out(_solve_b(dim.astype(float), unit, s1, k, g, integer))


def min_batch_size(
    d: ArrayLike,
    n: ArrayLike,
    f: ArrayLike,
    epsilon: ArrayLike,
    delta: ArrayLike,
    clip: ArrayLike,
    gar: str = "mda",
    grad_norm: ArrayLike | None = None,
    sigma_sample: ArrayLike = 0.0,
    mechanism: str = "classic",
    *,
    kappa: ArrayLike | None = None,
    integer: bool = True,
) -> np.ndarray | float:
    """Smallest batch size b with VN ratio √(σ₁²/b + d·s²)/G ≤ κ(n, f), s = dp_noise_std(b).

    Closed form (solve σ₁²/b + d·s₁²/b² ≤ κ²G² for 1/b, s₁ the noise std at b = 1):
    b* = (σ₁² + √(σ₁⁴ + 4·d·s₁²·κ²·G²)) / (2·κ²·G²), then ⌈b*⌉ (``integer=False`` returns b*).
    Noise term alone, classic mechanism, G = C: b* = 2·√(2·d·ln(1.25/δ))/(ε·κ) — the bound of
    Guerraoui et al. 2021 (b must grow like √d/ε for the VN condition to hold),
    derived here from s₁ = 2C·√(2 ln(1.25/δ))/ε: √d·s₁/(κC) = 2√d·√(2 ln(1.25/δ))/(εκ).

    ``grad_norm`` G defaults to C, the largest gradient norm clipping lets through, hence the
    smallest b: the result is necessary, not sufficient, for smaller true gradients. κ comes from
    ``aggregators.get(gar).bound(n, f)`` unless ``kappa`` is given; where κ is unknown (``None``)
    or ≤ 0 no batch size works and the result is ``inf``; κ = inf (no constraint) gives 1.
    """
    return _min_batch(
        d, n, f, epsilon, delta, clip, gar, grad_norm, sigma_sample, mechanism, kappa, integer
    )


def min_batch_size_constant(
    n: ArrayLike,
    f: ArrayLike,
    epsilon: ArrayLike,
    delta: ArrayLike,
    clip: ArrayLike,
    gar: str = "mda",
    grad_norm: ArrayLike | None = None,
    sigma_sample: ArrayLike = 0.0,
    mechanism: str = "classic",
    *,
    kappa: ArrayLike | None = None,
    integer: bool = True,
) -> np.ndarray | float:
    """Smallest b for the VN condition restricted to the gradient direction u = ∇Q/‖∇Q‖.

    The DP noise N(0, s² I_d) has component ⟨ξ, u⟩ ~ N(0, s²) along u, whatever d; requiring
    √(σ_u²/b + s²)/G ≤ κ (σ_u the per-sample std along u, ``sigma_sample``, at most σ₁) gives
    b* = (σ_u² + √(σ_u⁴ + 4·s₁²·κ²·G²))/(2·κ²·G²), i.e. :func:`min_batch_size` with d = 1; the
    noise alone, classic mechanism, G = C: b* = 2·√(2·ln(1.25/δ))/(ε·κ), independent of d.

    What is proved and what is argued here:

    - *Proved* (Guerraoui et al. 2021): the full VN condition, with the d·s² term, is what the
      resilience guarantees of Krum, MDA, median, ... (Blanchard et al. 2017; El Mhamdi et al.
      2018; Yin et al. 2018) assume, and per-step (ε, δ)-DP noise makes it require b ∝ √d/ε
      (:func:`min_batch_size`).
    - *This project's argument* (the seed's claim that "a large constant batch is good enough"):
      progress of SGD is decided by the aggregate's component along ∇Q: in the descent lemma
      E Q(θ − ηĝ) ≤ Q(θ) − η⟨∇Q, E ĝ⟩ + (Lη²/2) E‖ĝ‖², the d·s² energy orthogonal to ∇Q only
      enters the second-order term, which the step size η (not b) can absorb. If a rule's
      deviation from the honest mean is controlled along u, only s (not √d·s) must stay below
      κG, which a constant b achieves. This is *not* proved for any robust rule: Krum, MDA and
      the median compare whole vectors, and their known error bounds grow with the total
      variance d·s². The experiments measure which of the two bounds training follows.
    - *Against it* (Räisä, Jälkö & Honkela 2024, "Subsampling is not magic"): both bounds assume a
      fixed ε *per step*, so that Δ = 2C/b makes the noise fall like 1/b. When the *whole run*
      of T steps is held at (ε, δ) with subsampling amplification (q = b/N), the noise
      multiplier σ_m must grow with q, and the noise on the mean, σ_m·C/b = (σ_m/q)·C/N, becomes
      invariant to b as T → ∞; only the subsampling term σ₁²/b still falls. Under that
      accounting the batch size buys no privacy noise at a fixed number of steps (it still does
      at fixed epochs, where T falls as b grows): :func:`noise_std_fixed_budget` computes both,
      so the chapter can set the per-step and the whole-run reading side by side.
    """
    return _min_batch(
        None, n, f, epsilon, delta, clip, gar, grad_norm, sigma_sample, mechanism, kappa, integer
    )


# --------------------------------------------------------------------------------------------- #
# Whole-run accounting (Räisä, Jälkö & Honkela 2024)


def noise_std_fixed_budget(
    batch_size: ArrayLike,
    dataset_size: int,
    epsilon: float,
    delta: float,
    clip: float,
    *,
    steps: int | None = None,
    epochs: float | None = None,
    accountant: str = "rdp",
) -> np.ndarray | float:
    """Per-coordinate noise std on a worker's mean gradient when the *whole run* is (ε, δ)-DP.

    For each b: q = b/N, T = ``steps`` (or ⌈E·N/b⌉ for ``epochs`` E; give exactly one)
    Poisson-subsampled Gaussian steps, the noise multiplier σ_m of
    :func:`privacy.noise_multiplier_for` (ε, δ, T, q) from a maintained accountant (add/remove
    neighbours, sensitivity C of the sum), and the std on the mean σ_m·C/b = (σ_m/q)·C/N.

    Räisä, Jälkö & Honkela 2024 ("Subsampling is not magic", ICML) prove that at a fixed number
    of steps T the effective noise σ_m/q becomes invariant to q (hence to b) as T → ∞, and find
    it falls further with b outside that regime; at fixed *epochs* T shrinks as b grows, so the
    std falls with b. Vectorized over ``batch_size`` (one calibration, about 0.3-1 s, per
    distinct b).
    """
    b = _integer("batch_size", batch_size, low=1)
    size = check_int("dataset_size", dataset_size, low=1)
    clip = check_float("clip", clip, low=0.0, low_open=True)
    if (steps is None) == (epochs is None):
        raise ValueError(
            "Exactly one of the 'steps' and 'epochs' parameters must be given. "
            f"Got steps={steps!r}, epochs={epochs!r} instead."
        )
    if steps is not None:
        steps = check_int("steps", steps, low=1)
    else:
        epochs = check_float("epochs", epochs, low=0.0, low_open=True)
    if (b > size).any():
        check_int("batch_size", int(b[b > size].flat[0]), low=1, high=size)

    def one(batch: int) -> float:
        count = steps if steps is not None else max(1, math.ceil(epochs * size / batch))
        multiplier = privacy.noise_multiplier_for(epsilon, delta, count, batch / size, accountant)
        return multiplier * clip / batch

    return _out(np.vectorize(functools.lru_cache(maxsize=None)(one), otypes=[float])(b))
